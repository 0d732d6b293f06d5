"""The issue-11 parts of ``rtplan serve``: the DICOM C-STORE receiver and the HTTP API.

Each is on when its ``listen_port`` is set (``dicom.listen_port``, ``http.listen_port``) and off
at 0 (the default). :meth:`ServiceParts.aclose` stops them before the MLLP listener and the
outbox worker: first nothing new is accepted (the SCP closes, the API finishes the requests
in progress), then the study being processed finishes; studies still in their quiet period
stay in the spool for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter.config import Settings
from adapter.store.location import open_outbox
from adapter.store.outbox import Outbox
from adapter.tables import Tables

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient

log = logging.getLogger(__name__)


class ServiceParts:
    def __init__(self, outbox: Outbox | None = None) -> None:
        self.outbox = outbox  # the parts' own store connection (this loop's thread)
        self.receiver: Any = None  # adapter.receive.service.ReceiveService
        self.api: Any = None  # uvicorn.Server
        self._api_task: asyncio.Task[None] | None = None
        self._api_stop = asyncio.Event()

    def stats(self) -> dict[str, int]:
        return self.receiver.stats() if self.receiver is not None else {}

    async def aclose(self) -> None:
        if self.receiver is not None:
            await self.receiver.aclose()
        if self._api_task is not None:
            self._api_stop.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._api_task
        if self.outbox is not None:
            self.outbox.close()


def any_part_on(settings: Settings) -> bool:
    """Whether ``rtplan serve`` with these settings would run anything at all."""
    on = settings.serve.mllp_listener, settings.serve.delivery
    return any(on) or bool(settings.dicom.listen_port or settings.http.listen_port)


async def start_parts(
    settings: Settings, out_dir: Path | None, tables: Tables, fhir: FhirClient | None = None
) -> ServiceParts:
    """Start the parts whose ports are set; ``fhir`` is the process's FHIR client."""
    parts = ServiceParts()
    if settings.dicom.listen_port:
        # Lazy (downward) for start-up time only: pynetdicom, pydicom; FastAPI, uvicorn.
        from adapter.receive.service import ReceiveService

        parts.outbox = open_outbox(settings, out_dir)
        parts.receiver = ReceiveService(settings, tables, parts.outbox, out_dir, fhir)
        await parts.receiver.start()
    if settings.http.listen_port:
        from adapter.api.server import api_server, run_until

        parts.api = api_server(
            settings, out_dir, tables=tables, receiver_stats=parts.stats, fhir=fhir
        )
        parts._api_task = asyncio.create_task(run_until(parts.api, parts._api_stop))
        while not parts.api.started:
            if parts._api_task.done():
                await parts._api_task  # raises what stopped it (e.g. the port is taken)
                raise OSError(f"the HTTP API stopped at start on port {settings.http.listen_port}")
            await asyncio.sleep(0.05)
        log.info("HTTP API on %s:%d", settings.http.listen_host, settings.http.listen_port)
    return parts
