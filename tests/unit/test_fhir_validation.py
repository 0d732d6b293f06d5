"""The test-side FHIR R4 validator must reject known-bad resources.

These cases prove that ``tests/fhir_validation.py`` cannot silently pass
everything: each broken resource is rejected, and the check names which of
the two validators (official JSON schema, fhir.resources R4B) caught it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests import fhir_validation

assert_valid_r4 = fhir_validation.assert_valid_r4
validate_r4 = fhir_validation.validate_r4

STUDY_UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"


def imaging_study() -> dict[str, Any]:
    """A valid minimal R4 ImagingStudy."""
    return {
        "resourceType": "ImagingStudy",
        "status": "available",
        "subject": {"reference": "Patient/p1"},
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{STUDY_UID}"}],
    }


def task(**changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "authoredOn": "2024-03-01T10:15:00+01:00",
        "description": "Review planning CT",
    }
    resource.update(changes)
    return resource


def _by(problems: list[str], source: str) -> list[str]:
    return [p for p in problems if p.startswith(f"{source}:")]


def test_schema_is_the_official_r4_schema() -> None:
    assert fhir_validation.SCHEMA_PATH.is_file()
    defs = fhir_validation._definitions()
    assert len(defs) == 680
    assert {
        "ImagingStudy",
        "Task",
        "DiagnosticReport",
        "Bundle",
    } <= fhir_validation.resource_types()


def test_valid_minimal_imaging_study() -> None:
    assert validate_r4(imaging_study()) == []
    assert_valid_r4(imaging_study())


def test_valid_task() -> None:
    assert validate_r4(task()) == []


def test_unknown_element() -> None:
    study = imaging_study()
    study["planningNote"] = "not an R4 element"
    problems = validate_r4(study)
    assert any("planningNote" in p for p in _by(problems, "schema")), problems
    assert any("planningNote" in p for p in _by(problems, "fhir.resources")), problems


def test_unknown_nested_element() -> None:
    study = imaging_study()
    study["subject"]["referenze"] = "Patient/p1"
    problems = validate_r4(study)
    assert any("referenze" in p for p in _by(problems, "schema")), problems


def test_bad_code_task_status() -> None:
    problems = validate_r4(task(status="bogus"))
    # fhir.resources does not check required bindings: the schema enum must catch it
    assert any("Task.status" in p and "bogus" in p for p in _by(problems, "schema")), problems


def test_bad_datetime() -> None:
    problems = validate_r4(task(authoredOn="2024-13-45"))
    assert any("Task.authoredOn" in p for p in _by(problems, "schema")), problems
    assert any("Task.authoredOn" in p for p in _by(problems, "fhir.resources")), problems


def test_empty_string() -> None:
    problems = validate_r4(task(description=""))
    assert any("Task.description" in p for p in _by(problems, "schema")), problems


def test_missing_required_element() -> None:
    resource = task()
    del resource["status"]
    problems = validate_r4(resource)
    # the JSON schema has no "required" lists: the R4B model must catch it
    assert any("status" in p for p in _by(problems, "fhir.resources")), problems


def test_bad_dicom_uid() -> None:
    study = imaging_study()
    study["series"] = [{"uid": "not a uid!", "modality": {"code": "CT"}}]
    assert validate_r4(study)


def test_unknown_and_missing_resource_type() -> None:
    assert validate_r4({"resourceType": "PlanningScan"}) == [
        "resource: unknown R4 resourceType 'PlanningScan'"
    ]
    assert validate_r4({"status": "available"}) == ["resource: missing resourceType"]


def test_bundle_entries_are_validated_individually() -> None:
    good: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": imaging_study(), "request": {"method": "POST", "url": "ImagingStudy"}},
            {"resource": task(), "request": {"method": "POST", "url": "Task"}},
        ],
    }
    assert validate_r4(good) == []

    bad = copy.deepcopy(good)
    bad["entry"][1]["resource"]["status"] = "bogus"
    problems = validate_r4(bad)
    assert problems, problems
    assert all("entry[1].resource(Task)" in p for p in problems), problems
    assert any("bogus" in p for p in problems)


def test_assert_valid_r4_lists_problems() -> None:
    with pytest.raises(AssertionError) as info:
        assert_valid_r4(task(status="bogus", authoredOn="2024-13-45"))
    text = str(info.value)
    assert "Task.status" in text
    assert "Task.authoredOn" in text


def test_missing_schema_is_an_error_not_a_skip(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(fhir_validation, "SCHEMA_PATH", tmp_path / "absent.json")
    with pytest.raises(fhir_validation.FhirSchemaMissingError, match="npm ci --prefix"):
        fhir_validation._definitions.__wrapped__()
