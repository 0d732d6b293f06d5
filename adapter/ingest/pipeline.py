"""The ingest job: files -> headers -> studies -> decisions -> transaction Bundles.

``run_ingest`` decides and maps but writes nothing; a sink (``adapter.jobs.output``) or, in
later issues, the outbox takes the result. Every input file ends in exactly one place: an
instance of a study outcome, or a rejection. Nothing is skipped silently.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from adapter.classify import Classification, RTIndex, classify
from adapter.config import Settings
from adapter.dicom.group import group_studies
from adapter.dicom.models import Completeness, DuplicateInstance, Rejection, StudySummary
from adapter.dicom.walk import read_all
from adapter.errors import MappingError
from adapter.mapping.bundle import review_task_of, study_bundle, study_header_of
from adapter.mapping.fhir_text import without_control_characters
from adapter.mapping.imaging_study import MappingOptions, patient_system
from adapter.mapping.review_task import PriorImaging, ReviewTaskOptions, review_task_key
from adapter.private import log_key as log_key  # re-exported: the ingest modules' name
from adapter.store.identity import drift_reason
from adapter.store.studies import EvidenceRecord, StudyRecord, study_record
from adapter.tables import Tables

log = logging.getLogger(__name__)
JSON = dict[str, Any]
Progress = Callable[[int, int], None]
# Study Instance UID -> the prior-imaging check result for each planning study to be mapped.
PriorLookup = Callable[[Sequence[StudySummary]], Mapping[str, PriorImaging]]
# Study Instance UID -> the record the store keeps for it (its fixed patient), None if new.
KnownStudy = Callable[[str], StudyRecord | None]


class Status(StrEnum):
    MAPPED = "mapped"
    HELD_DIAGNOSTIC = "held-not-planning"
    HELD_INCOMPLETE = "held-incomplete"
    HELD_IDENTITY = "held-identity"  # the patient disagrees: never mapped or sent unresolved
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class StudyOutcome:
    study_uid: str
    status: Status
    classification: Classification
    completeness: Completeness
    instances: int
    bundle: JSON | None = None
    problem: str = ""
    record: StudyRecord | None = None  # whose study, stored with the rows it causes
    # The study as read (its series and instances): the PACS label KOS references them.
    study: StudySummary | None = field(default=None, repr=False, compare=False)
    duplicates: tuple[DuplicateInstance, ...] = ()  # files dropped as repeated SOP instances

    @property
    def key(self) -> str:
        """A short hash of the Study Instance UID: for file names and logs."""
        return log_key(self.study_uid)


@dataclass(frozen=True, slots=True)
class IngestResult:
    studies: tuple[StudyOutcome, ...]
    rejections: tuple[Rejection, ...]
    files: int
    # Files the reader's fast path deferred to the pydicom path, by reason (docs/ingest.md).
    read_by_pydicom_path: Mapping[str, int] = field(default_factory=dict)

    @property
    def everything_mapped(self) -> bool:
        """True when every file was read and every study was mapped or held by policy
        (a study that is not a planning scan, with ``diagnostic_studies: report``)."""
        held_ok = {Status.MAPPED, Status.HELD_DIAGNOSTIC}
        return not self.rejections and all(s.status in held_ok for s in self.studies)

    def count(self, status: Status) -> int:
        return sum(1 for s in self.studies if s.status is status)


@dataclass(frozen=True, slots=True)
class Decided:
    """Files read, grouped into studies and classified; nothing mapped yet."""

    decisions: tuple[tuple[StudySummary, Classification], ...]
    rejections: tuple[Rejection, ...]
    files: int
    deferred: Mapping[str, int]


def run_ingest(
    paths: Sequence[Path],
    settings: Settings,
    tables: Tables,
    *,
    progress: Progress | None = None,
    prior_lookup: PriorLookup | None = None,
    known: KnownStudy | None = None,
) -> IngestResult:
    """Read every DICOM file under ``paths`` and map each planning study to a Bundle.

    ``prior_lookup`` checks for prior cross-sectional imaging (I/O) before the pure mapping;
    without one the check is recorded as not performed (the async job
    ``adapter.jobs.ingest.read_and_map`` runs it with the process's FHIR client). ``known``
    gives the store's record of a study: a study whose patient disagrees with it (or within
    itself) is held (``held-identity``).
    """
    decided = read_and_decide(paths, settings, tables, progress=progress)
    to_check = studies_to_check(decided, settings)
    priors = prior_lookup(to_check) if prior_lookup is not None and to_check else {}
    return map_decided(decided, settings, tables, priors=priors, known=known)


def read_and_decide(
    paths: Sequence[Path], settings: Settings, tables: Tables, *, progress: Progress | None = None
) -> Decided:
    """Read the files, group them into studies and decide which are planning scans."""
    workers = settings.ingest.workers or os.cpu_count() or 1
    headers, rejections = read_all(
        paths, default_tz=settings.ingest.zone, workers=workers, progress=progress
    )
    files = len(headers) + len(rejections)
    studies = group_studies(headers)
    rt = RTIndex.from_studies(studies)
    rules = tables.rules_table("classification-rules")
    decisions = tuple(
        (study, classify(study, rt, rules, min_supporting=settings.ingest.min_supporting_evidence))
        for study in studies
    )
    deferred = Counter(h.deferred for h in headers if h.deferred)
    deferred.update(r.deferred for r in rejections if r.deferred)
    return Decided(decisions, tuple(rejections), files, dict(sorted(deferred.items())))


def studies_to_check(decided: Decided, settings: Settings) -> list[StudySummary]:
    """The planning studies that will be mapped: the prior-imaging check asks about each."""
    return [
        s
        for s, d in decided.decisions
        if d.is_planning and _will_map(s, d, settings) and not _inconsistent_patient(s)
    ]


def map_decided(
    decided: Decided,
    settings: Settings,
    tables: Tables,
    *,
    priors: Mapping[str, PriorImaging],
    known: KnownStudy | None = None,
) -> IngestResult:
    """Map each decided study (pure, apart from ``known``, the store's record lookup)."""
    options = MappingOptions(
        create_patient=settings.fhir.create_patient,
        wado_rs_base_url=settings.archive.wado_rs_base_url,
        archive_name=settings.archive.name,
    )
    outcomes = []
    for study, decision in decided.decisions:
        prior = priors.get(study.study_instance_uid, _not_performed(settings))
        outcome = _decide(study, decision, settings, tables, options, prior)
        outcome = _check_identity(study, outcome, known)
        log.info(
            "study %s: %s (%d instances)", outcome.key, outcome.status.value, outcome.instances
        )
        outcomes.append(outcome)
    for rejection in decided.rejections:
        log.warning("file %s: %s", rejection.kind.value, rejection.reason)
    return IngestResult(tuple(outcomes), decided.rejections, decided.files, decided.deferred)


def _will_map(study: StudySummary, decision: Classification, settings: Settings) -> bool:
    if not decision.is_planning and settings.ingest.diagnostic_studies == "report":
        return False
    return study.completeness.complete or settings.ingest.incomplete_studies != "hold"


def _inconsistent_patient(study: StudySummary) -> str:
    """Why the study's own instances cannot be trusted to name one patient ("" if they can)."""
    if len(study.patients) > 1:
        return (
            f"instances name {len(study.patients)} different patients; "
            "not mapped together, nothing sent"
        )
    conflicting = sum(1 for d in study.duplicates if not d.same_content)
    if conflicting:
        return (
            f"{conflicting} duplicate SOP instance(s) with different content; "
            "not mapped, nothing sent"
        )
    return ""


def _check_identity(
    study: StudySummary, outcome: StudyOutcome, known: KnownStudy | None
) -> StudyOutcome:
    """Hold a study whose patient disagrees, whatever ``incomplete_studies`` says.

    A study that only disagrees with the recorded patient keeps its Bundle (held in the store,
    released if an operator confirms the new patient); one that disagrees within itself is
    never mapped.
    """
    problem = _inconsistent_patient(study)
    if problem:
        return replace(outcome, status=Status.HELD_IDENTITY, problem=problem, bundle=None)
    stored = known(study.study_instance_uid) if known is not None else None
    if stored is None or outcome.record is None:
        return outcome
    problem = drift_reason(stored, outcome.record)
    if not problem:
        return outcome
    return replace(outcome, status=Status.HELD_IDENTITY, problem=problem)


def _not_performed(settings: Settings) -> PriorImaging:
    review = settings.review
    return PriorImaging(window_days=review.prior_imaging_days, modalities=review.modalities)


def review_task_options(settings: Settings) -> ReviewTaskOptions:
    review = settings.review
    return ReviewTaskOptions(
        due_days=review.due_days,
        default_owner_type=review.default_owner_type,
        default_owner_system=review.default_owner_system,
        default_owner_value=review.default_owner_value,
        default_owner_display=review.default_owner_display,
        raised_priority=review.raised_priority,
    )


def _decide(
    study: StudySummary,
    decision: Classification,
    settings: Settings,
    tables: Tables,
    options: MappingOptions,
    prior: PriorImaging,
) -> StudyOutcome:
    held = StudyOutcome(
        study_uid=study.study_instance_uid,
        status=Status.HELD_DIAGNOSTIC,
        classification=decision,
        completeness=study.completeness,
        instances=study.number_of_instances,
        record=decided(study_record(study), decision),
        study=study,
        duplicates=study.duplicates,
    )
    if not decision.is_planning and settings.ingest.diagnostic_studies == "report":
        return held
    if not study.completeness.complete and settings.ingest.incomplete_studies == "hold":
        problem = "; ".join(study.completeness.problems)
        return replace(held, status=Status.HELD_INCOMPLETE, problem=problem)
    try:
        # "auto" was resolved from the server's CapabilityStatement before ingest; R4 otherwise.
        version: Literal["R4", "R5"] = "R5" if settings.fhir.version == "R5" else "R4"
        bundle = study_bundle(
            study,
            decision,
            tables,
            options,
            version,
            review=review_task_options(settings),
            prior=prior,
        )
    except MappingError as exc:
        return replace(held, status=Status.FAILED, problem=str(exc))
    # A NUL or other control byte from DICOM text never reaches FHIR (docs/security.md).
    bundle = without_control_characters(bundle)
    record = mapped(held.record, bundle, patient_system(study, tables), options.create_patient)
    return replace(held, status=Status.MAPPED, bundle=bundle, record=record)


def decided(record: StudyRecord, decision: Classification) -> StudyRecord:
    """The study's record with the classifier's decision and evidence (issue 11: readable)."""
    return replace(
        record,
        classification="planning" if decision.is_planning else "not-planning",
        evidence=tuple(
            EvidenceRecord(e.rule, e.strength.value, e.text, e.series_uid)
            for e in decision.evidence
        ),
    )


def mapped(
    record: StudyRecord | None, bundle: JSON, system: str, created: bool
) -> StudyRecord | None:
    """The record with what the mapping decided: the FHIR patient identifier system, the
    review Task it opens and the ImagingStudy's start, description and modalities (read from the
    Bundle just built, before it is stored: a review later completes that Task, and its note
    prints that header, from the record, never from the stored row)."""
    if record is None:
        return None
    task = review_task_of(bundle)
    started, description, modalities = study_header_of(bundle)
    return replace(
        record,
        patient_system=system,
        patient_created=created,
        review_task_key=review_task_key(record.study_uid) if task is not None else "",
        review_task=task,
        review_due=_due(task),
        study_started=started,
        study_description=description,
        study_modalities=modalities,
    )


def _due(task: JSON | None) -> str:
    """When the review Task is due (``restriction.period.end``), "" when it has no due date."""
    end = ((task or {}).get("restriction") or {}).get("period", {}).get("end")
    return str(end) if end else ""
