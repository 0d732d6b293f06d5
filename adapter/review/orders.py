"""From a review that raises (or withdraws) a concern to HL7 order rows for the outbox.

Pure: the review, its FHIR output and what the adapter knows of the study in, row payloads
out. Each payload carries the :class:`OrderRequest`, the receiver profile's name, and the
FHIR rows to store when the RIS acknowledges the order (the radiology Task becomes
``received`` with businessStatus "acknowledged by RIS"), already rewritten so that every
reference is a conditional reference that resolves on its own, outside the review's Bundle.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from adapter.hl7.deliverer import HL7, KIND_CANCEL, KIND_ORDER
from adapter.hl7.model import OrderPatient, OrderRequest, PatientIdentifier, Provider
from adapter.mapping.review_bundle import (
    PLACER_SYSTEM,
    RADIOLOGY_TASK_SYSTEM,
    ReviewOutput,
    StudyContext,
)
from adapter.mapping.tables import Tables
from adapter.review.model import ReviewInput

JSON = dict[str, Any]
KIND_TASK_UPDATE = "fhir-transaction"
HL7_SEX = {"male": "M", "female": "F", "other": "O", "unknown": "U"}
IMAGE_MODALITIES = ("CT", "MR", "PT")


@dataclass(frozen=True, slots=True)
class StudyFacts:
    """Demographics and study details for PID/OBR, taken from the study's ingest Bundle."""

    family: str = ""
    given: str = ""
    birth_date: str = ""
    sex: str = ""
    modality: str = ""


def study_facts(payloads: Iterable[JSON], study_uid: str) -> StudyFacts:
    """What the ingest Bundle(s) of the study say about the patient and the modality."""
    facts = StudyFacts()
    uid_value = f"urn:oid:{study_uid}"
    for payload in payloads:
        for entry in payload.get("entry", []):
            resource = entry.get("resource", {})
            kind = resource.get("resourceType")
            if kind == "Patient":
                name = (resource.get("name") or [{}])[0]
                facts = StudyFacts(
                    family=str(name.get("family", "")),
                    given=" ".join(name.get("given", [])),
                    birth_date=str(resource.get("birthDate", "")),
                    sex=HL7_SEX.get(str(resource.get("gender", "")), ""),
                    modality=facts.modality,
                )
            elif kind == "ImagingStudy" and any(
                i.get("value") == uid_value for i in resource.get("identifier", [])
            ):
                codes = [str(m.get("code", "")) for m in resource.get("modality", [])]
                modality = next((c for c in codes if c in IMAGE_MODALITIES), "")
                facts = StudyFacts(facts.family, facts.given, facts.birth_date, facts.sex, modality)
    return facts


def _issuer(system: str, tables: Tables) -> str:
    """The DICOM issuer (assigning authority) whose identifier system is ``system``."""
    table = tables.conceptmap("identifier-systems")
    for source, targets in table.rows.items():
        if any(t.code == system for t in targets):
            return source
    return system.rsplit("/", 1)[-1][:20]


def _conditional(entry: JSON) -> str:
    request = entry.get("request", {})
    url = str(request.get("url", ""))
    if "?" in url:
        return url
    if request.get("ifNoneExist"):
        return f"{url}?{request['ifNoneExist']}"
    return ""


def _standalone(resource: JSON, bundle: JSON) -> JSON:
    """A copy of ``resource`` whose urn:uuid references point at conditional references."""
    urls = {str(e.get("fullUrl")): _conditional(e) for e in bundle.get("entry", [])}

    def fix(value: Any) -> Any:
        if isinstance(value, dict):
            out = {k: fix(v) for k, v in value.items()}
            ref = out.get("reference")
            if isinstance(ref, str) and ref in urls and urls[ref]:
                out["reference"] = urls[ref]
            return out
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    return dict(fix(copy.deepcopy(resource)))


def _find(bundle: JSON, kind: str, system: str, value: str) -> JSON | None:
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        if resource.get("resourceType") == kind and any(
            i.get("system") == system and i.get("value") == value
            for i in resource.get("identifier", [])
        ):
            return dict(resource)
    return None


def _task_received(task: JSON, bundle: JSON) -> JSON:
    updated = _standalone(task, bundle)
    updated["status"] = "received"
    updated["businessStatus"] = {"text": "acknowledged by RIS"}
    placer = next(i["value"] for i in task["identifier"] if i["system"] == RADIOLOGY_TASK_SYSTEM)
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": updated,
                "request": {
                    "method": "PUT",
                    "url": f"Task?identifier={RADIOLOGY_TASK_SYSTEM}|{placer}",
                },
            }
        ],
    }


def _order(
    control: str,
    placer: str,
    review: ReviewInput,
    ctx: StudyContext,
    facts: StudyFacts,
    tables: Tables,
    bundle: JSON,
    namespace: str,
) -> OrderRequest:
    identifier = ctx.patient_identifier or {}
    system, value = str(identifier.get("system", "")), str(identifier.get("value", ""))
    patient = OrderPatient(
        identifiers=(PatientIdentifier(value, _issuer(system, tables)),) if value else (),
        family=facts.family,
        given=facts.given,
        birth_date=facts.birth_date,
        sex=facts.sex,
    )
    request = _find(bundle, "ServiceRequest", PLACER_SYSTEM, placer) or {}
    service = ((request.get("code") or {}).get("coding") or [{}])[0]
    concern = "; ".join(f"{f.category}: {f.description} ({f.urgency})" for f in review.findings)
    first_code: JSON = {}
    report: JSON = next(
        (
            e["resource"]
            for e in bundle.get("entry", [])
            if e.get("resource", {}).get("resourceType") == "DiagnosticReport"
        ),
        {},
    )
    for concept in report.get("conclusionCode", []):
        first_code = (concept.get("coding") or [{}])[0]
        break
    name = review.reviewer.name.split()
    return OrderRequest(
        control="CA" if control == "CA" else "NW",
        placer_order_number=placer,
        placer_namespace=namespace,
        patient=patient,
        study_instance_uid=ctx.study_uid,
        accession_number=ctx.accession,
        modality=facts.modality,
        priority=review.highest_urgency if control == "NW" else "routine",
        service_code=str(service.get("code", "RTPLANREVIEW")),
        service_text=str(
            service.get("display", "Radiologist review of radiotherapy planning scan")
        ),
        reason_code=str(first_code.get("code", "")),
        reason_text=str(first_code.get("display", "")),
        reason_system="SCT" if first_code.get("system") == "http://snomed.info/sct" else "L",
        concern_text=(
            f"RT planning scan - radiologist review requested: {concern}"
            if control == "NW"
            else "RT planning scan - concern withdrawn by the oncologist"
        ),
        ordering_provider=Provider(
            review.reviewer.identifier.value,
            family=name[-1] if name else "",
            given=" ".join(name[:-1]),
        ),
        requested_at=review.reviewed_at.isoformat(),
        review_id=review.review_id,
    )


def order_payloads(
    review: ReviewInput,
    output: ReviewOutput,
    ctx: StudyContext,
    facts: StudyFacts,
    tables: Tables,
    *,
    profile: str,
    namespace: str,
    fhir_targets: list[tuple[str, str]],
    already_ordered: set[str],
) -> list[tuple[str, JSON]]:
    """``(kind, payload)`` for each HL7 row this review needs: a new order for a new concern
    (not for one already ordered), a cancel for each withdrawn request."""
    rows: list[tuple[str, JSON]] = []
    if output.placer and output.placer not in already_ordered and not review.concern_withdrawn:
        order = _order("NW", output.placer, review, ctx, facts, tables, output.bundle, namespace)
        task = _find(output.bundle, "Task", RADIOLOGY_TASK_SYSTEM, output.placer)
        on_ack = []
        fhir: JSON = {
            "subject": ctx.patient,
            "imaging_study": {
                "reference": f"ImagingStudy?identifier=urn:dicom:uid|urn:oid:{ctx.study_uid}"
            },
            "service_request": f"ServiceRequest?identifier={PLACER_SYSTEM}|{output.placer}",
            "radiology_task": _standalone(task, output.bundle) if task is not None else None,
            "targets": [list(t) for t in fhir_targets],
        }
        if task is not None:
            update = _task_received(task, output.bundle)
            on_ack = [
                {
                    "destination": d,
                    "target": t,
                    "key": f"study:{ctx.study_uid}",
                    "kind": KIND_TASK_UPDATE,
                    "label": f"RadiologyTask-{order.placer_order_number}-received",
                    "payload": update,
                }
                for d, t in fhir_targets
            ]
        payload = {"profile": profile, "order": order.to_json(), "on_ack": on_ack, "fhir": fhir}
        rows.append((KIND_ORDER, payload))
    for cancel in output.hl7_cancels:
        placer = str(cancel["placer_order_number"]["value"])
        order = _order("CA", placer, review, ctx, facts, tables, output.bundle, namespace)
        rows.append((KIND_CANCEL, {"profile": profile, "order": order.to_json(), "on_ack": []}))
    return rows


__all__ = ["HL7", "StudyFacts", "order_payloads", "study_facts"]
