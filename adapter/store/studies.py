"""One record per study the adapter has ingested: whose study it is and what it was ordered as.

The record is written at ingest in the same transaction as the outbox rows the study causes,
so a row never exists for a study the store cannot name the patient of. The patient fields
fix the study's identity: the first ingest that records a study decides its patient, and a
later ingest that disagrees is held (``adapter.safety.identity``), never silently re-pointed.

The order fields (accession, requested procedure and scheduled step ids from the Request
Attributes Sequence) are filled in when a later ingest brings a value the first one lacked;
they are never overwritten once set.

Every identity and order field is a plain ``str``, ``""`` when the header had no value.
``patient_name`` is the decoded DICOM PN string (``Family^Given^Middle^Prefix^Suffix``,
``=``-separated ideographic and phonetic groups), ``birth_date`` is ``YYYY-MM-DD``.

The *facts* the workflow needs later (issue 8: it never re-parses a stored Bundle) are kept
here too, as the newest stored ingest decided them: the classification and its evidence, the
modality, the requested procedure, the FHIR patient identifier system the mapping used, the
review Task's key and the Task as opened (a review completes that Task), and the FHIR ids of
the ImagingStudy, review Task and Patient once a FHIR server has answered. The record never
holds free text beyond the DICOM fields above and the evidence sentences (which name series
numbers and rule values, never patient data).

The review note's header (issue 8: it is not read back from the stored ingest Bundle either):
the study's start, description and modality codes as the mapping wrote them into the
ImagingStudy (``study_started``, ``study_description``, ``study_modalities``), the newest
mapped ingest's non-empty values. The patient's names, birth date and sex come from the
identity fields above.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from adapter.dicom.models import PersonName, StudySummary
from adapter.store.db import Database

JSON = dict[str, Any]
IMAGE_MODALITIES = ("CT", "MR", "PT")  # the modalities an order names (OBR-24 / OBR-44)

# Columns added by issue 8 (the facts the workflow reads), by migration 5
# (``adapter.store.migrations``); the defaults read as "not known".
FACT_COLUMNS = (
    ("requested_procedure", "TEXT NOT NULL DEFAULT ''"),
    ("modality", "TEXT NOT NULL DEFAULT ''"),
    ("classification", "TEXT NOT NULL DEFAULT ''"),
    ("evidence", "TEXT NOT NULL DEFAULT '[]'"),
    ("patient_system", "TEXT NOT NULL DEFAULT ''"),
    ("patient_created", "INTEGER NOT NULL DEFAULT 0"),
    ("review_task_key", "TEXT NOT NULL DEFAULT ''"),
    ("review_task", "TEXT NOT NULL DEFAULT ''"),
    ("review_due", "TEXT NOT NULL DEFAULT ''"),
    ("fhir_patient_id", "TEXT NOT NULL DEFAULT ''"),
    ("fhir_imaging_study_id", "TEXT NOT NULL DEFAULT ''"),
    ("fhir_review_task_id", "TEXT NOT NULL DEFAULT ''"),
)
# Columns added for the review note's header, by migration 6; "" / "[]" read as "not known".
NOTE_COLUMNS = (
    ("study_started", "TEXT NOT NULL DEFAULT ''"),
    ("study_description", "TEXT NOT NULL DEFAULT ''"),
    ("study_modalities", "TEXT NOT NULL DEFAULT '[]'"),
)
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
# Facts the newest stored ingest decides (a later series may bring RT evidence); an empty
# value never replaces a known one, except the classification and its evidence, which are
# always the newest decision.
_FACT_FIELDS = tuple(name for name, _ in FACT_COLUMNS)
_NOTE_FIELDS = tuple(name for name, _ in NOTE_COLUMNS)
_DECIDED_FIELDS = ("classification", "evidence")
_FHIR_ID_FIELDS = ("fhir_patient_id", "fhir_imaging_study_id", "fhir_review_task_id")


@dataclass(frozen=True, slots=True)
class EvidenceRecord:
    """One piece of classification evidence (``adapter.classify.Evidence``), as stored."""

    rule: str
    strength: str  # conclusive / supporting / counter
    text: str
    series_uid: str = ""


@dataclass(frozen=True, slots=True)
class StudyRecord:
    """Whose study this is, which order it answers, and what the adapter decided about it
    (all ``str``, ``""`` when absent; see the module docstring)."""

    study_uid: str
    patient_id: str
    patient_issuer: str
    patient_name: str
    birth_date: str
    sex: str
    accession: str
    requested_procedure_id: str
    scheduled_step_id: str
    requested_procedure: str = ""  # the requested procedure code's meaning (or code)
    modality: str = ""  # the first image modality (CT, MR, PT) of the study, "" if none
    classification: str = ""  # "planning" / "not-planning" / "" (never classified)
    evidence: tuple[EvidenceRecord, ...] = ()
    patient_system: str = ""  # the FHIR identifier system the Patient ID was mapped to
    patient_created: bool = False  # the ingest Bundle creates the Patient (fhir.create_patient)
    review_task_key: str = ""  # "<system>|<value>" of the oncologist-review Task
    review_task: JSON | None = None  # that Task as the ingest opened it (a review completes it)
    review_due: str = ""  # when the review is due (ISO date-time, the Task's restriction)
    fhir_patient_id: str = ""
    fhir_imaging_study_id: str = ""
    fhir_review_task_id: str = ""
    study_started: str = ""  # ImagingStudy.started as mapped (ISO 8601), "" if none
    study_description: str = ""  # ImagingStudy.description as mapped (with the planning label)
    study_modalities: tuple[str, ...] = ()  # ImagingStudy.modality codes as mapped, in order

    @property
    def identity(self) -> tuple[str, str, str, str, str]:
        """The patient fields that must never change under a study."""
        return (self.patient_id, self.patient_issuer, self.patient_name, self.birth_date, self.sex)

    def to_json(self) -> JSON:
        data: JSON = {f.name: getattr(self, f.name) for f in fields(self)}
        data["evidence"] = [_evidence_json(e) for e in self.evidence]
        data["study_modalities"] = list(self.study_modalities)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StudyRecord:
        """The inverse of :meth:`to_json`; a record stored before the facts existed (only the
        identity and order fields) loads with the facts empty."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["evidence"] = tuple(EvidenceRecord(**e) for e in data.get("evidence", ()))
        values["study_modalities"] = tuple(str(m) for m in data.get("study_modalities", ()))
        return cls(**values)


def _evidence_json(evidence: EvidenceRecord) -> JSON:
    return {
        "rule": evidence.rule,
        "strength": evidence.strength,
        "text": evidence.text,
        "series_uid": evidence.series_uid,
    }


def pn_string(name: PersonName) -> str:
    """The DICOM PN form of a decoded name (PS3.5 §6.2.1), trailing empty parts dropped."""
    given = [*name.given, "", ""][:2]
    alphabetic = "^".join([name.family, *given, name.prefix, name.suffix]).rstrip("^")
    return "=".join([alphabetic, name.ideographic, name.phonetic]).rstrip("=")


def study_record(study: StudySummary) -> StudyRecord:
    """The record of a study as read (its first instance's patient, as the mapping uses); the
    ingest adds its decisions (classification, mapping facts)."""
    patient = study.patient
    procedure = next(iter(study.requested_procedure_codes), None)
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
        requested_procedure=(procedure.meaning or procedure.code) if procedure else "",
        modality=next((m for m in study.modalities if m in IMAGE_MODALITIES), ""),
    )


_COLUMNS = (*_FIELDS, *_FACT_FIELDS, *_NOTE_FIELDS)


def load(db: Database, study_uid: str) -> StudyRecord | None:
    raw = db.execute(
        f"SELECT {', '.join(_COLUMNS)} FROM studies WHERE study_uid=?", (study_uid,)
    ).fetchone()
    return None if raw is None else _from_columns(tuple(raw))


def _from_columns(values: tuple[Any, ...]) -> StudyRecord:
    named = dict(zip(_COLUMNS, values, strict=True))
    task = str(named["review_task"])
    return StudyRecord(
        study_uid=str(named["study_uid"]),
        patient_id=str(named["patient_id"]),
        patient_issuer=str(named["patient_issuer"]),
        patient_name=str(named["patient_name"]),
        birth_date=str(named["birth_date"]),
        sex=str(named["sex"]),
        accession=str(named["accession"]),
        requested_procedure_id=str(named["requested_procedure_id"]),
        scheduled_step_id=str(named["scheduled_step_id"]),
        requested_procedure=str(named["requested_procedure"]),
        modality=str(named["modality"]),
        classification=str(named["classification"]),
        evidence=tuple(EvidenceRecord(**e) for e in json.loads(str(named["evidence"]) or "[]")),
        patient_system=str(named["patient_system"]),
        patient_created=bool(named["patient_created"]),
        review_task_key=str(named["review_task_key"]),
        review_task=json.loads(task) if task else None,
        review_due=str(named["review_due"]),
        fhir_patient_id=str(named["fhir_patient_id"]),
        fhir_imaging_study_id=str(named["fhir_imaging_study_id"]),
        fhir_review_task_id=str(named["fhir_review_task_id"]),
        study_started=str(named["study_started"]),
        study_description=str(named["study_description"]),
        study_modalities=tuple(str(m) for m in json.loads(str(named["study_modalities"]) or "[]")),
    )


def _column_value(record: StudyRecord, name: str) -> Any:
    value = getattr(record, name)
    if name == "evidence":
        return json.dumps([_evidence_json(e) for e in value], ensure_ascii=False)
    if name == "review_task":
        return "" if value is None else json.dumps(value, ensure_ascii=False, sort_keys=True)
    if name == "patient_created":
        return 1 if value else 0
    if name == "study_modalities":
        return json.dumps(list(value))
    return value


def save(db: Database, record: StudyRecord, now: float) -> StudyRecord:
    """Insert the record, or fill in what an earlier ingest lacked and take the newest facts.

    The patient fields of an existing record are never changed here (the caller holds a
    disagreeing ingest; only an operator's resolution replaces them, see :func:`replace_patient`);
    the order fields are filled in only when empty; the FHIR ids only by :func:`record_fhir_ids`.
    Returns the record as stored.
    """
    stored = load(db, record.study_uid)
    if stored is None:
        db.execute(
            f"INSERT INTO studies ({', '.join(_COLUMNS)}, recorded_at, updated_at) "
            f"VALUES ({', '.join('?' * len(_COLUMNS))}, ?, ?)",
            (*(_column_value(record, f) for f in _COLUMNS), now, now),
        )
        return record
    updates = {
        f: _column_value(record, f)
        for f in _ORDER_FIELDS
        if not getattr(stored, f) and getattr(record, f)
    }
    for f in (*_FACT_FIELDS, *_NOTE_FIELDS):
        if f in _FHIR_ID_FIELDS:
            continue
        new, old = getattr(record, f), getattr(stored, f)
        if new != old and (new or f in _DECIDED_FIELDS):
            updates[f] = _column_value(record, f)
    if updates:
        assignments = ", ".join(f"{f}=?" for f in updates)
        db.execute(
            f"UPDATE studies SET {assignments}, updated_at=? WHERE study_uid=?",
            (*updates.values(), now, record.study_uid),
        )
    result = load(db, record.study_uid)
    assert result is not None
    return result


def link_row(db: Database, row_id: int, study_uid: str) -> None:
    """Remember that outbox row ``row_id`` carries the study's ingest Bundle."""
    db.execute(
        "INSERT INTO study_rows (row_id, study_uid) VALUES (?, ?) "
        "ON CONFLICT (row_id) DO UPDATE SET study_uid=excluded.study_uid",
        (row_id, study_uid),
    )


def record_fhir_ids(
    db: Database,
    row_id: int,
    result: Mapping[str, Any],
    now: float,
    *,
    study_uid: str | None = None,
) -> None:
    """Keep the server ids a delivered ingest Bundle got (its transaction-response entries:
    one Patient, ImagingStudy and review Task at most). Nothing for rows of other kinds.
    ``study_uid``: the row's study when the caller has read it already (``study_rows``)."""
    if study_uid is None:
        raw = db.execute("SELECT study_uid FROM study_rows WHERE row_id=?", (row_id,)).fetchone()
        if raw is None:
            return
        study_uid = str(raw[0])
    column = {
        "Patient": "fhir_patient_id",
        "ImagingStudy": "fhir_imaging_study_id",
        "Task": "fhir_review_task_id",
    }
    updates = {
        column[str(e["type"])]: str(e["id"])
        for e in result.get("entries", [])
        if isinstance(e, Mapping) and e.get("type") in column and e.get("id")
    }
    if updates:
        assignments = ", ".join(f"{f}=?" for f in updates)
        db.execute(
            f"UPDATE studies SET {assignments}, updated_at=? WHERE study_uid=?",
            (*updates.values(), now, study_uid),
        )


def replace_patient(db: Database, record: StudyRecord, now: float) -> None:
    """Set a study's patient fields (an operator's audited identity resolution only)."""
    db.execute(
        "UPDATE studies SET patient_id=?, patient_issuer=?, patient_name=?, birth_date=?, "
        "sex=?, updated_at=? WHERE study_uid=?",
        (*record.identity, now, record.study_uid),
    )
