"""One oncologist review -> one FHIR transaction Bundle (+ HL7 cancel requests). Pure.

Entries (at most 8: Medplum's limit for transactions with conditional operations):

1. DiagnosticReport, by conditional update on ``urn:rtplan:review|<review_id>``: the documented
   review. Version 1 is ``final`` (``partial`` when not all images were reviewed); a later
   version ``amended``: the same resource, a new version. Codes never say more than the
   oncologist did: a complete review without findings is coded "no abnormality detected"; each
   finding of a complete, standing review is a contained Observation whose value is
   "Suspected" (the finding is the Observation's code); a partial review or a withdrawn
   concern carries no code at all, only text.
2. The oncologist-review Task, by conditional update on its identifier: ``completed`` with the
   report as output, or ``in-progress`` when not all images were reviewed.
3. On a new concern: the radiologist-review ServiceRequest and the radiology Task, by
   conditional *create* on the placer order number, so a resubmission never resets what
   radiology has done. The placer order number is derived from the review id and the set of
   findings: resubmitting gives the same number; a new, different finding gives a new request.
4. On an amendment of a request that exists (same findings, new urgency or text) and on a
   withdrawal: a FHIR ``PATCH`` (JSON Patch) of the ServiceRequest and the radiology Task on
   their identifiers that changes only what the new version changes (priority, body site, due
   date, an appended note; status, ``statusReason`` and a note for a withdrawal). Authored
   date, identifiers, earlier notes and what radiology recorded stay. The FHIR deliverer
   applies the patch as a read-modify-write with ``If-Match`` (``adapter/fhir/patches.py``).
   A withdrawal also yields an ``hl7-cancel`` request for each revoked order (ORC-1 CA).

Nothing here does I/O or reads the clock: what the servers or the outbox know about the study
arrives as a :class:`StudyContext`.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from adapter.errors import MappingError
from adapter.mapping.identifiers import (
    DICOM_UID_SYSTEM,
    V2_0203,
    conditional_url,
    full_url,
    token,
)
from adapter.mapping.review_input import Finding, ReviewInput
from adapter.mapping.review_task import REVIEW_TASK_SYSTEM, review_task_value
from adapter.tables import Tables, concept

JSON = dict[str, Any]
REVIEW_SYSTEM = "urn:rtplan:review"
PLACER_SYSTEM = "urn:rtplan:placer-order"
RADIOLOGY_TASK_SYSTEM = "urn:rtplan:radiology-task"
MAX_ENTRIES = 8
JSON_PATCH = "application/json-patch+json"


@dataclass(frozen=True, slots=True)
class StudyContext:
    """What is known about the reviewed study (from the outbox or the FHIR server)."""

    study_uid: str
    patient: JSON  # the Reference to use for subject / for
    patient_identifier: JSON | None = None
    accession: str = ""
    review_task: JSON | None = None  # the Task opened at ingest, to update
    previous_placers: tuple[str, ...] = ()  # active requests of earlier versions of this review
    # when each earlier request was opened (ISO date-time): an amendment's due date counts from
    # the request, not from the amendment
    request_opened: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class ReviewOptions:
    owner_type: str = "Organization"
    owner_system: str = "urn:rtplan:team"
    owner_value: str = "rt-oncology"
    owner_display: str = "Radiotherapy oncology team"
    radiology_system: str = "urn:rtplan:organization"
    radiology_value: str = "radiology"
    radiology_display: str = "Clinical radiology"
    radiology_due_days: int = 14
    radiology_due_days_urgent: int = 2


@dataclass(frozen=True, slots=True)
class ReviewOutput:
    bundle: JSON
    placer: str = ""  # the order this review (still) requests, "" when none
    hl7_cancels: tuple[JSON, ...] = field(default_factory=tuple)


def finding_key(finding: Finding) -> str:
    if finding.id is not None:
        return f"id:{finding.id}"
    description = " ".join(finding.description.casefold().split())
    return f"{finding.category}|{finding.body_site or ''}|{description}"


def placer_order_number(review: ReviewInput) -> str:
    """``RT`` + 16 hex digits: fits HL7 v2.3.1 EI (22 characters) for ORC-2."""
    keys = sorted({finding_key(f) for f in review.findings})
    text = "\n".join([review.review_id, *keys])
    return "RT" + hashlib.sha256(text.encode()).hexdigest()[:16].upper()


def study_reference(study_uid: str) -> JSON:
    return {"reference": conditional_url("ImagingStudy", DICOM_UID_SYSTEM, f"urn:oid:{study_uid}")}


def _reviewer(review: ReviewInput) -> JSON:
    identifier = review.reviewer.identifier
    return {
        "type": "Practitioner",
        "identifier": {"system": identifier.system, "value": identifier.value},
        "display": review.reviewer.name,
    }


def _when(review: ReviewInput) -> str:
    return review.reviewed_at.isoformat(timespec="seconds")


def _finding_line(finding: Finding, tables: Tables) -> str:
    site = ""
    if finding.body_site:
        coding = tables.conceptmap("body-site").first(finding.body_site)
        site = f" ({coding.display if coding else finding.body_site})"
    label = tables.conceptmap("findings").lookup(finding.category)[0].display
    # "Suspected": the oncologist raises a concern on a planning scan, never a diagnosis.
    return f"Suspected {label}{site}, urgency {finding.urgency}: {finding.description}"


def conclusion(review: ReviewInput, tables: Tables) -> str:
    lines = []
    if review.outcome == "no-significant-finding":
        lines.append("Planning scan reviewed by the oncologist: no significant finding.")
    else:
        lines.append("Planning scan reviewed by the oncologist: unexpected finding(s).")
        lines += [f"{i}. {_finding_line(f, tables)}" for i, f in enumerate(review.findings, 1)]
    if not review.all_images_reviewed:
        lines.append("NOT ALL IMAGES WERE REVIEWED: the review is incomplete.")
    if review.concern_withdrawn:
        lines.append("The concern raised earlier is withdrawn; the radiologist review is revoked.")
    elif review.radiologist_review_requested:
        lines.append("Radiologist review of the planning scan requested.")
    informed = "was" if review.patient_informed_planning_only else "was NOT recorded as"
    lines.append(f"Patient {informed} informed that the scan is for planning, not diagnosis.")
    if review.notes:
        lines.append(f"Notes: {review.notes}")
    return "\n".join(lines)


def _report(review: ReviewInput, ctx: StudyContext, tables: Tables) -> JSON:
    labels = tables.labels_table("review-codes")
    if not review.all_images_reviewed:
        status = "partial"
    else:
        status = "final" if review.version == 1 else "amended"
    report: JSON = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": REVIEW_SYSTEM, "value": review.review_id}],
        "status": status,
        "category": [{"coding": [labels.coding("report_category").as_fhir()]}],
        "code": concept(
            [labels.coding("report_code")], "Oncologist review of radiotherapy planning scan"
        ),
        "subject": ctx.patient,
        "effectiveDateTime": _when(review),
        "issued": _when(review),
        "performer": [_reviewer(review)],
        "resultsInterpreter": [_reviewer(review)],
        "imagingStudy": [study_reference(ctx.study_uid)],
        "conclusion": conclusion(review, tables),
    }
    # A partial look never says "nothing found", and a withdrawn concern is no diagnosis: no
    # code at all, the conclusion text says what happened.
    if not review.all_images_reviewed or review.concern_withdrawn:
        return report
    if not review.findings:
        nad = tables.conceptmap("findings").lookup("no-significant-finding")
        report["conclusionCode"] = [concept(nad, nad[0].display)]
        return report
    observations = [
        _finding_observation(review, finding, index, status, tables, ctx.patient)
        for index, finding in enumerate(review.findings, 1)
    ]
    report["contained"] = observations
    report["result"] = [{"reference": f"#{o['id']}"} for o in observations]
    return report


def _finding_observation(
    review: ReviewInput, finding: Finding, index: int, status: str, tables: Tables, patient: JSON
) -> JSON:
    """One finding as the oncologist stated it: a *suspected* finding on a planning scan.

    ``code`` is the finding (e.g. SNOMED 128462008), ``valueCodeableConcept`` is SNOMED
    415684004 "Suspected" (the certainty-of-presence pattern): a reader of codes alone sees
    "metastasis: suspected", never a confirmed disorder. See docs/mappings.md.
    """
    labels = tables.labels_table("review-codes")
    codes = tables.conceptmap("findings").lookup(finding.category)
    suspected = labels.coding("finding_suspected")
    observation: JSON = {
        "resourceType": "Observation",
        "id": f"finding-{index}",
        "status": "final" if status == "final" else "amended",
        "category": [{"coding": [labels.coding("finding_category").as_fhir()]}],
        "code": concept(codes, codes[0].display),
        "subject": patient,
        "effectiveDateTime": _when(review),
        "performer": [_reviewer(review)],
        "valueCodeableConcept": concept([suspected], suspected.display),
        "note": [{"text": f"Urgency {finding.urgency}: {finding.description}"}],
    }
    if finding.body_site:
        site = tables.conceptmap("body-site").first(finding.body_site)
        if site is not None:
            observation["bodySite"] = concept([site], site.display)
    return observation


def _review_task(
    review: ReviewInput, ctx: StudyContext, tables: Tables, options: ReviewOptions, report: str
) -> JSON:
    task: JSON
    if ctx.review_task is not None:
        task = copy.deepcopy(ctx.review_task)
        task.pop("id", None)
        task.pop("meta", None)
        task.pop("text", None)
    else:  # the study was mapped before review Tasks existed: open and close one now
        labels = tables.labels_table("review-codes")
        task = {
            "resourceType": "Task",
            "intent": "order",
            "priority": "routine",
            "code": concept(
                [labels.coding("review_task_code")], "Oncologist review of planning scan"
            ),
            "description": labels.text("review_task_description"),
            "owner": {
                "type": options.owner_type,
                "identifier": {"system": options.owner_system, "value": options.owner_value},
                "display": options.owner_display,
            },
        }
    task["identifier"] = [{"system": REVIEW_TASK_SYSTEM, "value": review_task_value(ctx.study_uid)}]
    task["focus"] = study_reference(ctx.study_uid)
    task["for"] = ctx.patient
    task["lastModified"] = _when(review)
    output = {"type": {"text": "Oncologist review report"}, "valueReference": {"reference": report}}
    task["output"] = [output]
    notes = [n for n in task.get("note", []) if not str(n.get("text", "")).startswith("Review ")]
    if review.all_images_reviewed:
        task["status"] = "completed"
        task["businessStatus"] = {"text": "review documented"}
        task["executionPeriod"] = {"end": _when(review)}
        notes.append({"text": f"Review {review.review_id} version {review.version} documented."})
    else:
        task["status"] = "in-progress"
        task["businessStatus"] = {"text": "review incomplete: not all images reviewed"}
        task.pop("executionPeriod", None)
        notes.append(
            {
                "text": f"Review {review.review_id} version {review.version}: not all images "
                "were reviewed; the review stays open until a complete review is submitted."
            }
        )
    task["note"] = notes
    return task


def _radiology_owner(options: ReviewOptions) -> JSON:
    return {
        "type": "Organization",
        "identifier": {"system": options.radiology_system, "value": options.radiology_value},
        "display": options.radiology_display,
    }


def _service_request(
    review: ReviewInput,
    ctx: StudyContext,
    tables: Tables,
    options: ReviewOptions,
    placer: str,
    report: str,
    status: str,
) -> JSON:
    labels = tables.labels_table("review-codes")
    code = labels.coding("service_request_code")
    request: JSON = {
        "resourceType": "ServiceRequest",
        "identifier": [
            {
                "type": {
                    "coding": [{"system": V2_0203, "code": "PLAC", "display": "Placer Identifier"}]
                },
                "system": PLACER_SYSTEM,
                "value": placer,
            }
        ],
        "requisition": {"system": REVIEW_SYSTEM, "value": review.review_id},
        "status": status,
        "intent": "order",
        "priority": review.highest_urgency,
        "code": concept([code], code.display),
        "subject": ctx.patient,
        "authoredOn": _when(review),
        "requester": _reviewer(review),
        "performer": [_radiology_owner(options)],
        "reasonReference": [{"reference": report}],
        "supportingInfo": [study_reference(ctx.study_uid)],
    }
    body_sites = _body_sites(review, tables)
    if body_sites:
        request["bodySite"] = body_sites
    request["note"] = _request_notes(review, tables, "")
    return request


def _body_sites(review: ReviewInput, tables: Tables) -> list[JSON]:
    sites = tables.conceptmap("body-site")
    body = [sites.first(f.body_site) for f in review.findings if f.body_site]
    unique = {(c.system, c.code): c for c in body if c is not None}
    return [concept([c], c.display) for c in unique.values()]


def _request_notes(review: ReviewInput, tables: Tables, prefix: str) -> list[JSON]:
    """One dated note per finding (``prefix`` marks an amendment's notes)."""
    lines = [_finding_line(f, tables) for f in review.findings] or [
        "Radiologist review requested without a specific finding."
    ]
    return [{"time": _when(review), "text": f"{prefix}{line}"} for line in lines]


def _due(review: ReviewInput, options: ReviewOptions, opened: str) -> str:
    """Due date of the radiology Task: from when the request was opened, by this version's
    highest urgency (so raising the urgency brings it forward, a text correction does not
    push it back)."""
    days = (
        options.radiology_due_days
        if review.highest_urgency == "routine"
        else options.radiology_due_days_urgent
    )
    start = datetime.fromisoformat(opened) if opened else review.reviewed_at
    return (start + timedelta(days=days)).isoformat(timespec="seconds")


def _radiology_task(
    review: ReviewInput,
    ctx: StudyContext,
    tables: Tables,
    options: ReviewOptions,
    placer: str,
    request: str,
) -> JSON:
    labels = tables.labels_table("review-codes")
    return {
        "resourceType": "Task",
        "identifier": [{"system": RADIOLOGY_TASK_SYSTEM, "value": placer}],
        "basedOn": [{"reference": request}],
        "status": "requested",
        "intent": "order",
        "priority": review.highest_urgency,
        "code": concept([labels.coding("radiology_task_code")], "Radiologist review"),
        "description": labels.text("radiology_task_description"),
        "focus": {"reference": request},
        "for": ctx.patient,
        "authoredOn": _when(review),
        "requester": _reviewer(review),
        "owner": _radiology_owner(options),
        # A fulfilment Task with a focus: restriction.period.end is its due date in R4 and R5
        # (R5 tsk-1 allows restriction only there).
        "restriction": {"period": {"end": _due(review, options, "")}},
        "note": [
            {
                "time": _when(review),
                "text": f"Requested by the oncologist's review, version {review.version}.",
            }
        ],
    }


def _hl7_cancel(review: ReviewInput, ctx: StudyContext, placer: str) -> JSON:
    return {
        "order_control": "CA",
        "placer_order_number": {"system": PLACER_SYSTEM, "value": placer},
        "study_instance_uid": ctx.study_uid,
        "accession_number": ctx.accession,
        "patient_identifier": ctx.patient_identifier,
        "review_id": review.review_id,
        "review_version": review.version,
        "reason": "concern withdrawn by the oncologist",
    }


def review_bundle(
    review: ReviewInput, ctx: StudyContext, tables: Tables, options: ReviewOptions
) -> ReviewOutput:
    """Build the transaction Bundle for one validated review (see the module docstring)."""
    report_url = full_url("DiagnosticReport", f"{REVIEW_SYSTEM}|{review.review_id}")
    entries: list[JSON] = [
        {
            "fullUrl": report_url,
            "resource": _report(review, ctx, tables),
            "request": {
                "method": "PUT",
                "url": conditional_url("DiagnosticReport", REVIEW_SYSTEM, review.review_id),
            },
        },
        {
            "fullUrl": full_url("Task", f"{REVIEW_TASK_SYSTEM}|{review_task_value(ctx.study_uid)}"),
            "resource": _review_task(review, ctx, tables, options, report_url),
            "request": {
                "method": "PUT",
                "url": conditional_url(
                    "Task", REVIEW_TASK_SYSTEM, review_task_value(ctx.study_uid)
                ),
            },
        },
    ]
    current = placer_order_number(review) if review.radiologist_review_requested else ""
    cancels: list[JSON] = []
    if review.concern_withdrawn:
        placers = list(dict.fromkeys([*ctx.previous_placers, *([current] if current else [])]))
        for placer in placers:
            entries += _withdraw_entries(review, placer)
            cancels.append(_hl7_cancel(review, ctx, placer))
        current = ""
    elif current and current in ctx.previous_placers:
        entries += _amend_entries(review, tables, options, current, ctx)
    elif current:
        entries += _create_entries(review, ctx, tables, options, current, report_url)
    if len(entries) > MAX_ENTRIES:
        raise MappingError(f"a review Bundle would have {len(entries)} entries (max {MAX_ENTRIES})")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return ReviewOutput(bundle, current, tuple(cancels))


def _create_entries(
    review: ReviewInput,
    ctx: StudyContext,
    tables: Tables,
    options: ReviewOptions,
    placer: str,
    report: str,
) -> list[JSON]:
    """A new request: conditional creates, so a resend never resets radiology's progress."""
    request_url = full_url("ServiceRequest", f"{PLACER_SYSTEM}|{placer}")
    request = _service_request(review, ctx, tables, options, placer, report, "active")
    task = _radiology_task(review, ctx, tables, options, placer, request_url)
    out = []
    for url, resource, system in (
        (request_url, request, PLACER_SYSTEM),
        (full_url("Task", f"{RADIOLOGY_TASK_SYSTEM}|{placer}"), task, RADIOLOGY_TASK_SYSTEM),
    ):
        kind = resource["resourceType"]
        write = {
            "method": "POST",
            "url": kind,
            "ifNoneExist": f"identifier={token(system, placer)}",
        }
        out.append({"fullUrl": url, "resource": resource, "request": write})
    return out


def patch_entry(kind: str, system: str, value: str, operations: list[JSON]) -> JSON:
    """A transaction entry that JSON-Patches the resource with this business identifier."""
    data = json.dumps(operations, ensure_ascii=False, separators=(",", ":")).encode()
    return {
        "fullUrl": full_url(kind, f"{system}|{value}"),
        "resource": {
            "resourceType": "Binary",
            "contentType": JSON_PATCH,
            "data": base64.b64encode(data).decode("ascii"),
        },
        "request": {"method": "PATCH", "url": conditional_url(kind, system, value)},
    }


def _amend_entries(
    review: ReviewInput, tables: Tables, options: ReviewOptions, placer: str, ctx: StudyContext
) -> list[JSON]:
    """The same request, amended: new priority, body sites and due date, the corrected
    finding lines appended as dated notes. Nothing else changes."""
    prefix = f"Amended by review version {review.version}: "
    request_ops: list[JSON] = [
        {"op": "replace", "path": "/priority", "value": review.highest_urgency}
    ]
    body_sites = _body_sites(review, tables)
    if body_sites:
        request_ops.append({"op": "add", "path": "/bodySite", "value": body_sites})
    request_ops += [
        {"op": "add", "path": "/note/-", "value": note}
        for note in _request_notes(review, tables, prefix)
    ]
    due = _due(review, options, ctx.request_opened.get(placer, ""))
    task_ops: list[JSON] = [
        {"op": "replace", "path": "/priority", "value": review.highest_urgency},
        {"op": "add", "path": "/restriction", "value": {"period": {"end": due}}},
        {
            "op": "add",
            "path": "/note/-",
            "value": {
                "time": _when(review),
                "text": f"{prefix}priority {review.highest_urgency}, due {due}.",
            },
        },
    ]
    return [
        patch_entry("ServiceRequest", PLACER_SYSTEM, placer, request_ops),
        patch_entry("Task", RADIOLOGY_TASK_SYSTEM, placer, task_ops),
    ]


def _withdraw_entries(review: ReviewInput, placer: str) -> list[JSON]:
    """A state change, not a rewrite: status, statusReason (Task; R4 ServiceRequest has
    none) and a dated note. Authored date, identifiers, earlier notes and whatever radiology
    recorded (owner, businessStatus, output) stay."""
    reason = f"Concern withdrawn by the oncologist (review version {review.version})."
    note = {"time": _when(review), "text": reason}
    request_ops: list[JSON] = [
        {"op": "replace", "path": "/status", "value": "revoked"},
        {"op": "add", "path": "/note/-", "value": note},
    ]
    task_ops: list[JSON] = [
        {"op": "replace", "path": "/status", "value": "cancelled"},
        {"op": "add", "path": "/statusReason", "value": {"text": reason}},
        {"op": "add", "path": "/note/-", "value": note},
    ]
    return [
        patch_entry("ServiceRequest", PLACER_SYSTEM, placer, request_ops),
        patch_entry("Task", RADIOLOGY_TASK_SYSTEM, placer, task_ops),
    ]
