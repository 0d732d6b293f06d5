"""One record per study the adapter has ingested: whose study it is and what it was ordered as.

The record is written at ingest in the same transaction as the outbox rows the study causes,
so a row never exists for a study the store cannot name the patient of. The patient fields
fix the study's identity: the first ingest that records a study decides its patient, and a
later ingest that disagrees is held (``adapter.safety.identity``), never silently re-pointed.

The order fields (accession, requested procedure and scheduled step ids from the Request
Attributes Sequence) are filled in when a later ingest brings a value the first one lacked;
they are never overwritten once set.

Every field is a plain ``str``, ``""`` when the header had no value. ``patient_name`` is the
decoded DICOM PN string (``Family^Given^Middle^Prefix^Suffix``, ``=``-separated ideographic
and phonetic groups), ``birth_date`` is ``YYYY-MM-DD``.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapter.dicom.models import PersonName, StudySummary
from adapter.store.db import Database

_FIELDS = (
    "study_uid",
    "patient_id",
    "patient_issuer",
    "patient_name",
    "birth_date",
    "sex",
    "accession",
    "requested_procedure_id",
    "scheduled_step_id",
)
# Fields a later ingest may fill in when they were empty (never overwrite).
_ORDER_FIELDS = ("accession", "requested_procedure_id", "scheduled_step_id")


@dataclass(frozen=True, slots=True)
class StudyRecord:
    """Whose study this is and which order it answers (all ``str``, ``""`` when absent)."""

    study_uid: str
    patient_id: str
    patient_issuer: str
    patient_name: str
    birth_date: str
    sex: str
    accession: str
    requested_procedure_id: str
    scheduled_step_id: str

    @property
    def identity(self) -> tuple[str, str, str, str, str]:
        """The patient fields that must never change under a study."""
        return (self.patient_id, self.patient_issuer, self.patient_name, self.birth_date, self.sex)


def pn_string(name: PersonName) -> str:
    """The DICOM PN form of a decoded name (PS3.5 §6.2.1), trailing empty parts dropped."""
    given = [*name.given, "", ""][:2]
    alphabetic = "^".join([name.family, *given, name.prefix, name.suffix]).rstrip("^")
    return "=".join([alphabetic, name.ideographic, name.phonetic]).rstrip("=")


def study_record(study: StudySummary) -> StudyRecord:
    """The record of a study as read (its first instance's patient, as the mapping uses)."""
    patient = study.patient
    return StudyRecord(
        study_uid=study.study_instance_uid,
        patient_id=patient.patient_id,
        patient_issuer=patient.issuer,
        patient_name=pn_string(patient.name),
        birth_date=patient.birth_date.isoformat() if patient.birth_date else "",
        sex=patient.sex,
        accession=study.accession_number,
        requested_procedure_id=study.requested_procedure_id,
        scheduled_step_id=study.scheduled_step_id,
    )


def load(db: Database, study_uid: str) -> StudyRecord | None:
    raw = db.execute(
        f"SELECT {', '.join(_FIELDS)} FROM studies WHERE study_uid=?", (study_uid,)
    ).fetchone()
    return None if raw is None else StudyRecord(*(str(value) for value in tuple(raw)))


def save(db: Database, record: StudyRecord, now: float) -> StudyRecord:
    """Insert the record, or fill in the order fields an earlier ingest lacked.

    The patient fields of an existing record are never changed here (the caller holds a
    disagreeing ingest; only an operator's resolution replaces them, see :func:`replace_patient`).
    Returns the record as stored.
    """
    stored = load(db, record.study_uid)
    if stored is None:
        db.execute(
            f"INSERT INTO studies ({', '.join(_FIELDS)}, recorded_at, updated_at) "
            f"VALUES ({', '.join('?' * len(_FIELDS))}, ?, ?)",
            (*(getattr(record, f) for f in _FIELDS), now, now),
        )
        return record
    updates = {
        f: getattr(record, f)
        for f in _ORDER_FIELDS
        if not getattr(stored, f) and getattr(record, f)
    }
    if updates:
        assignments = ", ".join(f"{f}=?" for f in updates)
        db.execute(
            f"UPDATE studies SET {assignments}, updated_at=? WHERE study_uid=?",
            (*updates.values(), now, record.study_uid),
        )
    result = load(db, record.study_uid)
    assert result is not None
    return result


def replace_patient(db: Database, record: StudyRecord, now: float) -> None:
    """Set a study's patient fields (an operator's audited identity resolution only)."""
    db.execute(
        "UPDATE studies SET patient_id=?, patient_issuer=?, patient_name=?, birth_date=?, "
        "sex=?, updated_at=? WHERE study_uid=?",
        (*record.identity, now, record.study_uid),
    )
