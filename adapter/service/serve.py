"""``rtplan serve``: the long-running adapter. One process runs

- the MLLP listener for ACKs, order responses and radiologist results (``hl7.listen_*``),
- the outbox worker, forever (FHIR, files, HL7 orders),
- the escalation check every ``hl7.escalation_check_seconds``.

It stops on SIGTERM/SIGINT: the listener first (so nothing new is accepted), then the worker.
A row in flight at that moment is taken up again after its lease, or at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from adapter.config import Settings
from adapter.hl7.listener import MllpServer
from adapter.mapping.tables import load_tables
from adapter.outbox.commands import open_outbox
from adapter.service.deliver import deliver, targets
from adapter.service.escalate import Metrics, escalate_due
from adapter.service.inbound import InboundHandler

log = logging.getLogger(__name__)


async def serve(
    settings: Settings,
    out_dir: Path | None,
    *,
    stop: asyncio.Event | None = None,
    started: asyncio.Event | None = None,
    metrics: Metrics | None = None,
) -> int:
    """Run until ``stop`` is set (or a signal arrives); return the listener's port."""
    stop = stop or asyncio.Event()
    metrics = metrics or Metrics()
    tables = load_tables(settings.mappings_dir)
    fhir_targets = [t for t in targets(settings, out_dir)]
    with open_outbox(settings, out_dir) as outbox:
        handler = InboundHandler(outbox, tables, fhir_targets)
        server = MllpServer(handler, host=settings.hl7.listen_host, port=settings.hl7.listen_port)
        await server.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        log.info("listening for HL7 on %s:%d", settings.hl7.listen_host, server.port)
        worker = asyncio.create_task(deliver(outbox, settings, forever=True, out_dir=out_dir))
        checker = asyncio.create_task(_escalations(outbox, fhir_targets, metrics, settings, stop))
        if started is not None:
            started.set()
        try:
            await stop.wait()
        finally:
            await server.aclose()
            for task in (checker, worker):
                task.cancel()
            for task in (checker, worker):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            log.info("stopped; inbound %s; metrics %s", handler.stats, dict(metrics.counters))
        return int(server.port)


async def _escalations(
    outbox_: object,
    fhir_targets: list[tuple[str, str]],
    metrics: Metrics,
    settings: Settings,
    stop: asyncio.Event,
) -> None:
    from adapter.outbox.store import Outbox

    assert isinstance(outbox_, Outbox)
    while not stop.is_set():
        escalate_due(outbox_, fhir_targets, metrics)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.hl7.escalation_check_seconds)
