"""``rtplan serve``: the long-running adapter. One process runs

- the MLLP listener for ACKs, order responses and radiologist results (``hl7.listen_*``),
- the outbox worker, forever (FHIR, files, HL7 orders),
- the escalation check every ``hl7.escalation_check_seconds``,
- the DICOM C-STORE receiver and the HTTP API when their ports are set
  (``adapter.service.parts``; stopped first).

The listener, the C-STORE receiver and the HTTP API share the main event loop and its one FHIR
client (``adapter.jobs.fhir.fhir_session``); the listener's handler stores each message in a worker
thread. The outbox worker and escalation check run on their own thread and event loop, each
with its own database connection (and FHIR client), because the store's calls are
synchronous: another process holding the database lock delays deliveries and ACKs, but every
connection is still read, bounded and timed out.

It stops on SIGTERM/SIGINT: the listener first (so nothing new is accepted), then the worker.
A row in flight at that moment is taken up again after its lease, or at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from adapter.config import Settings, is_loopback
from adapter.errors import ConfigError
from adapter.hl7.listener import MllpServer, server_tls_context
from adapter.hl7.profiles import load_profiles, receivers_dir
from adapter.hl7.trust import TrustPolicy
from adapter.jobs.deliver import deliver, targets
from adapter.jobs.fhir import fhir_session
from adapter.service.escalate import Metrics, escalate_due
from adapter.service.inbound import InboundHandler
from adapter.service.parts import start_parts
from adapter.store.location import open_outbox, store_location
from adapter.store.outbox import Outbox
from adapter.tables import Tables, load_tables

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient

log = logging.getLogger(__name__)


async def serve(
    settings: Settings,
    out_dir: Path | None,
    *,
    stop: asyncio.Event | None = None,
    started: asyncio.Event | None = None,
    metrics: Metrics | None = None,
) -> int:
    """Run until ``stop`` is set (or a signal arrives); return the listener's port (0 when
    ``serve.mllp_listener`` is off)."""
    stop = stop or asyncio.Event()
    metrics = metrics or Metrics()
    tables = load_tables(settings.mappings_dir)
    # The listener's own connection: its handler stores messages in a worker thread. The
    # main loop's FHIR client serves the C-STORE receiver and the HTTP API.
    async with fhir_session(settings) as fhir:
        return await _serve(settings, out_dir, stop, started, metrics, tables, fhir)


async def _serve(
    settings: Settings,
    out_dir: Path | None,
    stop: asyncio.Event,
    started: asyncio.Event | None,
    metrics: Metrics,
    tables: Tables,
    fhir: FhirClient | None,
) -> int:
    fhir_targets = list(targets(settings, out_dir))
    hl7 = settings.hl7
    with Outbox(store_location(settings, out_dir), check_same_thread=False) as inbound_store:
        trust = trust_policy(settings)
        handler = InboundHandler(inbound_store, tables, fhir_targets, trust)
        # Each part can be off (settings ``serve.*``, ``dicom.listen_port``,
        # ``http.listen_port``): two processes on one store can then share the work.
        server = MllpServer(
            handler,
            host=hl7.listen_host,
            port=hl7.listen_port,
            tls=listener_tls(settings),
            max_frame=hl7.listen_max_frame_bytes,
            max_connection_bytes=hl7.listen_max_connection_bytes,
            max_connections=hl7.listen_max_connections,
            idle_timeout=hl7.listen_idle_timeout,
            accept=trust.may_connect,
        )
        if settings.serve.mllp_listener:
            await server.start()
            log.info("listening for HL7 on %s:%d", settings.hl7.listen_host, server.port)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        try:
            # The C-STORE receiver and the HTTP API (each on when its port is set), with
            # their own store connection on this loop.
            parts = await start_parts(settings, out_dir, tables, fhir)
        except BaseException:
            await _close_listener(server, settings)
            raise
        halt = threading.Event()
        background = asyncio.create_task(
            asyncio.to_thread(_background, settings, out_dir, fhir_targets, metrics, halt)
            if settings.serve.delivery
            else asyncio.to_thread(halt.wait)
        )
        if started is not None:
            started.set()
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([stopped, background], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            await parts.aclose()
            await _close_listener(server, settings)
            halt.set()
            await background  # re-raises what stopped the worker, if anything did
            log.info("stopped; inbound %s; metrics %s", handler.stats, dict(metrics.counters))
        return int(server.port) if settings.serve.mllp_listener else 0


async def _close_listener(server: MllpServer, settings: Settings) -> None:
    if settings.serve.mllp_listener:
        await server.aclose()


def trust_policy(settings: Settings) -> TrustPolicy:
    """The allow-list from every receiver profile (``hl7.host`` also counts as the address of
    the configured receiver when it overrides the profile's host)."""
    profiles = load_profiles(receivers_dir(settings))
    extra = {settings.hl7.receiver: settings.hl7.host} if settings.hl7.host else {}
    return TrustPolicy(profiles.values(), extra)


def listener_tls(settings: Settings) -> ssl.SSLContext | None:
    """TLS for the listener when ``hl7.listen_tls_cert``/``listen_tls_key`` are set."""
    hl7 = settings.hl7
    if not hl7.listen_tls_cert:
        if not is_loopback(hl7.listen_host):
            log.warning(
                "SECURITY: the MLLP listener on %s is plain TCP; only the receiver profiles' "
                "inbound.peers addresses are heard (set hl7.listen_tls_cert/listen_tls_key)",
                hl7.listen_host,
            )
        return None
    try:
        return server_tls_context(
            hl7.listen_tls_cert, hl7.listen_tls_key, client_ca=hl7.listen_tls_client_ca or None
        )
    except (OSError, ssl.SSLError) as exc:
        problem = f"cannot load the certificate or key: {exc}"
        raise ConfigError("hl7.listen_tls_cert", problem) from None


def _background(
    settings: Settings,
    out_dir: Path | None,
    fhir_targets: list[tuple[str, str]],
    metrics: Metrics,
    halt: threading.Event,
) -> None:
    """The outbox worker and the escalation check, on their own thread, event loop and
    database connection: a slow or locked database delays deliveries, never the listener."""

    async def main() -> None:
        stop = asyncio.Event()
        with open_outbox(settings, out_dir) as outbox:
            worker = asyncio.create_task(deliver(outbox, settings, forever=True, out_dir=out_dir))
            checker = asyncio.create_task(
                _escalations(outbox, fhir_targets, metrics, settings, stop)
            )
            tasks = (checker, worker)
            while not halt.is_set() and not any(t.done() for t in tasks):
                await asyncio.sleep(0.05)
            stop.set()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    asyncio.run(main())


async def _escalations(
    outbox: Outbox,
    fhir_targets: list[tuple[str, str]],
    metrics: Metrics,
    settings: Settings,
    stop: asyncio.Event,
) -> None:
    while not stop.is_set():
        escalate_due(outbox, fhir_targets, metrics)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.hl7.escalation_check_seconds)
