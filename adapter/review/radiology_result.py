"""Radiology's answers to FHIR: the radiologist's report, and changes to the radiology Task.

Pure: an inbound message (already parsed) and the FHIR context stored with the order in, a
transaction Bundle out. Every reference is conditional (by business identifier), so the
Bundle stands on its own.

Deliberately left unmapped: the radiologist as performer (ORU OBR-32 is not reliably filled by
RIS systems; the report's author stays in its text), observation-level results (the report is
narrative), and presentedForm (no PDF comes over HL7 v2 here).
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from adapter.hl7.inbound import InboundMessage
from adapter.mapping.identifiers import full_url
from adapter.mapping.narrative import with_narratives
from adapter.mapping.review_bundle import RADIOLOGY_TASK_SYSTEM
from adapter.tables import Tables

JSON = dict[str, Any]
RADIOLOGY_REPORT_SYSTEM = "urn:rtplan:radiology-report"
# OBR-25 result status (HL7 table 0123) -> DiagnosticReport.status
REPORT_STATUS = {
    "F": "final",
    "C": "corrected",
    "P": "preliminary",
    "R": "preliminary",
    "S": "partial",
    "I": "registered",
    "X": "cancelled",
    "A": "partial",
}
# ORC-1 order control of an order response (table 0119) -> Task.status
RESPONSE_TASK_STATUS = {
    "OK": "accepted",
    "SC": "in-progress",
    "IP": "in-progress",
    "UA": "rejected",
    "UC": "rejected",
    "UX": "rejected",
    "DE": "rejected",
    "CR": "cancelled",
    "OC": "cancelled",
    "DC": "cancelled",
}


def hl7_time(value: str) -> str | None:
    """An HL7 TS (YYYYMMDD[HHMM[SS]][+/-ZZZZ]) as a FHIR dateTime, or None if unreadable.
    A time without a zone is returned as a date only: FHIR times need an offset."""
    digits = value.split("^", 1)[0].strip()
    zone = ""
    for sign in ("+", "-"):
        if sign in digits[8:]:
            digits, _, zone = digits.partition(sign)
            zone = sign + zone
            break
    digits = digits.split(".", 1)[0]
    try:
        if len(digits) >= 12 and zone:
            fmt = "%Y%m%d%H%M%S" if len(digits) >= 14 else "%Y%m%d%H%M"
            when = datetime.strptime(digits[: 14 if len(digits) >= 14 else 12] + zone, fmt + "%z")
            return when.isoformat()
        if len(digits) >= 8:
            return datetime.strptime(digits[:8], "%Y%m%d").date().isoformat()
    except ValueError:
        return None
    return None


def task_update(
    task: JSON,
    *,
    status: str | None = None,
    business_status: str = "",
    priority: str | None = None,
    output: list[JSON] | None = None,
) -> JSON:
    """A copy of the stored radiology Task with its status, businessStatus, priority changed."""
    updated = copy.deepcopy(task)
    if status is not None:
        updated["status"] = status
    if business_status:
        updated["businessStatus"] = {"text": business_status}
    if priority is not None:
        updated["priority"] = priority
    if output is not None:
        updated["output"] = output
    return updated


def task_entry(task: JSON, placer: str) -> JSON:
    return {
        "resource": task,
        "request": {"method": "PUT", "url": f"Task?identifier={RADIOLOGY_TASK_SYSTEM}|{placer}"},
    }


def transaction(*entries: JSON) -> JSON:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}
    return with_narratives(bundle)


def result_bundle(
    message: InboundMessage, fhir: JSON, tables: Tables, received_at: datetime
) -> JSON:
    """ORU^R01 -> the radiologist's DiagnosticReport and the radiology Task completed.

    Args:
        message: the parsed ORU.
        fhir: the context stored with the order (subject, imaging_study, service_request,
            radiology_task).
        tables: for the report's code and category.
        received_at: when the adapter stored the message (``issued``).
    """
    codes = tables.labels_table("review-codes")
    placer = message.placer_order_number
    key = f"{RADIOLOGY_REPORT_SYSTEM}|{placer}"
    status = REPORT_STATUS.get(message.result_status.upper(), "final")
    report: JSON = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": RADIOLOGY_REPORT_SYSTEM, "value": placer}],
        "basedOn": [{"reference": fhir["service_request"]}],
        "status": status,
        "category": [{"coding": [codes.coding("radiologist_report_category").as_fhir()]}],
        "code": {"coding": [codes.coding("radiologist_report_code").as_fhir()]},
        "subject": fhir["subject"],
    }
    effective = hl7_time(message.observation_time)
    if effective:
        report["effectiveDateTime"] = effective
    report["issued"] = received_at.isoformat()
    report["imagingStudy"] = [fhir["imaging_study"]]
    if message.report_text.strip():
        report["conclusion"] = message.report_text
    report_url = full_url("DiagnosticReport", key)
    entries = [
        {
            "fullUrl": report_url,
            "resource": report,
            "request": {
                "method": "PUT",
                "url": f"DiagnosticReport?identifier={RADIOLOGY_REPORT_SYSTEM}|{placer}",
            },
        }
    ]
    task = fhir.get("radiology_task")
    if task is not None:
        done = status in ("final", "corrected")
        updated = task_update(
            task,
            status="completed" if done else "in-progress",
            business_status="radiologist report received"
            if done
            else "preliminary report received",
            output=[
                {
                    "type": {"text": "Radiologist report"},
                    "valueReference": {"reference": report_url},
                }
            ],
        )
        entries.append(task_entry(updated, placer))
    return transaction(*entries)


def response_bundle(message: InboundMessage, fhir: JSON) -> JSON | None:
    """ORR^O02 / ORG^O20 / ORI^O24 -> the radiology Task's new status, or None if the order
    control says nothing about the Task."""
    status = RESPONSE_TASK_STATUS.get(message.order_control.upper())
    task = fhir.get("radiology_task")
    if status is None or task is None:
        return None
    updated = task_update(
        task, status=status, business_status=f"RIS order response {message.order_control}"
    )
    return transaction(task_entry(updated, message.placer_order_number))
