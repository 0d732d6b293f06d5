"""Assemble the FHIR transaction Bundle for one study.

One Bundle per study. The ImagingStudy is written by *conditional update* on its Study
Instance UID identifier, so ingesting the same study again, or a series that arrives later,
updates the one resource instead of creating a second. The Endpoint is written the same way on
its address; the Patient, when the adapter may create it, by conditional create. A planning
study also gets its oncologist-review Task, by conditional create on the Task's business
identifier, so re-ingest never opens a second one (``adapter.mapping.review_task``).
"""

from __future__ import annotations

from typing import Any, Literal

from adapter.classify import Classification
from adapter.dicom.models import StudySummary
from adapter.mapping.identifiers import (
    DICOM_UID_SYSTEM,
    URI_SYSTEM,
    conditional_url,
    full_url,
    token,
)
from adapter.mapping.imaging_study import (
    MappingOptions,
    map_endpoint,
    map_imaging_study,
    map_patient,
    patient_ref,
)
from adapter.mapping.narrative import with_narratives
from adapter.mapping.r5 import to_r5
from adapter.mapping.review_task import (
    REVIEW_TASK_SYSTEM,
    PriorImaging,
    ReviewTaskOptions,
    map_review_task,
    review_task_value,
)
from adapter.tables import Tables

JSON = dict[str, Any]


def study_bundle(
    study: StudySummary,
    classification: Classification,
    tables: Tables,
    options: MappingOptions,
    version: Literal["R4", "R5"] = "R4",
    *,
    review: ReviewTaskOptions | None = None,
    prior: PriorImaging | None = None,
) -> JSON:
    """Build the transaction Bundle (Patient?, Endpoint?, ImagingStudy, review Task) for one study.

    The review Task is added for a planning study only (``review`` defaults to the built-in
    options; ``prior`` to "check not performed").

    Raises:
        MappingError: the study cannot be mapped (for example it has no Patient ID).
        UnmappedCode: a table whose policy is ``error`` has no row for a code.
    """
    entries: list[JSON] = []
    ref = patient_ref(study, tables, options)
    if options.create_patient:
        identifier = ref.identifier
        entries.append(
            {
                "fullUrl": ref.reference["reference"],
                "resource": map_patient(study, ref),
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": f"identifier={token(identifier['system'], identifier['value'])}",
                },
            }
        )
    endpoint_ref: JSON | None = None
    if options.wado_rs_base_url:
        endpoint_url = full_url("Endpoint", options.wado_rs_base_url)
        endpoint_ref = {"reference": endpoint_url}
        entries.append(
            {
                "fullUrl": endpoint_url,
                "resource": map_endpoint(options),
                "request": {
                    "method": "PUT",
                    "url": conditional_url("Endpoint", URI_SYSTEM, options.wado_rs_base_url),
                },
            }
        )
    imaging_study = map_imaging_study(study, classification, tables, ref.reference, endpoint_ref)
    study_url = full_url("ImagingStudy", study.study_instance_uid)
    if classification.is_planning:
        # Before the ImagingStudy, which stays the last entry (tools and tests rely on it);
        # the forward urn:uuid reference is resolved by the server across the transaction.
        task_value = review_task_value(study.study_instance_uid)
        entries.append(
            {
                "fullUrl": full_url("Task", f"{REVIEW_TASK_SYSTEM}|{task_value}"),
                "resource": map_review_task(
                    study,
                    tables,
                    review or ReviewTaskOptions(),
                    subject=ref.reference,
                    focus={"reference": study_url},
                    prior=prior or PriorImaging(),
                ),
                "request": {
                    "method": "POST",
                    "url": "Task",
                    "ifNoneExist": f"identifier={token(REVIEW_TASK_SYSTEM, task_value)}",
                },
            }
        )
    entries.append(
        {
            "fullUrl": study_url,
            "resource": imaging_study,
            "request": {
                "method": "PUT",
                "url": conditional_url(
                    "ImagingStudy", DICOM_UID_SYSTEM, f"urn:oid:{study.study_instance_uid}"
                ),
            },
        }
    )
    if version == "R5":
        for entry in entries:
            entry["resource"] = to_r5(entry["resource"])
    return with_narratives({"resourceType": "Bundle", "type": "transaction", "entry": entries})


def review_task_of(bundle: JSON) -> JSON | None:
    """The oncologist-review Task a study Bundle built by :func:`study_bundle` opens, or None
    (not a planning study). For the study record, from the Bundle as built, never a stored one."""
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        if resource.get("resourceType") == "Task" and any(
            i.get("system") == REVIEW_TASK_SYSTEM for i in resource.get("identifier", [])
        ):
            return dict(resource)
    return None


def study_header_of(bundle: JSON) -> tuple[str, str, tuple[str, ...]]:
    """The ImagingStudy's ``started``, ``description`` and modality codes, as a study Bundle
    built by :func:`study_bundle` maps them (R4 Coding or R5 CodeableConcept), for the review
    note's header in the study record: from the Bundle as built, never a stored one."""
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        if resource.get("resourceType") == "ImagingStudy":
            codes = [
                str(m.get("code") or (m.get("coding") or [{}])[0].get("code") or "")
                for m in resource.get("modality", [])
            ]
            return (
                str(resource.get("started", "")),
                str(resource.get("description", "")),
                tuple(c for c in codes if c),
            )
    return "", "", ()
