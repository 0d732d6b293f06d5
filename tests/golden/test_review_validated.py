"""Every review fixture's output, checked by HAPI's own validator (hapi-fhir-validation 8.8.0
with the R4/R5 core packages, offline): the Bundles as written, the ServiceRequest and
radiology Task as they read after an amendment's or withdrawal's patch is applied, and the R5
study Bundle (its review Task must pass tsk-1).

Allowed: errors only about codes of code-system versions the core packages predate (listed in
docs/mappings.md, "What the validator cannot check"). Nothing else.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapter.fhir.patches import apply_idempotent, operations
from tests.golden.test_golden import EXPECTED, REVIEW_CASES, review_output
from tests.peers.fhir_validator_fixture import FhirResult, Validate

pytestmark = pytest.mark.peer

# DICOM codes newer than the DCM code system inside the R4 core package (docs/mappings.md).
PREDATED = ("Unknown code 'http://dicom.nema.org/resources/ontology/DCM#128198'",)


def errors(result: FhirResult) -> list[str]:
    return [e for e in result.errors if not any(p in e for p in PREDATED)]


def patched_resources() -> list[dict[str, Any]]:
    """The v1 ServiceRequest and radiology Task after the amendment's patches, then after the
    withdrawal's, applied as the deliverer does (adapter/fhir/patches.py)."""
    first = review_output("review-concern")
    state = {
        e["request"]["ifNoneExist"]: {**e["resource"], "id": "x"}
        for e in first["entry"]
        if e["request"]["method"] == "POST"
    }
    snapshots = []
    for case in ("review-concern-amended", "review-concern-withdrawn"):
        document = review_output(case)
        for entry in document.get("bundle", document)["entry"]:
            query = entry["request"]["url"].partition("?")[2]
            if entry["request"]["method"] == "PATCH" and query in state:
                state[query] = apply_idempotent(state[query], operations(entry))
                snapshots.append(state[query])
    assert len(snapshots) == 4  # amendment, then withdrawal: each ServiceRequest + Task
    return snapshots


def test_review_outputs_are_valid_r4(fhir_validate: Validate) -> None:
    bundles = [review_output(case) for case in sorted(REVIEW_CASES)]
    resources = [d.get("bundle", d) for d in bundles] + patched_resources()
    results = fhir_validate(resources, "R4")
    problems = {i: errors(r) for i, r in enumerate(results) if errors(r)}
    assert problems == {}


def test_patched_requests_keep_history() -> None:
    request_v2, task_v2, request_v3, task_v3 = patched_resources()
    assert (request_v2["status"], request_v2["priority"]) == ("active", "asap")
    assert (request_v3["status"], request_v3["priority"]) == ("revoked", "asap")
    assert request_v3["authoredOn"] == request_v2["authoredOn"]
    assert request_v3["note"][: len(request_v2["note"])] == request_v2["note"]
    assert (task_v3["status"], task_v3["priority"]) == ("cancelled", "asap")
    assert task_v3["statusReason"]["text"].startswith("Concern withdrawn")
    assert task_v3["restriction"] == task_v2["restriction"]


def test_r5_study_bundle_passes_tsk_1(fhir_validate: Validate) -> None:
    bundle = json.loads((EXPECTED / "planning-ct-r5.bundle.json").read_text())
    (result,) = fhir_validate([bundle], "R5")
    assert errors(result) == [], result.errors
    task = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Task")
    assert "restriction" not in task and task["requestedPeriod"]["end"]
