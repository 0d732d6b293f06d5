"""``rtplan serve``: the long-running adapter. One process runs

- the MLLP listener for ACKs, order responses and radiologist results (``hl7.listen_*``),
- the outbox worker, forever (FHIR, files, HL7 orders),
- the escalation check every ``hl7.escalation_check_seconds``,
- the DICOM C-STORE receiver and the HTTP API when their ports are set
  (``adapter.service.parts``; stopped first).

All of them run as tasks of ONE asyncio event loop (the one ``asyncio.run`` of the command)
and share ONE FHIR client (``adapter.jobs.fhir.fhir_session``, one httpx connection pool):
the C-STORE receiver's prior-imaging checks, the API's review submissions and readiness
probe, and every delivery of the outbox worker (ingest Bundles, review Bundles, escalation
Task updates, ACK follow-ups). uvicorn serves the API on that loop (``Server.serve``), and
rows stored by the API, the receiver or the escalation check wake the one worker.

Nothing blocking runs on the loop. The store's calls are synchronous, so each part's store
connection lives on a thread of its own (:class:`adapter.outbox.offload.StoreThread`: the
worker and the escalation check share one, the receiver has one, the API its own) and the
loop only awaits them; the listener's handler stores each message on a worker thread
(``adapter.service.inbound``); files (output folder, spool, reports) are written on worker
threads. Another process holding the database lock delays deliveries and ACKs, never the
loop.

It stops on SIGTERM/SIGINT: first nothing new is accepted (the receiver and the API, then the
listener), then the worker claims nothing more and finishes the rows it holds (at most
:data:`SHUTDOWN_GRACE_SECONDS`; a delivery still running then is cancelled and its row, still
leased, is taken up again after its lease, or at the next start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from adapter.config import Settings, is_loopback
from adapter.errors import ConfigError
from adapter.hl7.listener import MllpServer, server_tls_context
from adapter.hl7.profiles import load_profiles, receivers_dir
from adapter.hl7.trust import TrustPolicy
from adapter.jobs.deliver import deliver, targets
from adapter.jobs.fhir import fhir_session
from adapter.outbox.offload import StoreThread
from adapter.service.escalate import Metrics, escalate_due
from adapter.service.inbound import InboundHandler
from adapter.service.parts import start_parts
from adapter.store.location import open_outbox, store_location
from adapter.store.outbox import Outbox
from adapter.store.protocol import Store
from adapter.tables import Tables, load_tables

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient

log = logging.getLogger(__name__)
SHUTDOWN_GRACE_SECONDS = 30.0
"""How long the worker may take, once stopped, to finish the rows it holds (as uvicorn's
graceful shutdown for the requests in progress)."""


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
    if settings.http.listen_port:  # refused (exit 2) before any part binds a port
        from adapter.api.guards import load_tokens  # lazy: FastAPI only when the API is on

        load_tokens(settings.http.tokens_file)
    # The process's one FHIR client: every part below uses it.
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
    location = store_location(settings, out_dir)
    with Outbox(location, check_same_thread=False) as inbound_store:
        listening = settings.serve.mllp_listener
        # Off, nothing is heard: the profiles' hosts are not resolved (nor warned about).
        trust = trust_policy(settings) if listening else TrustPolicy((), {})
        wake = asyncio.Event()  # rows stored by another part: the worker claims them now
        handler = InboundHandler(inbound_store, tables, fhir_targets, trust, stored=wake.set)
        # Each part can be off (settings ``serve.*``, ``dicom.listen_port``,
        # ``http.listen_port``): two processes on one store can then share the work.
        server = MllpServer(
            handler,
            host=hl7.listen_host,
            port=hl7.listen_port,
            tls=listener_tls(settings) if listening else None,
            max_frame=hl7.listen_max_frame_bytes,
            max_connection_bytes=hl7.listen_max_connection_bytes,
            max_connections=hl7.listen_max_connections,
            idle_timeout=hl7.listen_idle_timeout,
            accept=trust.may_connect,
        )
        if listening:
            await server.start()  # the listener logs its own address
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        # The worker's and the escalation check's store connection, on its own thread.
        store = StoreThread("outbox-store")
        try:
            outbox = await store.run(open_outbox, settings, out_dir)
        except BaseException:
            await store.aclose()
            await _close_listener(server, settings)
            raise
        deliver_soon = _waker(wake) if settings.serve.delivery else None
        try:
            # The C-STORE receiver and the HTTP API (each on when its port is set).
            parts = await start_parts(settings, out_dir, tables, fhir, deliver_soon=deliver_soon)
        except BaseException:
            await store.run(outbox.close)
            await store.aclose()
            await _close_listener(server, settings)
            raise
        halt = asyncio.Event()
        background: list[asyncio.Task[object]] = []
        if settings.serve.delivery:
            background.append(
                asyncio.create_task(
                    deliver(
                        outbox,
                        settings,
                        forever=True,
                        out_dir=out_dir,
                        fhir=fhir,
                        calls=store,
                        wake=wake,
                        stop=halt,
                    ),
                    name="rtplan-outbox-worker",
                )
            )
            background.append(
                asyncio.create_task(
                    _escalations(store, outbox, fhir_targets, metrics, settings, halt, wake),
                    name="rtplan-escalations",
                )
            )
        on = {
            "receiver": bool(settings.dicom.listen_port),
            "api": bool(settings.http.listen_port),
            "mllp_listener": listening,
            "delivery": settings.serve.delivery,
            # the kind only: a URL may carry a user name, a path the site's layout
            "store": "postgresql" if str(location).startswith("postgresql") else "sqlite",
        }
        log.info("serving", extra={"fields": on})
        if started is not None:
            started.set()
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([stopped, *background], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            try:
                await parts.aclose()
                await _close_listener(server, settings)
            finally:
                halt.set()
                try:
                    await _finish(background)
                finally:
                    await store.run(outbox.close)
                    await store.aclose()
            counts = {f"inbound_{k}": v for k, v in asdict(handler.stats).items()}
            counts.update(sorted(metrics.counters.items()))  # escalations_<kind>
            log.info("stopped", extra={"fields": counts})
        return int(server.port) if settings.serve.mllp_listener else 0


def _waker(wake: asyncio.Event) -> Callable[[list[int]], None]:
    def deliver_soon(ids: list[int]) -> None:
        if ids:
            wake.set()

    return deliver_soon


async def _finish(background: list[asyncio.Task[object]]) -> None:
    """Let the worker finish the rows it holds (``halt`` is set), within the grace period;
    then cancel what still runs. Re-raises what stopped a task, if anything did."""
    if not background:
        return
    _, late = await asyncio.wait(background, timeout=SHUTDOWN_GRACE_SECONDS)
    for task in late:
        grace = SHUTDOWN_GRACE_SECONDS
        log.warning("%s still running after %.0f s: cancelled", task.get_name(), grace)
        task.cancel()
    for task in background:
        with contextlib.suppress(asyncio.CancelledError):
            await task


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


async def _escalations(
    store: StoreThread,
    outbox: Store,
    fhir_targets: list[tuple[str, str]],
    metrics: Metrics,
    settings: Settings,
    stop: asyncio.Event,
    wake: asyncio.Event,
) -> None:
    """Fire due timers every ``hl7.escalation_check_seconds`` (on the store's thread); the
    Task updates they store wake the worker."""
    while not stop.is_set():
        fired = await store.run(escalate_due, outbox, fhir_targets, metrics)
        if fired:
            wake.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.hl7.escalation_check_seconds)
