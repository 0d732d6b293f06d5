"""The issue-11 parts of ``rtplan serve``: the DICOM C-STORE receiver and the HTTP API.

Each is on when its ``listen_port`` is set (``dicom.listen_port``, ``http.listen_port``) and off
at 0 (the default). :meth:`ServiceParts.aclose` stops them before the MLLP listener and the
outbox worker: first nothing new is accepted (the SCP closes, the API finishes the requests
in progress), then the study being processed finishes; studies still in their quiet period
stay in the spool for the next start.

Both run on ``rtplan serve``'s one event loop with its one FHIR client. The receiver's store
connection lives on a thread of its own (:class:`adapter.outbox.offload.StoreThread`); rows
either part stores are handed to the process's outbox worker (``deliver_soon``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter.config import Settings
from adapter.outbox.offload import StoreThread
from adapter.store.location import open_outbox
from adapter.store.protocol import Store
from adapter.tables import Tables

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient

log = logging.getLogger(__name__)


class ServiceParts:
    def __init__(self, outbox: Store | None = None) -> None:
        self.outbox = outbox  # the receiver's own store connection (on ``store``'s thread)
        self.store: StoreThread | None = None
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
            if self.store is not None:
                await self.store.run(self.outbox.close)
            else:
                self.outbox.close()
        if self.store is not None:
            await self.store.aclose()


def any_part_on(settings: Settings) -> bool:
    """Whether ``rtplan serve`` with these settings would run anything at all."""
    on = settings.serve.mllp_listener, settings.serve.delivery
    return any(on) or bool(settings.dicom.listen_port or settings.http.listen_port)


async def start_parts(
    settings: Settings,
    out_dir: Path | None,
    tables: Tables,
    fhir: FhirClient | None = None,
    *,
    deliver_soon: Callable[[list[int]], None] | None = None,
) -> ServiceParts:
    """Start the parts whose ports are set; ``fhir`` is the process's FHIR client and
    ``deliver_soon`` wakes its outbox worker (None: each part delivers its own rows)."""
    parts = ServiceParts()
    try:
        await _start(parts, settings, out_dir, tables, fhir, deliver_soon)
    except BaseException:
        with contextlib.suppress(Exception):  # what stopped the start is what is reported
            await parts.aclose()
        raise
    return parts


async def _start(
    parts: ServiceParts,
    settings: Settings,
    out_dir: Path | None,
    tables: Tables,
    fhir: FhirClient | None,
    deliver_soon: Callable[[list[int]], None] | None,
) -> None:
    if settings.dicom.listen_port:
        # Lazy (downward) for start-up time only: the receiver, pydicom; FastAPI, uvicorn.
        from adapter.receive.service import ReceiveService

        parts.store = StoreThread("receiver-store")
        parts.outbox = await parts.store.run(open_outbox, settings, out_dir)
        parts.receiver = ReceiveService(
            settings,
            tables,
            parts.outbox,
            out_dir,
            fhir,
            calls=parts.store,
            deliver_soon=deliver_soon,
        )
        await parts.receiver.start()
    if settings.http.listen_port:
        from adapter.api.server import api_server, run_until

        parts.api = api_server(
            settings,
            out_dir,
            tables=tables,
            receiver_stats=parts.stats,
            fhir=fhir,
            deliver_soon=deliver_soon,
        )
        parts._api_task = asyncio.create_task(run_until(parts.api, parts._api_stop))
        while not parts.api.started:
            if parts._api_task.done():
                await parts._api_task  # raises what stopped it (e.g. the port is taken)
                raise OSError(f"the HTTP API stopped at start on port {settings.http.listen_port}")
            await asyncio.sleep(0.05)
        log.info("HTTP API on %s:%d", settings.http.listen_host, settings.http.listen_port)
