"""Frozen, typed summaries of what was read from DICOM headers.

These are the only DICOM-derived shapes the rest of the adapter sees: ``mapping/`` and the
classifier never touch a pydicom Dataset. Every string is already decoded to Python ``str``
(the Specific Character Set has been applied) and every time carries a UTC offset.

Data flow: one file -> :class:`InstanceHeader` (or :class:`Rejection`);
many headers -> :class:`StudySummary` (see ``adapter.dicom.group``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class CodedValue:
    """One item of a DICOM code sequence: (0008,0100) value, (0008,0102) scheme, (0008,0104)."""

    code: str
    scheme: str
    meaning: str


@dataclass(frozen=True, slots=True)
class PersonName:
    """A decoded PN value. ``ideographic``/``phonetic`` keep the other ISO 2022 groups."""

    family: str = ""
    given: tuple[str, ...] = ()
    prefix: str = ""
    suffix: str = ""
    ideographic: str = ""
    phonetic: str = ""

    @property
    def is_empty(self) -> bool:
        return not (self.family or self.given or self.ideographic or self.phonetic)


@dataclass(frozen=True, slots=True)
class PatientSummary:
    patient_id: str
    issuer: str = ""  # (0010,0021) Issuer of Patient ID
    name: PersonName = field(default_factory=PersonName)
    birth_date: date | None = None
    sex: str = ""  # DICOM code: M, F, O or empty


@dataclass(frozen=True, slots=True)
class RTReferences:
    """What an RT object (RTSTRUCT, RTPLAN, RTDOSE) points at.

    ``series_uids`` and ``sop_instance_uids`` come from the RTSTRUCT chain
    (3006,0010) > (3006,0012) > (3006,0014) > (3006,0016); ``frame_of_reference_uids`` from
    (3006,0010)/(3006,0024) and the object's own (0020,0052).
    """

    frame_of_reference_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_instance_uids: tuple[str, ...] = ()
    referenced_structure_set_uids: tuple[str, ...] = ()  # RTPLAN (300C,0060)


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """Everything the adapter needs from one file, read with pixels left on disk.

    Study- and series-level attributes are repeated on every instance as they are in DICOM;
    ``adapter.dicom.group`` takes them from the first instance and reports disagreements.
    """

    path: str
    # instance level
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None
    # series level
    series_instance_uid: str
    series_number: int | None
    modality: str
    series_description: str
    series_started: datetime | None
    body_part_examined: str
    laterality: str
    frame_of_reference_uid: str
    protocol_name: str
    station_name: str
    contrast_agent: str  # (0018,0010) Contrast/Bolus Agent; empty means none recorded
    # study level
    study_instance_uid: str
    study_id: str
    accession_number: str
    accession_issuer: str
    study_description: str
    study_started: datetime | None
    referring_physician: PersonName
    procedure_codes: tuple[CodedValue, ...]
    requested_procedure_codes: tuple[CodedValue, ...]
    requested_procedure_id: str
    reason_for_request: str
    number_of_study_related_instances: int | None  # (0020,1208)
    source_ae_title: str  # (0002,0016) from file meta
    patient: PatientSummary
    rt: RTReferences | None  # set for RT objects only
    scheduled_step_id: str = ""  # (0040,0009) in (0040,0275) Request Attributes Sequence
    # Why the fast path handed this file to the pydicom path ("" = it did not); not part of
    # the header's value (equal headers from either path compare equal).
    deferred: str = field(default="", compare=False)


class RejectionKind(StrEnum):
    NOT_DICOM = "not-dicom"  # reported and skipped
    QUARANTINED = "quarantined"  # broken or hostile: kept aside with a reason


@dataclass(frozen=True, slots=True)
class Rejection:
    """A file that did not yield an :class:`InstanceHeader`. ``reason`` carries no patient data."""

    path: str
    kind: RejectionKind
    reason: str
    deferred: str = field(default="", compare=False)  # as InstanceHeader.deferred


@dataclass(frozen=True, slots=True)
class InstanceSummary:
    sop_instance_uid: str
    sop_class_uid: str
    instance_number: int | None


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    series_instance_uid: str
    series_number: int | None
    modality: str
    description: str
    started: datetime | None
    body_part_examined: str
    laterality: str
    frame_of_reference_uid: str
    protocol_name: str
    station_name: str
    contrast_agent: str
    instances: tuple[InstanceSummary, ...]
    rt: RTReferences | None  # union over the series' RT objects


@dataclass(frozen=True, slots=True)
class Completeness:
    complete: bool
    problems: tuple[str, ...] = ()
    declared: int | None = None
    """(0020,1208) when the instances agree on it: without it, a study cut off after its last
    whole series cannot be told from a complete one (``complete`` is then as far as known)."""


@dataclass(frozen=True, slots=True)
class DuplicateInstance:
    """A file whose SOP Instance UID was already read from another file of the study (the
    first by path is kept). ``same_content`` is False when the headers differ beyond the file's
    path and sending AE: then the study cannot be trusted and is held."""

    path: str
    sop_instance_uid: str
    same_content: bool


@dataclass(frozen=True, slots=True)
class StudySummary:
    study_instance_uid: str
    study_id: str
    accession_number: str
    accession_issuer: str
    description: str
    started: datetime | None
    referring_physician: PersonName
    procedure_codes: tuple[CodedValue, ...]
    requested_procedure_codes: tuple[CodedValue, ...]
    requested_procedure_id: str
    reason_for_request: str
    source_ae_titles: tuple[str, ...]
    patient: PatientSummary
    series: tuple[SeriesSummary, ...]
    completeness: Completeness
    source_paths: tuple[str, ...]
    scheduled_step_id: str = ""  # (0040,0009) in (0040,0275) Request Attributes Sequence
    # Every distinct patient the instances name (more than one: never mapped together).
    patients: tuple[PatientSummary, ...] = ()
    duplicates: tuple[DuplicateInstance, ...] = ()  # files dropped as repeated SOP instances

    @property
    def number_of_instances(self) -> int:
        return sum(len(s.instances) for s in self.series)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities in the study, in first-seen order, without duplicates."""
        return tuple(dict.fromkeys(s.modality for s in self.series if s.modality))
