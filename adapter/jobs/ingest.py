"""The ingest job: DICOM files -> decisions and Bundles -> outbox rows (+ PACS labels) -> delivery.

An async function run in the caller's event loop (``rtplan ingest``, the C-STORE receiver in
``rtplan serve``, the DICOMweb back-load) with the process's one FHIR client: the same client
asks for prior imaging and delivers the Bundles. Reading and mapping are synchronous
(``adapter.ingest.pipeline``); only the prior-imaging check between them talks to the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter.config import Settings
from adapter.ingest.pipeline import (
    IngestResult,
    KnownStudy,
    Progress,
    map_decided,
    read_and_decide,
    studies_to_check,
)
from adapter.jobs.deliver import deliver, enqueue_ingest, held_by_store, targets
from adapter.jobs.output import add_to_report, summary, write_report
from adapter.label.service import LabelOutcome, enqueue_labels, label_targets
from adapter.outbox.worker import DrainReport
from adapter.store.location import open_outbox, recorded_studies, store_location
from adapter.tables import Tables

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient


@dataclass(frozen=True, slots=True)
class IngestRun:
    """What one ingest did: the studies (as stored), the report, the labels, the delivery."""

    result: IngestResult
    report: dict[str, Any]
    labels: dict[str, LabelOutcome]
    delivery: DrainReport


async def read_and_map(
    paths: Sequence[Path],
    settings: Settings,
    tables: Tables,
    *,
    fhir: FhirClient | None,
    progress: Progress | None = None,
    known: KnownStudy | None = None,
    in_thread: bool = False,
) -> IngestResult:
    """Read, decide, check prior imaging through ``fhir`` (when given), map.

    ``in_thread`` runs the synchronous reading and mapping on a worker thread, so a
    long-running event loop (``rtplan serve``) keeps answering meanwhile; a command reads on
    the loop's own thread (the reader may fork worker processes, which a thread must not).
    """

    async def run(function: Callable[[], Any]) -> Any:
        return await asyncio.to_thread(function) if in_thread else function()

    decided = await run(lambda: read_and_decide(paths, settings, tables, progress=progress))
    to_check = studies_to_check(decided, settings)
    priors = {}
    if fhir and to_check:  # the prior-imaging check needs a FHIR server: imported only then
        from adapter.review.prior import check_all

        priors = await check_all(to_check, settings, tables, fhir)
    result: IngestResult = await run(
        lambda: map_decided(decided, settings, tables, priors=priors, known=known)
    )
    return result


async def ingest_files(
    paths: Sequence[Path],
    settings: Settings,
    tables: Tables,
    *,
    out_dir: Path | None,
    fhir: FhirClient | None,
    progress: Progress | None = None,
) -> IngestRun:
    """Ingest ``paths``: map, store the rows with the study records, build the PACS labels,
    deliver what this run enqueued (``rtplan ingest PATH...``)."""
    # The store's record of each study fixes its patient: a disagreeing study is held (checked
    # again inside the store's write transaction).
    with recorded_studies(store_location(settings, out_dir)) as known:
        result = await read_and_map(
            paths, settings, tables, fhir=fhir, progress=progress, known=known
        )
    with open_outbox(settings, out_dir) as outbox:
        written = enqueue_ingest(outbox, result, targets(settings, out_dir))
        result = held_by_store(result, written.held)
        report = (
            write_report(result, out_dir, written.held)
            if out_dir
            else {"summary": summary(result)}
        )
        # The PACS label (a KOS per planning study): its rows join the same delivery.
        label_ids, labels = enqueue_labels(
            outbox, result, settings, tables, label_targets(settings, out_dir), datetime.now(UTC)
        )
        if out_dir and labels:
            add_to_report(report, labels, out_dir)
        delivery = await deliver(
            outbox, settings, ids=written.ids + label_ids, out_dir=None, fhir=fhir
        )
    return IngestRun(result, report, labels, delivery)
