"""Reshape the R4 resources this adapter writes into their R5 form (standards.md §3a).

Only the elements the adapter emits are handled; everything else is the same in both
versions. The input is not modified.
"""

from __future__ import annotations

import copy
from typing import Any

JSON = dict[str, Any]


def to_r5(resource: JSON) -> JSON:
    kind = resource.get("resourceType")
    if kind == "ImagingStudy":
        return _imaging_study(resource)
    if kind == "Endpoint":
        return _endpoint(resource)
    if kind == "Task":
        return _task(resource)
    return copy.deepcopy(resource)


TASK_CODE_SYSTEM = "http://hl7.org/fhir/CodeSystem/task-code"


def _task(r4: JSON) -> JSON:
    """R5 keeps ``restriction`` for fulfilment Tasks with a focus (invariant tsk-1); any other
    Task's due date goes to ``requestedPeriod`` ("when completion of the task is desired"),
    the R5 element that R4 lacks (R4 has only ``restriction.period``)."""
    r5 = copy.deepcopy(r4)
    fulfil = any(
        c.get("system") == TASK_CODE_SYSTEM and c.get("code") == "fulfill"
        for c in r5.get("code", {}).get("coding", [])
    )
    restriction = r5.get("restriction")
    if restriction is not None and not (fulfil and "focus" in r5):
        period = r5.pop("restriction").get("period")
        if period:
            r5["requestedPeriod"] = period
    return r5


def _cc(coding: JSON) -> JSON:
    return {"coding": [coding]}


def _imaging_study(r4: JSON) -> JSON:
    r5 = copy.deepcopy(r4)
    if "modality" in r5:
        r5["modality"] = [_cc(c) for c in r5["modality"]]
    if "procedureCode" in r5:
        r5["procedure"] = [{"concept": c} for c in r5.pop("procedureCode")]
    if "reasonCode" in r5:
        r5["reason"] = [{"concept": c} for c in r5.pop("reasonCode")]
    for series in r5.get("series", []):
        series["modality"] = _cc(series["modality"])
        if "bodySite" in series:
            series["bodySite"] = {"concept": _cc(series["bodySite"])}
        if "laterality" in series:
            series["laterality"] = _cc(series["laterality"])
    return r5


def _endpoint(r4: JSON) -> JSON:
    r5 = copy.deepcopy(r4)
    r5["connectionType"] = [_cc(r5["connectionType"])]
    payload: JSON = {}
    if "payloadType" in r5:
        payload["type"] = r5.pop("payloadType")
    if "payloadMimeType" in r5:
        payload["mimeType"] = r5.pop("payloadMimeType")
    if payload:
        r5["payload"] = [payload]
    return r5
