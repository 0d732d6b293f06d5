"""Run review note jobs (``adapter.review.note_job``) as outbox rows: the note deliverer.

The delivery worker hands each job row (destination ``note``) to :class:`NoteJobDeliverer`
like any other row, so a job is leased, retried with backoff, marked dead and retried by an
analyst with the same machinery, and runs wherever delivery runs (``rtplan serve``'s worker,
the API's delivery thread, ``rtplan outbox deliver``).

The CPU work (the PDF, the MDM/ORU messages) and the store reads and writes
(:class:`NoteSteps`) run on a worker thread with their own store connection, so a job never
holds up the event loop it was claimed on; in a long-running worker (``rtplan serve``) they run
in a child process instead (:mod:`adapter.jobs.note_process`: a thread would still hold the
GIL the API and the worker's own store transactions need). Only the FHIR search for a previous
note version, which uses the process's FHIR client, runs on the loop.

A job's answer: ``delivered`` with ``{"note": "built", "rows": [...]}`` (the note's rows, now
queued for their own destinations) or ``{"note": "superseded", "by_version": n}`` (a newer
version was accepted first: its note is the one to send); ``dead`` with the reason when the
note cannot be built (a missing receiver profile, a message that cannot be encoded), which an
analyst retries after fixing the cause; ``retry`` on anything unexpected.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from adapter.config import Settings
from adapter.errors import ConfigError
from adapter.hl7.charset_fit import MessageBuildError
from adapter.jobs.note_process import NoteProcess, NoteProcessStopped
from adapter.outbox.worker import Attempt, Verdict
from adapter.review.note.service import (
    KIND_NOTE,
    NotePlan,
    NoteRows,
    note_records,
    plan_note,
    prepare_note_rows,
    store_note,
    with_server_previous,
)
from adapter.review.note_job import (
    BUILT,
    KIND_REVIEW,
    SUPERSEDED,
    BadJobError,
    NoteJob,
    is_note_row,
    note_fhir_rows,
    note_label_prefixes,
    read_job,
)
from adapter.review.service import review_label
from adapter.store.outbox import Outbox, Row
from adapter.store.protocol import Store
from adapter.tables import Tables, load_tables

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient

log = logging.getLogger(__name__)
T = TypeVar("T")
JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class _Prepared:
    job: NoteJob
    label: str
    plan: NotePlan | None  # None: nothing to build (superseded, or built before)
    answer: Attempt | None = None
    review_payload: JSON | None = None
    destinations: tuple[tuple[str, str], ...] = ()


class NoteJobDeliverer:
    """Builds the note of one accepted review version and queues its rows.

    ``process``: run the two synchronous steps in that child process
    (:mod:`adapter.jobs.note_process`), not on worker threads of this one.
    """

    def __init__(
        self,
        outbox: Store,
        settings: Settings,
        out_dir: Path | None,
        *,
        fhir: FhirClient | None = None,
        tables: Tables | None = None,
        fallback: Sequence[tuple[str, str]] = (),
        process: NoteProcess | None = None,
    ) -> None:
        self.location = outbox.location
        self.fhir = fhir
        self.process = process
        # fallback: the destinations when the review row is not found
        self.steps = NoteSteps(settings, out_dir, tuple(fallback), tables)

    async def deliver(self, row: Row) -> Attempt:
        try:
            job = read_job(row.payload)
        except BadJobError as exc:
            return Attempt(Verdict.DEAD, str(exc))
        try:
            prepared = await self._step(self.steps.prepare, row, job)
            if isinstance(prepared, Attempt):
                return prepared
            if prepared.answer is not None or prepared.plan is None:
                return prepared.answer or Attempt(Verdict.DEAD, "nothing to build")
            plan = await with_server_previous(prepared.plan, self.fhir)  # the process's client
            return await self._step(self.steps.store_rows, row, prepared, plan)
        except NoteProcessStopped as exc:
            return Attempt(Verdict.RETRY, f"note not built: {exc}")

    async def _step(self, step: Callable[..., T], row: Row, *args: Any) -> T | Attempt:
        # A bound method of NoteSteps pickles with its instance: the same call in a child.
        if self.process is not None:
            return await self.process.run(run_step, step, self.location, row, *args)
        return await asyncio.to_thread(run_step, step, self.location, row, *args)


def run_step(
    step: Callable[..., T], location: Path | str, row: Row, *args: Any
) -> T | Attempt:
    """``step(store, row, *args)`` on its own store connection, every failure turned into the
    job's answer (so it crosses a process boundary as a value)."""
    try:
        with Outbox(location, check_same_thread=False) as store:
            return step(store, row, *args)
    except (ConfigError, MessageBuildError) as exc:  # fix the cause, then retry the job
        return Attempt(Verdict.DEAD, f"note not built: {exc}")
    except Exception as exc:  # unexpected: try again later; the type only (no patient data)
        log.warning("row %d (%s): note job failed: %s", row.id, row.label, type(exc).__name__)
        return Attempt(Verdict.RETRY, f"note not built: {type(exc).__name__}")


@dataclass(slots=True)
class NoteSteps:
    """The note job's synchronous work (the CPU and the store), in this process or a child."""

    settings: Settings
    out_dir: Path | None
    fallback: tuple[tuple[str, str], ...]
    _tables: Tables | None = None

    @property
    def tables(self) -> Tables:
        if self._tables is None:
            self._tables = load_tables(self.settings.mappings_dir)
        return self._tables

    def prepare(self, store: Store, row: Row, job: NoteJob) -> _Prepared:
        review = job.review
        label = review_label(review)
        newer = _newer_version(store, review.review_id, review.version)
        if newer:
            return _Prepared(job, label, None, _superseded(newer))
        prefixes = (label, *note_label_prefixes(review.review_id, review.version))
        study = store.rows_for_key(row.key, label_prefixes=prefixes)
        built = _built_rows(study, review.review_id, review.version)
        if built:  # stored by an earlier run that ended before the job was marked
            return _Prepared(job, label, None, Attempt(Verdict.DELIVERED, result=_built(built)))
        mine = [r for r in study if r.kind == KIND_REVIEW and r.label == label]
        destinations = tuple(dict.fromkeys((r.destination, r.target) for r in mine))
        records = note_records(store, review)  # the study's record, the previous note version
        plan = plan_note(
            review, job.ctx, self.settings, self.tables, records, out_dir=self.out_dir
        )
        # The outputs chosen when the version was accepted (this worker's settings may differ).
        plan = dataclasses.replace(plan, outputs=job.outputs)
        return _Prepared(
            job,
            label,
            plan,
            review_payload=mine[0].payload if mine else None,
            destinations=destinations or self.fallback,
        )

    def store_rows(self, store: Store, row: Row, prepared: _Prepared, plan: NotePlan) -> Attempt:
        review = prepared.job.review
        destinations = list(prepared.destinations)
        built = prepare_note_rows(
            store, plan, self.settings, self.tables, destinations, key=row.key,
            label=prepared.label,
        )  # fmt: skip
        # The note's FHIR transaction is this job's (the report again with presentedForm, then
        # the DocumentReference); the MDM/ORU rows and the records are as built.
        pairs = zip(built.rows, built.messages, strict=True)
        hl7 = [(r, m) for r, m in pairs if r.kind != KIND_NOTE]
        fhir = note_fhir_rows(
            plan, self.tables, prepared.review_payload, destinations, key=row.key,
            label=prepared.label,
        )  # fmt: skip
        note = NoteRows(
            [*fhir, *(r for r, _ in hl7)], [*(None for _ in fhir), *(m for _, m in hl7)],
            built.version,
        )  # fmt: skip
        # The version check and the insert in one exclusive write transaction: a newer version
        # accepted meanwhile is either seen here, or its rows come after these.
        with store.transaction():
            newer = _newer_version(store, review.review_id, review.version)
            if newer:
                return _superseded(newer)
            ids = store_note(store, note)
        return Attempt(Verdict.DELIVERED, result={"note": BUILT, "rows": ids})


def _newer_version(store: Store, review_id: str, version: int) -> int:
    accepted = store.reviews().get(review_id)
    return accepted.version if accepted is not None and accepted.version > version else 0


def _superseded(newer: int) -> Attempt:
    return Attempt(Verdict.DELIVERED, result={"note": SUPERSEDED, "by_version": newer})


def _built(rows: Sequence[Row]) -> JSON:
    return {"note": BUILT, "rows": [r.id for r in rows]}


def _built_rows(study: Sequence[Row], review_id: str, version: int) -> list[Row]:
    """This version's note rows already in the store."""
    return [r for r in study if is_note_row(r, review_id, version)]


__all__ = ["NoteJobDeliverer", "NoteSteps", "run_step"]
