"""From a review that raises (or withdraws) a concern to HL7 order rows for the outbox.

Pure: the review, its FHIR output and what the adapter knows of the study in, row payloads
out. Each payload carries the :class:`OrderRequest`, the receiver profile's name, and the
FHIR rows to store when the RIS acknowledges the order (the radiology Task becomes
``received`` with businessStatus "acknowledged by RIS"), already rewritten so that every
reference is a conditional reference that resolves on its own, outside the review's Bundle.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from adapter.fhir.transaction_payload import KIND_TRANSACTION
from adapter.hl7.deliverer import HL7
from adapter.hl7.model import (
    OrderPatient,
    OrderRequest,
    PatientIdentifier,
    PersonNameGroup,
    Provider,
)
from adapter.hl7.order_payload import KIND_CANCEL, KIND_CHANGE, KIND_ORDER, OrderPayload
from adapter.mapping.narrative import with_narratives
from adapter.mapping.review_bundle import (
    PLACER_SYSTEM,
    RADIOLOGY_TASK_SYSTEM,
    ReviewOutput,
    StudyContext,
)
from adapter.mapping.review_input import ReviewInput
from adapter.store.outbox import NewRow
from adapter.store.studies import StudyRecord
from adapter.tables import Tables

JSON = dict[str, Any]
KIND_TASK_UPDATE = KIND_TRANSACTION


DICOM_SEX = {"M": "M", "F": "F", "O": "O"}  # DICOM (0010,0040) -> HL7 table 0001
#: DICOM PN component groups in order (PS3.5 6.2.1) -> HL7 table 4000 name representation.
PN_GROUPS = ("A", "I", "P")


@dataclass(frozen=True, slots=True)
class StudyFacts:
    """Demographics and study details for PID/OBR, from the study's record (its DICOM
    headers, kept by the store)."""

    family: str = ""
    given: str = ""
    birth_date: str = ""
    sex: str = ""
    modality: str = ""
    names: tuple[PersonNameGroup, ...] = ()
    patient_id: str = ""
    patient_issuer: str = ""
    accession: str = ""
    requested_procedure_id: str = ""
    scheduled_step_id: str = ""


def name_groups(pn: str) -> tuple[PersonNameGroup, ...]:
    """The non-empty groups of a DICOM PN string (``Yamada^Tarou=山田^太郎=やまだ^たろう``)."""
    groups = []
    for representation, group in zip(PN_GROUPS, pn.split("="), strict=False):
        parts = [*group.split("^"), "", "", "", "", ""][:5]
        family, given, middle, prefix, suffix = (p.strip() for p in parts)
        if any((family, given, middle, prefix, suffix)):
            groups.append(PersonNameGroup(family, given, middle, prefix, suffix, representation))
    return tuple(groups)


def study_facts(record: StudyRecord | None) -> StudyFacts:
    """What the study's record (its DICOM headers, kept by the store) says about the patient,
    the procedure and the modality; empty when the store has no record of the study (the
    order then carries only what the review and the FHIR server say)."""
    if record is None:
        return StudyFacts()
    return StudyFacts(
        birth_date=record.birth_date,
        sex=DICOM_SEX.get(record.sex.upper(), "U" if record.sex else ""),
        modality=record.modality,
        names=name_groups(record.patient_name),
        patient_id=record.patient_id,
        patient_issuer=record.patient_issuer,
        accession=record.accession,
        requested_procedure_id=record.requested_procedure_id,
        scheduled_step_id=record.scheduled_step_id,
    )


def _issuer(system: str, tables: Tables, *, guess: bool = True) -> str:
    """The assigning authority (DICOM issuer) whose identifier system is ``system``, from the
    ``identifier-systems`` table; without a row, the system's last path part (patients) or
    nothing (``guess=False``: a provider's authority is never invented)."""
    table = tables.conceptmap("identifier-systems")
    for source, targets in table.rows.items():
        if any(t.code == system for t in targets):
            return source
    return system.rsplit("/", 1)[-1][:20] if guess else ""


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
    authority = facts.patient_issuer or _issuer(system, tables)
    patient = OrderPatient(
        identifiers=(PatientIdentifier(value, authority),) if value else (),
        family=facts.family,
        given=facts.given,
        birth_date=facts.birth_date,
        sex=facts.sex,
        names=facts.names,
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
    reviewer = review.reviewer
    return OrderRequest(
        control="CA" if control == "CA" else "NW",
        placer_order_number=placer,
        placer_namespace=namespace,
        patient=patient,
        study_instance_uid=ctx.study_uid,
        accession_number=facts.accession or ctx.accession,
        requested_procedure_id=facts.requested_procedure_id,
        scheduled_procedure_step_id=facts.scheduled_step_id,
        modality=facts.modality,
        priority=review.highest_urgency,
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
        # Structured when the review gives it; else the display name whole in XCN-2 (a split
        # on spaces turns "Dr Anna Oncologist" into given "Dr Anna", 山田 花子 into family 花子).
        ordering_provider=Provider(
            reviewer.identifier.value,
            family=reviewer.family or ("" if reviewer.given else reviewer.name),
            given=reviewer.given or "",
            prefix=reviewer.prefix or "",
            assigning_authority=_issuer(reviewer.identifier.system, tables, guess=False),
        ),
        requested_at=review.reviewed_at.isoformat(),
        review_id=review.review_id,
        extra_notes=(review.notes,) if review.notes.strip() and control == "NW" else (),
        control_reason="Concern withdrawn by the oncologist" if control == "CA" else "",
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
    already_ordered: Mapping[str, JSON],
    updates: str = "change",
) -> list[tuple[str, OrderPayload]]:
    """``(kind, payload)`` for each HL7 row this review needs: a new order for a new concern;
    for an amendment that changes the urgency or the text of one already ordered, a change
    (ORC-1 XO, ``updates="change"``) or a cancel of the order as sent plus a new order under a
    new placer number (``updates="cancel-replace"``); a cancel for each withdrawn request.

    ``already_ordered`` maps each ServiceRequest's placer number to the last order sent for it
    (the store's order records, ``Outbox.last_orders``); a replacement's own placer number is
    ``<placer>-<version>``.
    """
    rows: list[tuple[str, OrderPayload]] = []
    withdrawn = review.concern_withdrawn
    sent = already_ordered.get(output.placer) if output.placer else None
    if sent is not None and not withdrawn:
        order = _order("NW", output.placer, review, ctx, facts, tables, output.bundle, namespace)
        if _changed(sent, order) and updates == "cancel-replace":
            why = "Replaced by an amended order"
            rows.append(_cancel_row(sent, profile, why, output.placer))
            placer = f"{output.placer}-{review.version}"
            renumbered = replace(order, placer_order_number=placer)
            rows.append(_new_row(renumbered, output, ctx, fhir_targets, profile))
        elif _changed(sent, order):
            change = _change(order, sent)
            payload = OrderPayload(profile, change, request_placer=output.placer)
            rows.append((KIND_CHANGE, payload))
    if output.placer and sent is None and not withdrawn:
        order = _order("NW", output.placer, review, ctx, facts, tables, output.bundle, namespace)
        rows.append(_new_row(order, output, ctx, fhir_targets, profile))
    for cancel in output.hl7_cancels:
        placer = str(cancel["placer_order_number"]["value"])
        previous = already_ordered.get(placer)
        if previous is not None:  # the cancel names the order as sent: number and priority
            rows.append(_cancel_row(previous, profile, CANCEL_REASON, placer))
            continue
        order = _order("CA", placer, review, ctx, facts, tables, output.bundle, namespace)
        rows.append((KIND_CANCEL, OrderPayload(profile, order.to_json())))
    return rows


CANCEL_REASON = "Concern withdrawn by the oncologist"


def _cancel_row(
    sent: JSON, profile: str, why: str, request_placer: str
) -> tuple[str, OrderPayload]:
    cancelled = {**sent, "control": "CA", "control_reason": why, "extra_notes": []}
    cancelled["concern_text"] = (
        "RT planning scan - concern withdrawn by the oncologist"
        if why == CANCEL_REASON
        else "RT planning scan - order replaced by an amended order"
    )
    return KIND_CANCEL, OrderPayload(profile, cancelled, request_placer=request_placer)


def _new_row(
    order: OrderRequest,
    output: ReviewOutput,
    ctx: StudyContext,
    fhir_targets: list[tuple[str, str]],
    profile: str,
) -> tuple[str, OrderPayload]:
    task = _find(output.bundle, "Task", RADIOLOGY_TASK_SYSTEM, output.placer)
    on_ack: list[NewRow] = []
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
        update = with_narratives(_task_received(task, output.bundle))
        on_ack = [
            NewRow(
                d,
                t,
                f"study:{ctx.study_uid}",
                KIND_TASK_UPDATE,
                f"RadiologyTask-{order.placer_order_number}-received",
                update,
            )
            for d, t in fhir_targets
        ]
    payload = OrderPayload(
        profile, order.to_json(), tuple(on_ack), fhir, request_placer=output.placer
    )
    return KIND_ORDER, payload


def _changed(sent: JSON, order: OrderRequest) -> bool:
    return bool(
        sent.get("priority") != order.priority
        or sent.get("concern_text") != order.concern_text
        or tuple(sent.get("extra_notes", ())) != order.extra_notes
    )


def _change(order: OrderRequest, sent: JSON) -> JSON:
    data = order.to_json()
    data["control"] = "XO"
    data["control_reason"] = "Amended by the oncologist"
    return data


__all__ = [
    "HL7",
    "KIND_CANCEL",
    "KIND_CHANGE",
    "KIND_ORDER",
    "StudyFacts",
    "order_payloads",
    "study_facts",
]
