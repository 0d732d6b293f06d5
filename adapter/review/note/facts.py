"""What the planning-scan review note says: facts taken from the review and the study. Pure.

The note states only what the oncologist documented (the review input) and what the study's own
records say (the store's study record: the patient's names and birth date as DICOM gave them,
the study's start, description and modalities as the ImagingStudy was mapped). Nothing is
inferred: an incomplete review says so before anything else, a withdrawn concern says so, and an
outcome is always quoted as the oncologist's, never as a diagnosis.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from adapter.dicom.charset import person_name
from adapter.mapping.fhir_text import without_control_characters
from adapter.mapping.imaging_study import human_names
from adapter.mapping.review_input import ReviewInput
from adapter.store.studies import StudyRecord as StoredStudy
from adapter.tables import Tables

JSON = dict[str, Any]
NoteState = Literal["final", "incomplete", "amended", "concern-withdrawn"]


@dataclass(frozen=True, slots=True)
class NoteFinding:
    number: int
    category: str  # the category's display, e.g. "Suspected metastasis"
    body_site: str  # the body site's display, "" when the oncologist gave none
    urgency: str
    description: str


@dataclass(frozen=True, slots=True)
class StudyRecord:
    """The note's header from the study's record (empty when the adapter does not hold it)."""

    patient_names: tuple[str, ...] = ()
    birth_date: str = ""
    started: str = ""
    description: str = ""
    modalities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReviewNote:
    """One version of the planning-scan review note."""

    review_id: str
    version: int
    document_number: str  # unique per version: TXA-12, DocumentReference.masterIdentifier
    state: NoteState
    patient_identifier: str  # "value (system)"; "" when unknown
    study: StudyRecord
    study_uid: str
    accession: str
    reviewer_name: str
    reviewer_id: str
    reviewer_system: str
    reviewed_at: str  # ISO 8601 with offset, seconds precision
    all_images_reviewed: bool
    outcome: str  # "no-significant-finding" | "unexpected-findings"
    findings: tuple[NoteFinding, ...]
    radiologist_review_requested: bool
    concern_withdrawn: bool
    patient_informed_planning_only: bool
    notes: str

    @property
    def replaces_version(self) -> int | None:
        return self.version - 1 if self.version > 1 else None

    @property
    def title(self) -> str:
        return "Radiotherapy planning scan review note"


def review_document_number(review_id: str) -> str:
    """``RN`` + 16 hex digits of the review id: the review's document in an MDM/ORU feed
    (TXA-12, OBR-3), the same for every version. No patient data; fits HL7 EI fields."""
    return "RN" + hashlib.sha256(review_id.encode()).hexdigest()[:16].upper()


def document_number(review_id: str, version: int) -> str:
    """The number of one note version (DocumentReference.masterIdentifier): the review's
    document number + ``V`` + version."""
    return f"{review_document_number(review_id)}V{version}"


def note_state(review: ReviewInput) -> NoteState:
    if not review.all_images_reviewed:
        return "incomplete"
    if review.concern_withdrawn:
        return "concern-withdrawn"
    return "final" if review.version == 1 else "amended"


def study_record(stored: StoredStudy | None) -> StudyRecord:
    """The note header from the store's study record (issue 8: never a stored Bundle).

    The patient's names and birth date are printed only when the adapter writes the Patient
    (``fhir.create_patient``): otherwise the EHR's Patient is the record and the note names the
    patient by identifier only. The names are the study's DICOM name (decoded PN) as the
    ingest wrote them into that Patient: the alphabetic group, then the ideographic and
    phonetic groups.
    """
    if stored is None:
        return StudyRecord()
    names: tuple[str, ...] = ()
    birth_date = ""
    if stored.patient_created:
        # As the ingest wrote them: control characters removed from every part (docs/security.md).
        found = without_control_characters(human_names(person_name(stored.patient_name)))
        names = tuple(dict.fromkeys(_name(n) for n in found if _name(n)))
        birth_date = stored.birth_date
    return StudyRecord(
        names,
        birth_date,
        stored.study_started,
        stored.study_description,
        stored.study_modalities,
    )


def _name(name: JSON) -> str:
    if name.get("text"):
        return str(name["text"])
    return " ".join([*map(str, name.get("given", [])), str(name.get("family", ""))]).strip()


def build_note(
    review: ReviewInput,
    tables: Tables,
    *,
    study_uid: str,
    patient_identifier: JSON | None,
    accession: str,
    study: StudyRecord,
) -> ReviewNote:
    """The note for one review version (validated input; tables for the displays)."""
    sites = tables.conceptmap("body-site")
    wording = tables.labels_table("review-note")
    findings = []
    for number, finding in enumerate(review.findings, 1):
        site = ""
        if finding.body_site:
            coding = sites.first(finding.body_site)
            site = coding.display if coding is not None else finding.body_site
        label = wording.text(f"category_{finding.category}")
        findings.append(NoteFinding(number, label, site, finding.urgency, finding.description))
    identifier = ""
    if patient_identifier and patient_identifier.get("value"):
        identifier = f"{patient_identifier['value']} ({patient_identifier.get('system', '')})"
    return ReviewNote(
        review_id=review.review_id,
        version=review.version,
        document_number=document_number(review.review_id, review.version),
        state=note_state(review),
        patient_identifier=identifier,
        study=study,
        study_uid=study_uid,
        accession=accession,
        reviewer_name=review.reviewer.name,
        reviewer_id=review.reviewer.identifier.value,
        reviewer_system=review.reviewer.identifier.system,
        reviewed_at=review.reviewed_at.isoformat(timespec="seconds"),
        all_images_reviewed=review.all_images_reviewed,
        outcome=review.outcome,
        findings=tuple(findings),
        radiologist_review_requested=review.radiologist_review_requested,
        concern_withdrawn=review.concern_withdrawn,
        patient_informed_planning_only=review.patient_informed_planning_only,
        notes=review.notes,
    )
