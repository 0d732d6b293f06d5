"""The receiver as one part of ``rtplan serve``: C-STORE SCP + spool + study processor.

Start order: the spool is scanned (studies left from a previous run are processed when
ready), then the SCP listens. Stop order: the SCP stops accepting first, then the study in
processing finishes; studies still waiting for their quiet period stay in the spool and are
processed after the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from adapter.config import Settings
from adapter.jobs.fhir import resolve_version
from adapter.outbox.offload import INLINE, StoreCalls
from adapter.receive.process import StudyProcessor, spool_path
from adapter.receive.scp import Receiver
from adapter.receive.spool import Spool
from adapter.store.protocol import Store
from adapter.tables import Tables

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient

log = logging.getLogger(__name__)


class ReceiveService:
    def __init__(
        self,
        settings: Settings,
        tables: Tables,
        outbox: Store,
        out_dir: Path | None,
        fhir: FhirClient | None = None,
        *,
        calls: StoreCalls = INLINE,
        deliver_soon: Callable[[list[int]], None] | None = None,
    ) -> None:
        self.settings = settings
        self.calls = calls  # how ``outbox`` is called (``rtplan serve``: its own thread)
        self.deliver_soon = deliver_soon  # hands stored rows to the process's outbox worker
        self.fhir = fhir  # the process's FHIR client (``rtplan serve`` opens it)
        self.tables = tables
        self.outbox = outbox
        self.out_dir = out_dir
        self.spool = Spool(spool_path(settings, out_dir))
        self.receiver: Receiver | None = None
        self.processor: StudyProcessor | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        assert self.receiver is not None, "not started"
        return self.receiver.port

    async def start(self) -> None:
        settings = await resolve_version(self.settings, self.fhir)  # "auto", as ingest does
        processor = StudyProcessor(
            self.spool,
            settings,
            self.tables,
            self.outbox,
            self.out_dir,
            fhir=self.fhir,
            calls=self.calls,
            deliver_soon=self.deliver_soon,
        )
        loop = asyncio.get_running_loop()

        def stored() -> None:  # called on a receiver thread
            loop.call_soon_threadsafe(processor.wake.set)

        receiver = Receiver(settings.dicom, self.spool, on_stored=stored)
        await asyncio.to_thread(receiver.start)
        self.receiver, self.processor = receiver, processor
        self._task = asyncio.create_task(processor.run(self._stop))

    async def aclose(self) -> None:
        if self.receiver is not None:
            await asyncio.to_thread(self.receiver.stop)
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        log.info("DICOM receiver stopped", extra={"fields": self.stats()})

    def stats(self) -> dict[str, int]:
        """Counters without patient data: associations, instances, studies by outcome."""
        counts: dict[str, int] = {}
        if self.receiver is not None:
            counts.update(self.receiver.counts)
        if self.processor is not None:
            # ``held-incomplete`` -> ``studies_held_incomplete``: log fields and metric names
            # alike take underscores (log queries split on hyphens).
            counts.update(
                {f"studies_{k.replace('-', '_')}": v for k, v in self.processor.counts.items()}
            )
        return counts
