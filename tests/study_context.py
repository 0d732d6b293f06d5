"""A study's review context from its stored payloads, for tests that have no store.

Before issue 8 the review workflow read the study this way, from the ingest Bundle (and earlier
review Bundles) in the outbox. The workflow now reads the store's study and review records
(``adapter.review.service.context_from_record``); the golden and note tests, which build Bundles
without a store, keep this reading of the fixtures.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from adapter.mapping.identifiers import DICOM_UID_SYSTEM, conditional_url
from adapter.mapping.review_bundle import PLACER_SYSTEM, REVIEW_SYSTEM, StudyContext
from adapter.mapping.review_task import REVIEW_TASK_SYSTEM, review_task_value
from adapter.review.service import KIND_REVIEW

JSON = dict[str, Any]


def _entries(payload: JSON) -> list[JSON]:
    return [e for e in payload.get("entry", []) if isinstance(e.get("resource"), dict)]


def _has_identifier(resource: JSON, system: str, value: str) -> bool:
    return any(
        i.get("system") == system and i.get("value") == value
        for i in resource.get("identifier", [])
    )


def context_from_payloads(
    study_uid: str, review_id: str, payloads: Iterable[tuple[str, JSON]]
) -> StudyContext | None:
    """The same, from ``(kind, payload)`` pairs in outbox order (also used by the tests)."""
    uid_value = f"urn:oid:{study_uid}"
    study: JSON | None = None
    task: JSON | None = None
    by_url: dict[str, JSON] = {}
    placers: dict[str, None] = {}
    for row_kind, payload in payloads:
        entries = _entries(payload)
        for entry in entries:
            resource = entry["resource"]
            kind = resource.get("resourceType")
            if kind == "ImagingStudy" and _has_identifier(resource, DICOM_UID_SYSTEM, uid_value):
                study = resource
                by_url = {str(e.get("fullUrl")): e["resource"] for e in entries}
            elif (
                kind == "Task"
                and _has_identifier(resource, REVIEW_TASK_SYSTEM, review_task_value(study_uid))
                and row_kind != KIND_REVIEW
            ):
                task = resource
        if row_kind == KIND_REVIEW and any(
            e["resource"].get("resourceType") == "DiagnosticReport"
            and _has_identifier(e["resource"], REVIEW_SYSTEM, review_id)
            for e in entries
        ):
            for e in entries:
                resource = e["resource"]
                if resource.get("resourceType") != "ServiceRequest":
                    continue
                for identifier in resource.get("identifier", []):
                    if identifier.get("system") != PLACER_SYSTEM:
                        continue
                    if resource.get("status") == "active":
                        placers[str(identifier["value"])] = None
                    else:
                        placers.pop(str(identifier["value"]), None)
    if study is None:
        return None
    subject = dict(study.get("subject", {}))
    patient_identifier: JSON | None = None
    reference = str(subject.get("reference", ""))
    if reference.startswith("urn:uuid:") and reference in by_url:
        identifiers = by_url[reference].get("identifier", [])
        if identifiers:
            patient_identifier = identifiers[0]
            subject = {
                "reference": conditional_url(
                    "Patient", patient_identifier["system"], patient_identifier["value"]
                )
            }
    elif reference.startswith("Patient?identifier="):
        system, _, value = reference.removeprefix("Patient?identifier=").partition("|")
        patient_identifier = {"system": system, "value": value}
    accession = next(
        (
            str(i.get("value", ""))
            for i in study.get("identifier", [])
            if any(c.get("code") == "ACSN" for c in i.get("type", {}).get("coding", []))
        ),
        "",
    )
    return StudyContext(study_uid, subject, patient_identifier, accession, task, tuple(placers))
