"""Decide which studies get a label KOS, build it once, and store it with its outbox rows.

Only a study that was mapped as a planning scan is labelled: a diagnostic study never gets a
KOS (not even with ``ingest.diagnostic_studies: map``), and a held or failed study waits.
Ingesting the same files again re-uses the stored KOS (no second document on the PACS); a
study whose image instances changed (a late series) gets a new KOS instance that supersedes
the previous one in the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from adapter.config import Settings
from adapter.errors import AdapterError
from adapter.ingest.pipeline import IngestResult, Status, StudyOutcome
from adapter.label.kos_payload import KosPayload
from adapter.label.plan import KosPlan, content_digest
from adapter.label.titles import LabelVocabulary, load_vocabulary
from adapter.store.labels import KIND_KOS, LabelRecord, label_key, row_label
from adapter.store.outbox import NewRow
from adapter.store.protocol import LabelRecords, Store
from adapter.tables import Tables

KOS_FILES, PACS = "dicom-files", "pacs"
DIMSE_PREFIX = "dimse:"


def label_targets(settings: Settings, out_dir: Path | None) -> list[tuple[str, str]]:
    """Where label KOS rows go: the output folder's ``dicom/``, the C-STORE archive and the
    STOW-RS service that are configured. None when labelling is switched off."""
    label = settings.label
    if not label.enabled:
        return []
    found = []
    if out_dir is not None:
        found.append((KOS_FILES, str(out_dir.resolve())))
    if label.cstore:
        found.append((PACS, DIMSE_PREFIX + label.cstore))
    if label.stow_rs_url:
        found.append((PACS, label.stow_rs_url))
    return found


@dataclass(frozen=True, slots=True)
class LabelOutcome:
    """What happened to one study's label in this run (no patient data)."""

    study_uid: str
    sop_instance_uid: str = ""
    instance_number: int = 0
    new: bool = False  # False: the stored KOS was re-used
    supersedes: str = ""
    problem: str = ""

    def as_json(self) -> dict[str, Any]:
        """The study's ``pacs_label`` entry in ``report.json``."""
        if self.problem:
            return {"problem": self.problem}
        entry: dict[str, Any] = {
            "kos_instance_number": self.instance_number,
            "kos_sop_instance_uid": self.sop_instance_uid,
            "new": self.new,
        }
        if self.supersedes:
            entry["supersedes"] = self.supersedes
        return entry


def labelled(outcome: StudyOutcome) -> bool:
    """A study gets a label KOS only when it was mapped as a planning scan."""
    return (
        outcome.status is Status.MAPPED
        and outcome.classification.is_planning
        and outcome.study is not None
    )


def kos_file_label(study_uid: str, instance_number: int) -> str:
    """File name stem (and outbox label) of a KOS: our own hash, never a UID."""
    return row_label(study_uid, instance_number)


def build_for(
    outcome: StudyOutcome,
    settings: Settings,
    vocabulary: LabelVocabulary,
    now: datetime,
    *,
    instance_number: int = 1,
) -> tuple[Any, str]:
    """Build the KOS Dataset of one labelled study with the reference (pydicom) builder;
    return it with its content digest. Ingest sends :func:`document_for`'s bytes, the same.

    Raises:
        AdapterError: the source files cannot be read again, or the study cannot be labelled.
    """
    from adapter.label.kos import build_kos  # pydicom: only when a KOS is built
    from adapter.label.source import read_study_attributes

    study = outcome.study
    assert study is not None
    digest = content_digest(study, outcome.classification, vocabulary)
    copied = read_study_attributes(study.source_paths[0], study.study_instance_uid)
    plan = KosPlan(study.study_instance_uid, digest, instance_number, settings.label.series_number)
    # DICOM times without an offset are the site's local time (ingest.timezone).
    local = now.astimezone(settings.ingest.zone)
    return build_kos(study, outcome.classification, copied, vocabulary, plan, local), digest


def document_for(
    outcome: StudyOutcome,
    settings: Settings,
    vocabulary: LabelVocabulary,
    now: datetime,
    *,
    instance_number: int = 1,
) -> tuple[bytes, KosPlan]:
    """The encoded KOS of one labelled study, byte for byte what :func:`build_for` and
    ``encode`` give, faster, and its plan (UIDs, digest).

    Written without pydicom (``adapter.label.raw_kos``) when the study's file and character set
    allow an exact copy; otherwise by ``adapter.label.fast_kos`` (pydicom for the head).

    Raises:
        AdapterError: the source files cannot be read again, or the study cannot be labelled.
    """
    from adapter.label.raw_kos import Defer, kos_bytes, read_copied

    study = outcome.study
    assert study is not None
    digest = content_digest(study, outcome.classification, vocabulary)
    plan = KosPlan(study.study_instance_uid, digest, instance_number, settings.label.series_number)
    local = now.astimezone(settings.ingest.zone)
    try:
        raw = read_copied(study.source_paths[0], study.study_instance_uid)
        document = kos_bytes(study, outcome.classification, raw, vocabulary, plan, local)
    except Defer:
        from adapter.label.fast_kos import kos_document  # pydicom: only for unusual studies
        from adapter.label.source import read_study_attributes

        copied = read_study_attributes(study.source_paths[0], study.study_instance_uid)
        document = kos_document(study, outcome.classification, copied, vocabulary, plan, local)
    return document, plan


def enqueue_labels(
    outbox: Store,
    result: IngestResult,
    settings: Settings,
    tables: Tables,
    to: Sequence[tuple[str, str]],
    now: datetime,
) -> tuple[list[int], dict[str, LabelOutcome]]:
    """Build (or re-use) each planning study's KOS and store one outbox row per destination
    that does not have it yet. Returns the row ids and an outcome per labelled study."""
    if not to or not settings.label.enabled:
        return [], {}
    vocabulary = load_vocabulary(tables)
    store = outbox.labels()
    rows: list[NewRow] = []
    outcomes: dict[str, LabelOutcome] = {}
    for outcome in result.studies:
        if not labelled(outcome):
            continue
        try:
            record, fresh, previous = _current_record(outcome, settings, vocabulary, store, now)
        except AdapterError as exc:
            outcomes[outcome.study_uid] = LabelOutcome(outcome.study_uid, problem=str(exc))
            continue
        outcomes[outcome.study_uid] = LabelOutcome(
            outcome.study_uid,
            sop_instance_uid=record.sop_instance_uid,
            instance_number=record.instance_number,
            new=fresh,
            supersedes=previous,
        )
        for destination, target in to:
            if store.has_row(record, destination, target):
                continue
            rows.append(_row(record, destination, target, previous))
    return outbox.enqueue_many(rows), outcomes


def _current_record(
    outcome: StudyOutcome,
    settings: Settings,
    vocabulary: LabelVocabulary,
    store: LabelRecords,
    now: datetime,
) -> tuple[LabelRecord, bool, str]:
    """The study's KOS to send: the stored one when it still says the same, else a new one."""
    study = outcome.study
    assert study is not None
    latest = store.latest(outcome.study_uid)
    digest = content_digest(study, outcome.classification, vocabulary)
    if latest is not None and latest.digest == digest:
        return latest, False, ""
    number = 1 if latest is None else latest.instance_number + 1
    document, plan = document_for(outcome, settings, vocabulary, now, instance_number=number)
    record = store.record(
        study_uid=outcome.study_uid,
        sop_instance_uid=plan.sop_instance_uid,
        instance_number=number,
        digest=plan.digest,
        document=document,
    )
    return record, True, "" if latest is None else latest.sop_instance_uid


def _row(record: LabelRecord, destination: str, target: str, previous: str) -> NewRow:
    payload = KosPayload(
        study_uid=record.study_uid,
        sop_instance_uid=record.sop_instance_uid,
        instance_number=record.instance_number,
        document=record.document,
        supersedes=previous,
    )
    return NewRow(
        destination=destination,
        target=target,
        key=label_key(record.study_uid),
        kind=KIND_KOS,
        label=kos_file_label(record.study_uid, record.instance_number),
        payload=payload.to_json(),
    )
