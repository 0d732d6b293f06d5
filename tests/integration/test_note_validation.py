"""The note's DocumentReferences, the review Bundles that carry it and every narrative, checked
by the offline HAPI FHIR validator (R4): no error, and no resource without a narrative (dom-6)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.note_support import case_steps, ingest_bundle, load_review, run_reviews
from tests.peers.fhir_validator_fixture import Validate

pytestmark = pytest.mark.peer
# The R4 core package's DCM CodeSystem (2015) lacks the correct codes DCM 128198 and 128201
# (standards.md §9): expected, documented in docs/mappings.md, not a fault of the note.
DCM_UNKNOWN = ("DCM#128198'", "DCM#128201'")


def _known_dcm(error: str) -> bool:
    return "Unknown code 'http://dicom.nema.org/resources/ontology/" in error and error.endswith(
        DCM_UNKNOWN
    )


def test_note_resources_and_narratives_are_valid_r4(fhir_validate: Validate) -> None:
    steps = case_steps("concern-withdrawn") + case_steps("incomplete")
    steps += run_reviews([load_review("concern")], outputs="document-reference")
    steps += run_reviews([load_review("concern")], outputs="mdm")
    bundles: list[dict[str, Any]] = [ingest_bundle("charset-jp")]
    for step in steps:
        bundles.append(step.output.bundle)
        if step.note_bundle is not None:
            bundles.append(step.note_bundle)
    found = [e["resource"] for b in bundles for e in b["entry"]]
    assert {"DocumentReference", "DiagnosticReport", "Task", "ServiceRequest"} <= {
        r["resourceType"] for r in found
    }
    results = fhir_validate(found)
    errors = {
        f"{r['resourceType']}#{i}": [e for e in res.errors if not _known_dcm(e)]
        for i, (r, res) in enumerate(zip(found, results, strict=True))
    }
    assert {k: v for k, v in errors.items() if v} == {}
    dom6 = [w for res in results for w in res.warnings if "dom-6" in w]
    assert dom6 == []
