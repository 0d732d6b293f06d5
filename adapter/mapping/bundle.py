"""Assemble the FHIR transaction Bundle for one study.

One Bundle per study. The ImagingStudy is written by *conditional update* on its Study
Instance UID identifier, so ingesting the same study again, or a series that arrives later,
updates the one resource instead of creating a second. The Endpoint is written the same way on
its address; the Patient, when the adapter may create it, by conditional create.
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
from adapter.mapping.r5 import to_r5
from adapter.mapping.tables import Tables

JSON = dict[str, Any]


def study_bundle(
    study: StudySummary,
    classification: Classification,
    tables: Tables,
    options: MappingOptions,
    version: Literal["R4", "R5"] = "R4",
) -> JSON:
    """Build the transaction Bundle (Patient?, Endpoint?, ImagingStudy) for one study.

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
    entries.append(
        {
            "fullUrl": full_url("ImagingStudy", study.study_instance_uid),
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
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
