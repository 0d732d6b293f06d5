"""StudySummary + Classification -> FHIR R4 ImagingStudy, Patient and Endpoint (plain dicts).

Pure: no I/O, no clock, no globals. Codes come from the tables in ``mappings/``.

Deliberately left unmapped, and why:

- ``encounter``, ``location``, ``basedOn``: DICOM headers do not identify the FHIR Encounter,
  Location or ServiceRequest; the EHR links them.
- ``interpreter``: planning scans are not reported; that is the point of the oncologist review.
- ``procedureReference``, ``reasonReference``: no Procedure / Condition resource is known here.
- ``series.performer``, ``series.specimen``, ``instance.title``: not needed for review and
  absent from planning CT headers.
- ``id`` / ``meta.lastUpdated``: the server assigns them (the study is written by conditional
  update on its identifier).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapter.classify import IMAGE_MODALITIES, Classification
from adapter.dicom.models import PersonName, SeriesSummary, StudySummary
from adapter.errors import MappingError
from adapter.mapping.identifiers import (
    URI_SYSTEM,
    accession_identifier,
    conditional_url,
    full_url,
    patient_identifier,
    study_identifier,
)
from adapter.tables import Coding, Tables, confirmed

JSON = dict[str, Any]
ENDPOINT_CONNECTION = "http://terminology.hl7.org/CodeSystem/endpoint-connection-type"
GENDER = {"M": "male", "F": "female", "O": "other"}


@dataclass(frozen=True, slots=True)
class MappingOptions:
    create_patient: bool = False
    wado_rs_base_url: str = ""
    archive_name: str = "Planning archive"


@dataclass(frozen=True, slots=True)
class PatientRef:
    """How the study points at its patient: the identifier, and the Reference to use."""

    identifier: JSON
    reference: JSON


def patient_system(study: StudySummary, tables: Tables) -> str:
    coding = tables.conceptmap("identifier-systems").first(study.patient.issuer)
    if coding is None:  # only if an analyst set the policy to omit
        raise MappingError("identifier-systems: no system for the Issuer of Patient ID")
    return coding.code


def patient_ref(study: StudySummary, tables: Tables, options: MappingOptions) -> PatientRef:
    """Raises MappingError when the study has no Patient ID (0010,0020)."""
    if not study.patient.patient_id.strip():
        raise MappingError(
            "Patient ID (0010,0020) is empty: the study cannot be linked to a patient"
        )
    system = patient_system(study, tables)
    identifier = patient_identifier(study.patient.patient_id, system)
    if options.create_patient:
        reference: JSON = {"reference": full_url("Patient", _patient_key(identifier))}
    else:
        # A conditional reference: the EHR owns the Patient and the server resolves it to a
        # literal reference while processing the transaction (FHIR R4 http.html#trules).
        reference = {"reference": conditional_url("Patient", system, study.patient.patient_id)}
    return PatientRef(identifier, reference)


def _patient_key(identifier: JSON) -> str:
    return f"{identifier['system']}|{identifier['value']}"


def map_patient(study: StudySummary, ref: PatientRef) -> JSON:
    """A minimal Patient, written only when ``create_patient`` is set."""
    patient: JSON = {"resourceType": "Patient", "identifier": [ref.identifier]}
    names = _human_names(study.patient.name)
    if names:
        patient["name"] = names
    gender = GENDER.get(study.patient.sex.upper(), "unknown" if study.patient.sex else None)
    if gender:
        patient["gender"] = gender
    if study.patient.birth_date is not None:
        patient["birthDate"] = study.patient.birth_date.isoformat()
    return patient


def _human_names(name: PersonName) -> list[JSON]:
    names: list[JSON] = []
    if name.family or name.given:
        alphabetic: JSON = {"use": "official"}
        if name.family:
            alphabetic["family"] = name.family
        if name.given:
            alphabetic["given"] = list(name.given)
        if name.prefix:
            alphabetic["prefix"] = [name.prefix]
        if name.suffix:
            alphabetic["suffix"] = [name.suffix]
        names.append(alphabetic)
    # Ideographic and phonetic groups (ISO 2022 PN) are kept as further names.
    for group in (name.ideographic, name.phonetic):
        if group:
            family, _, given = group.partition("^")
            extra: JSON = {"use": "official", "text": " ".join(p for p in (family, given) if p)}
            if family:
                extra["family"] = family
            if given:
                extra["given"] = [g for g in given.split("^") if g][:1]
            names.append(extra)
    return names


def human_names(name: PersonName) -> list[JSON]:
    """The FHIR HumanNames of a DICOM person name, as :func:`map_patient` writes them."""
    return _human_names(name)


def display_name(name: PersonName) -> str:
    parts = [name.prefix, *name.given, name.family, name.suffix]
    return " ".join(p for p in parts if p) or name.ideographic.replace("^", " ")


def map_endpoint(options: MappingOptions) -> JSON:
    url = options.wado_rs_base_url
    return {
        "resourceType": "Endpoint",
        "identifier": [{"system": URI_SYSTEM, "value": url}],
        "status": "active",
        "connectionType": {
            "system": ENDPOINT_CONNECTION,
            "code": "dicom-wado-rs",
            "display": "DICOM WADO-RS",
        },
        "name": options.archive_name,
        "payloadType": [{"text": "DICOM"}],
        "payloadMimeType": ["application/dicom"],
        "address": url,
    }


def map_imaging_study(
    study: StudySummary,
    classification: Classification,
    tables: Tables,
    subject: JSON,
    endpoint: JSON | None,
) -> JSON:
    """Map one complete study to an R4 ImagingStudy.

    Args:
        study: the grouped, complete study.
        classification: planning evidence; planning labels are added only when it says so.
        tables: the loaded ``mappings/``.
        subject: the Reference to the Patient (see :func:`patient_ref`).
        endpoint: a Reference to the archive Endpoint, or None.
    """
    modality = tables.conceptmap("modality")
    resource: JSON = {"resourceType": "ImagingStudy"}
    if classification.is_planning:
        resource["meta"] = {"tag": [tables.labels_table("planning-labels").coding("tag").as_fhir()]}
    identifiers: list[JSON] = [study_identifier(study.study_instance_uid)]
    if study.accession_number:
        system = tables.conceptmap("identifier-systems").first(study.accession_issuer)
        if system is not None:
            identifiers.append(accession_identifier(study.accession_number, system.code))
    resource["identifier"] = identifiers
    resource["status"] = "available"
    resource["modality"] = _unique(
        [c.as_fhir() for m in study.modalities for c in modality.lookup(m)[:1]]
    )
    resource["subject"] = subject
    if study.started is not None:
        resource["started"] = study.started.isoformat()
    if endpoint is not None:
        resource["endpoint"] = [endpoint]
    if not study.referring_physician.is_empty:
        resource["referrer"] = {"display": display_name(study.referring_physician)}
    resource["numberOfSeries"] = len(study.series)
    resource["numberOfInstances"] = study.number_of_instances
    if classification.is_planning:
        resource.update(_planning_labels(study, classification, tables))
    elif study.description:
        resource["description"] = study.description
    resource["series"] = [_series(s, tables) for s in study.series]
    return resource


def _planning_labels(study: StudySummary, classification: Classification, tables: Tables) -> JSON:
    labels = tables.labels_table("planning-labels")
    procedures = tables.conceptmap("procedure-codes")
    keys: list[str] = []
    for s in study.series:
        planning = s.series_instance_uid in classification.planning_series_uids
        if planning and s.modality in IMAGE_MODALITIES:
            keys.append(s.modality + ("+contrast" if s.contrast_agent else ""))
    concepts = [_concept(procedures.lookup(k)) for k in dict.fromkeys(keys)]
    prefix = labels.text("description")
    description = f"{prefix}: {study.description}" if study.description else prefix
    labelled: JSON = {}
    if any(concepts):
        labelled["procedureCode"] = [c for c in concepts if c]
    reason = labels.coding("reason")
    labelled["reasonCode"] = [{"coding": [reason.as_fhir()], "text": reason.display}]
    labelled["description"] = description
    labelled["note"] = [
        {"text": labels.text("review_note")},
        {"text": f"{labels.text('evidence_note')}: {classification.summary}."},
    ]
    return labelled


def _concept(codings: tuple[Coding, ...]) -> JSON:
    # Unconfirmed codes (verify: true) are not sent; a modality left with none gets no
    # procedure code, like an unmapped one (the planning reason code and label still apply).
    codings = confirmed(codings)
    if not codings:
        return {}
    return {"coding": [c.as_fhir() for c in codings], "text": codings[0].display}


def _series(series: SeriesSummary, tables: Tables) -> JSON:
    modality = tables.conceptmap("modality").lookup(series.modality)
    out: JSON = {"uid": series.series_instance_uid}
    if series.series_number is not None:
        out["number"] = series.series_number
    out["modality"] = modality[0].as_fhir()
    if series.description:
        out["description"] = series.description
    out["numberOfInstances"] = len(series.instances)
    body_site = tables.conceptmap("body-site").first(series.body_part_examined.upper())
    if series.body_part_examined and body_site is not None:
        out["bodySite"] = body_site.as_fhir()
    laterality = tables.conceptmap("laterality").first(series.laterality.upper())
    if series.laterality and laterality is not None:
        out["laterality"] = laterality.as_fhir()
    if series.started is not None:
        out["started"] = series.started.isoformat()
    instances = []
    for inst in series.instances:
        item: JSON = {
            "uid": inst.sop_instance_uid,
            "sopClass": {"system": URI_SYSTEM, "code": f"urn:oid:{inst.sop_class_uid}"},
        }
        if inst.instance_number is not None:
            item["number"] = inst.instance_number
        instances.append(item)
    out["instance"] = instances
    return out


def _unique(codings: list[JSON]) -> list[JSON]:
    seen: dict[tuple[str, str], JSON] = {}
    for c in codings:
        seen.setdefault((c["system"], c["code"]), c)
    return list(seen.values())
