"""Audit records -> FHIR R4 AuditEvents following IHE Basic Audit Log Patterns (BALP).

Pure mapping: one :class:`~adapter.store.audit.AuditRecord` and the study's stored record in,
one AuditEvent out. The shape follows BALP's patterns for a client with no user ("Create/Update
... of a Resource with no user"): ``type`` is a RESTful operation for writes to the FHIR
server and the adapter's own code otherwise; the adapter is the requesting agent (DCM 110150
Application), an operator running a command is a second agent (human user) named as the audit
record names them; the patient (by identifier) and the study (by Study Instance UID) are the
entities. Codes come from ``mappings/audit-codes.yaml``.

``outcome`` uses the R4 codes: 0 success, 4 minor failure (held, refused by a peer), 8 serious
failure (a row that gave up).
"""

from __future__ import annotations

from typing import Any

from adapter.mapping.identifiers import full_url, patient_identifier, study_identifier
from adapter.store.audit import SYSTEM, AuditRecord
from adapter.store.studies import StudyRecord
from adapter.tables import Tables

JSON = dict[str, Any]
# audit event -> AuditEvent.action (R4 audit-event-action: C create, R read, U update, E execute)
_ACTIONS = {"ingest": "C", "queued": "C", "fhir-write": "U", "file-write": "C", "replay": "E",
            "retry": "E", "operator-command": "E", "identity-resolve": "U"}  # fmt: skip
_MINOR = ("held", "held-identity", "still-held", "failed-", "NACK", "rejected", "unknown-order")


def _outcome(record: AuditRecord) -> str:
    if record.outcome == "failed":
        return "8"
    if record.outcome.startswith(_MINOR):
        return "4"
    return "0"


def audit_event(
    record: AuditRecord, study: StudyRecord | None, tables: Tables, patient_system: str
) -> JSON:
    """One AuditEvent for one audit record. ``patient_system`` is the identifier system of the
    study's patient (from ``identifier-systems``), empty when unknown."""
    codes = tables.labels_table("audit-codes")
    rest = record.event == "fhir-write"
    event: JSON = {
        "resourceType": "AuditEvent",
        "type": codes.coding("type_rest" if rest else "type_local").as_fhir(),
        "action": _ACTIONS.get(record.event, "E"),
        "recorded": record.when,
        "outcome": _outcome(record),
        "outcomeDesc": f"{record.event}: {record.outcome}",
        "agent": [
            {
                "type": {"coding": [codes.coding("agent_application").as_fhir()]},
                "who": {"display": codes.text("source_name")},
                "requestor": record.actor == SYSTEM,
            }
        ],
        "source": {
            "observer": {"display": codes.text("source_name")},
            "type": [codes.coding("source_type").as_fhir()],
        },
        "entity": [],
    }
    if rest:
        event["subtype"] = [codes.coding("subtype_update").as_fhir()]
    if record.actor != SYSTEM:
        event["agent"].append(
            {
                "type": {"coding": [codes.coding("agent_operator").as_fhir()]},
                "who": {"display": record.actor},
                "requestor": True,
            }
        )
    if study is not None and study.patient_id and patient_system:
        event["entity"].append(
            {
                "what": {"identifier": patient_identifier(study.patient_id, patient_system)},
                "role": codes.coding("role_patient").as_fhir(),
            }
        )
    if record.study_uid:
        event["entity"].append(
            {
                "what": {"type": "ImagingStudy", "identifier": study_identifier(record.study_uid)},
                "role": codes.coding("role_resource").as_fhir(),
                "description": record.detail[:1000] or record.event,
            }
        )
    if not event["entity"]:
        del event["entity"]
    return event


def audit_bundle(events: list[tuple[AuditRecord, JSON]]) -> JSON:
    """A ``collection`` Bundle of AuditEvents (an export, e.g. for an ATNA repository); each
    entry's fullUrl is a stable ``urn:uuid`` of its audit record."""
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": full_url("AuditEvent", f"audit:{r.id}:{r.at}"), "resource": event}
            for r, event in events
        ],
    }
