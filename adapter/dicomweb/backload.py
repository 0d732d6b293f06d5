"""``rtplan ingest --dicomweb URL [--study UID | --since DATE]``: back-load an archive.

Studies are found with QIDO-RS (paged), read one at a time with WADO-RS metadata and taken
through the same pipeline as files (classification, mapping, review Task, PACS label). Each
study's rows and record are stored in one transaction before the next study is read, so an
interrupted back-load loses at most the study in hand, and a second run skips every study the
store already has a record of ("resume"). ``--study UID`` always reads that study again.

A study is read only when it is complete at the archive: the instances its WADO-RS metadata
lists are at least as many as QIDO-RS counts for it ((0020,1208), else the sum of its series'
(0020,1209); docs/operations.md). One the archive is still receiving is skipped, not recorded,
and read by the next run, never stored half.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from adapter.config import Settings
from adapter.dicom.models import Rejection
from adapter.dicomweb.client import DicomWebSource, instance_count
from adapter.dicomweb.convert import write_instances
from adapter.errors import ConfigError
from adapter.ingest.pipeline import IngestResult, StudyOutcome, log_key
from adapter.jobs.deliver import deliver, enqueue, targets
from adapter.jobs.ingest import read_and_map
from adapter.label.service import LabelOutcome, enqueue_labels, label_targets
from adapter.outbox.worker import DrainReport
from adapter.store.protocol import Store
from adapter.tables import Tables

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient

_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")


@dataclass(slots=True)
class Backload:
    """What one back-load run did (no patient data beyond the study UIDs)."""

    found: int = 0
    skipped: int = 0  # already in the store: done by an earlier run
    # Fewer instances retrieved than the archive counts for the study (QIDO-RS): still
    # arriving there. Not read, not recorded: the next run reads it again.
    incomplete: int = 0
    studies: list[StudyOutcome] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    labels: dict[str, LabelOutcome] = field(default_factory=dict)
    files: int = 0
    delivered: int = 0
    dead: int = 0
    held: int = 0

    def result(self) -> IngestResult:
        return IngestResult(tuple(self.studies), tuple(self.rejections), self.files)

    def add_delivery(self, report: DrainReport) -> None:
        self.delivered += report.delivered
        self.dead += report.dead
        self.held += report.held


def qido_date(value: str) -> str:
    """``--since`` as a DICOM date (YYYYMMDD); ``YYYY-MM-DD`` is accepted too."""
    match = _DATE.match(value.strip())
    if match is None:
        raise ConfigError("--since", "must be a date, YYYY-MM-DD or YYYYMMDD")
    year, month, day = match.groups()
    try:
        datetime(int(year), int(month), int(day), tzinfo=UTC)
    except ValueError:
        raise ConfigError("--since", "not a calendar date") from None
    return f"{year}{month}{day}"


async def backload(
    source: DicomWebSource,
    settings: Settings,
    tables: Tables,
    outbox: Store,
    out_dir: Path | None,
    *,
    since: str = "",
    study: str = "",
    progress: TextIO | None = None,
    fhir: FhirClient | None = None,
) -> Backload:
    """Back-load the studies found; ``fhir`` is the process's client (prior imaging, delivery)."""
    done = Backload()
    uids = await source.study_uids(since=since, study=study)
    done.found = len(uids)
    one_reader = replace(settings, ingest=replace(settings.ingest, workers=1))
    for number, uid in enumerate(uids, start=1):
        if not study and outbox.study(uid) is not None:
            done.skipped += 1
            _say(progress, f"study {number}/{len(uids)} {log_key(uid)}: already done")
            continue
        expected = await source.expected_instances(uid)  # counted before the read
        items = await source.metadata(uid)
        if expected is not None and instance_count(items) < expected:
            done.incomplete += 1
            _say(
                progress,
                f"study {number}/{len(uids)} {log_key(uid)}: incomplete at the archive "
                f"({instance_count(items)} of {expected} instances), not read; run again later",
            )
            continue
        with tempfile.TemporaryDirectory(prefix="rtplan-dicomweb-") as tmp:
            write_instances(items, Path(tmp))
            result = await read_and_map(
                [Path(tmp)], one_reader, tables, fhir=fhir, in_thread=True
            )
            # The resume point: rows, labels and the study record in the store.
            ids = enqueue(outbox, result, targets(settings, out_dir))
            label_ids, labels = enqueue_labels(
                outbox,
                result,
                settings,
                tables,
                label_targets(settings, out_dir),
                datetime.now(UTC),
            )
        done.labels.update(labels)
        done.studies.extend(result.studies)
        done.rejections.extend(result.rejections)
        done.files += result.files
        if ids or label_ids:
            ids += label_ids
            report = await deliver(outbox, settings, ids=ids, out_dir=out_dir, fhir=fhir)
            done.add_delivery(report)
        states = ", ".join(s.status.value for s in result.studies) or "no instances"
        _say(progress, f"study {number}/{len(uids)} {log_key(uid)}: {states}")
    return done


def _say(stream: TextIO | None, line: str) -> None:
    if stream is not None:
        stream.write(line + "\n")
        stream.flush()
