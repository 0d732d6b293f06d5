"""Received studies through the ingest pipeline, once they are complete or quiet.

A C-STORE stream has no end-of-study signal: a study is processed when it has been idle for
``dicom.quiet_seconds`` or when (0020,1208) Number of Study Related Instances says every
instance has arrived. Processing is ``rtplan ingest`` on the study's spooled files (classification,
identity, mapping, review Task, PACS label), then the outbox rows and study records are stored
in one transaction; only then is the spool entry settled. A crash before that leaves the entry
in the spool and the study is processed again at the next start (the outbox drops an identical
row for the same key).

A late instance (one arriving after its study was processed) re-runs the pipeline on the whole
study (the kept headers plus the new instance), so the same ImagingStudy is updated.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from adapter.config import Settings
from adapter.ingest.pipeline import IngestResult, Status, StudyOutcome
from adapter.jobs.deliver import deliver, enqueue, targets
from adapter.jobs.ingest import read_and_map
from adapter.jobs.output import study_report, write_json_atomic
from adapter.label.service import enqueue_labels, label_targets
from adapter.outbox.offload import INLINE, StoreCalls
from adapter.receive.spool import PendingStudy, Spool
from adapter.store.protocol import Store
from adapter.tables import Tables

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient

log = logging.getLogger(__name__)
STUDY_COUNTERS = (*(status.value for status in Status), "errors", "rejected_files")
"""Studies by outcome, studies whose processing raised (retried), files refused by ingest."""
Clock = Callable[[], float]
RETRY_SECONDS = 60  # a study whose processing failed is tried again after this long


@dataclass(frozen=True, slots=True)
class Processed:
    """One spooled study taken through the pipeline."""

    key: str
    outcomes: tuple[StudyOutcome, ...]
    rejected: int
    row_ids: tuple[int, ...]


def spool_path(settings: Settings, out_dir: Path | None) -> Path:
    if settings.dicom.spool_dir:
        return Path(settings.dicom.spool_dir)
    return (out_dir / "spool") if out_dir is not None else Path(".rtplan") / "spool"


class StudyProcessor:
    """Takes ready studies out of the spool into the outbox (and delivers their rows).

    Store calls go through ``calls`` and spool and report files are handled on a worker
    thread, so the event loop it shares with the rest of ``rtplan serve`` never waits for the
    disk. With ``deliver_soon`` (``rtplan serve``) the stored rows are handed to the process's
    one outbox worker instead of being delivered here.
    """

    def __init__(
        self,
        spool: Spool,
        settings: Settings,
        tables: Tables,
        outbox: Store,
        out_dir: Path | None,
        *,
        clock: Clock = time.time,
        fhir: FhirClient | None = None,
        calls: StoreCalls = INLINE,
        deliver_soon: Callable[[list[int]], None] | None = None,
    ) -> None:
        self.spool = spool
        self.calls = calls
        self.deliver_soon = deliver_soon
        self.fhir = fhir  # the process's FHIR client: prior imaging and delivery
        self.settings = settings
        self.tables = tables
        self.outbox = outbox
        self.out_dir = out_dir
        self.clock = clock
        # Every outcome from the start, at 0: a scrape shows each series before its first study.
        self.counts: Counter[str] = Counter(dict.fromkeys(STUDY_COUNTERS, 0))
        self.wake = asyncio.Event()
        self._retry_at: dict[str, float] = {}  # study key -> not before (after a failure)

    async def run(self, stop: asyncio.Event, *, poll_seconds: float = 0.5) -> None:
        """Process ready studies until ``stop``; a study in processing is finished first."""
        while not stop.is_set():
            await self.process_ready()
            self.wake.clear()
            waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(self.wake.wait())]
            await asyncio.wait(waiters, timeout=poll_seconds, return_when=asyncio.FIRST_COMPLETED)
            for task in waiters:
                task.cancel()

    async def process_ready(self) -> list[Processed]:
        done = []
        now = self.clock()
        ready = await asyncio.to_thread(self.spool.ready, now, self.settings.dicom.quiet_seconds)
        for study in ready:
            if self._retry_at.get(study.key, 0.0) > now:
                continue
            try:
                done.append(await self.process(study))
            except Exception as exc:  # the entry stays in the spool and is tried again later
                self.counts["errors"] += 1
                self._retry_at[study.key] = now + RETRY_SECONDS
                log.error(
                    "study %s: processing failed (%s); it stays in the spool, next try in %d s",
                    study.key,
                    type(exc).__name__,  # the type only: a message may carry patient data
                    RETRY_SECONDS,
                )
            else:
                self._retry_at.pop(study.key, None)
        return done

    async def process(self, study: PendingStudy) -> Processed:
        files = await asyncio.to_thread(self.spool.incoming_files, study.key)
        kept = await asyncio.to_thread(self.spool.kept, study.key)
        paths = [*kept, *files]  # earlier headers + this batch
        settings = replace(self.settings, ingest=replace(self.settings.ingest, workers=1))
        result = await read_and_map(paths, settings, self.tables, fhir=self.fhir, in_thread=True)
        ids = await self.calls.run(self._store, result)
        rejected = {Path(r.path) for r in result.rejections}
        await asyncio.to_thread(
            self.spool.settle,
            study.key,
            [f for f in files if f not in rejected],
            quarantined=[f for f in files if f in rejected],
        )
        for outcome in result.studies:
            if self.out_dir is not None:
                await asyncio.to_thread(self._report, outcome, len(rejected))
            # Counted once its report is written: a watcher of the counts (the API's stats,
            # a test) then finds the report too.
            self.counts[outcome.status.value] += 1
            log.info(
                "received study %s: %s (%d instances)",
                outcome.key,
                outcome.status.value,
                outcome.instances,
            )
        self.counts["rejected_files"] += len(rejected)
        if ids and self.settings.serve.delivery:  # off: another process's worker delivers
            if self.deliver_soon is not None:  # the process's one outbox worker
                self.deliver_soon(ids)
            else:
                await deliver(
                    self.outbox,
                    self.settings,
                    ids=ids,
                    out_dir=self.out_dir,
                    fhir=self.fhir,
                    calls=self.calls,
                )
        return Processed(study.key, result.studies, len(rejected), tuple(ids))

    def _store(self, result: IngestResult) -> list[int]:
        ids = enqueue(self.outbox, result, targets(self.settings, self.out_dir))
        label_ids, _ = enqueue_labels(
            self.outbox,
            result,
            self.settings,
            self.tables,
            label_targets(self.settings, self.out_dir),
            datetime.now(UTC),
        )
        return ids + label_ids

    def _report(self, outcome: StudyOutcome, rejected: int) -> None:
        assert self.out_dir is not None
        folder = self.out_dir / "received"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        entry = study_report(outcome)
        entry["rejected_files"] = rejected
        entry["processed_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        write_json_atomic(folder / f"{outcome.key}.json", entry)
