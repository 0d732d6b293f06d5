"""The offline HAPI FHIR validator peer tells valid from invalid resources, in R4 and R5."""

from __future__ import annotations

import pytest

from tests.peers.fhir_validator_fixture import Validate

pytestmark = pytest.mark.peer

VALID_TASK = {
    "resourceType": "Task",
    "status": "requested",
    "intent": "order",
    "text": {
        "status": "generated",
        "div": '<div xmlns="http://www.w3.org/1999/xhtml">Review the planning scan</div>',
    },
}


def test_valid_and_invalid_resources_r4(fhir_validate: Validate) -> None:
    wrong_status = {**VALID_TASK, "status": "not-a-task-status"}
    unknown_element = {**VALID_TASK, "colour": "blue"}
    valid, bad_code, bad_element = fhir_validate([VALID_TASK, wrong_status, unknown_element])
    assert valid.ok, valid.errors
    assert not bad_code.ok
    assert any("Task.status" in e for e in bad_code.errors)
    assert not bad_element.ok
    assert any("colour" in e for e in bad_element.errors)


def test_r5_invariant_checked(fhir_validate: Validate) -> None:
    # tsk-1 (R5): restriction only for fulfilment tasks with a focus.
    restricted = {
        **VALID_TASK,
        "intent": "order",
        "restriction": {"period": {"end": "2026-12-01T00:00:00Z"}},
    }
    (r5,) = fhir_validate([restricted], version="R5")
    assert not r5.ok
    assert any("tsk-1" in e for e in r5.errors)
    (r4,) = fhir_validate([VALID_TASK], version="R4")
    assert r4.ok, r4.errors
