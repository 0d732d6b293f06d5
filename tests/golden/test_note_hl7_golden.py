"""Golden HL7 v2 note messages: MDM T02, T08, T10, T11 and ORU^R01 for the shipped document
profiles, from a deliberately hostile note, each valid per HAPI.

Regenerate after an intended change with
``UPDATE_GOLDEN=1 pytest tests/golden/test_note_hl7_golden.py`` and review the diff."""

from __future__ import annotations

import base64
import os
from dataclasses import replace
from pathlib import Path

import pytest

from adapter.hl7.mdm import DocumentMessage, build_document_message
from adapter.hl7.model import OrderPatient, PatientIdentifier, Provider
from adapter.hl7.profiles import load_profiles
from tests.golden.test_hl7_golden import CONTROL_ID, NOW
from tests.peers.hl7v2_validator_fixture import Validate

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = ROOT / "fixtures" / "expected" / "hl7"
PROFILES = load_profiles(ROOT / "mappings" / "receivers")
NOTE = DocumentMessage(
    event="T02",
    document_number="RN0123456789ABCDEF",
    patient=OrderPatient(
        (PatientIdentifier("MRN^0042", "HOSP&MRN"),), "O'Brien-Søren", "Zoë~Ann", "1950-02-03", "F"
    ),
    author=Provider("ONC123", "Smith|Jones", "Ann&Bo"),
    activity_time="2025-03-30T01:29:00+01:00",
    lines=(
        "RADIOTHERAPY PLANNING SCAN REVIEW NOTE",
        "",
        "Notes: | ^ & ~ \\ looks escaped \\F\\ and \\.br\\ \ufffd 山田",
    ),
    pdf_base64=base64.b64encode(b"%PDF-1.7 golden").decode(),
    review_id="REV-1",
    version=1,
)
CASES = {
    "note-mdm-t02": ("document-mdm", replace(NOTE, event="T02")),
    "note-mdm-t08": ("document-mdm", replace(NOTE, event="T08", result_status="C", version=2)),
    "note-mdm-t10": ("document-mdm", replace(NOTE, event="T10", result_status="C", version=2)),
    "note-mdm-t11": (
        "document-mdm",
        replace(NOTE, event="T11", availability="OB", change_reason="version 3: concern withdrawn"),
    ),
    "note-oru-r01": ("document-oru", replace(NOTE, event="R01")),
}


def build_case(case: str) -> bytes:
    profile, doc = CASES[case]
    return build_document_message(doc, PROFILES[profile], control_id=CONTROL_ID, now=NOW)


@pytest.mark.parametrize("case", sorted(CASES))
def test_note_message_matches_golden(case: str) -> None:
    raw = build_case(case)
    path = EXPECTED / f"{case}.hl7"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_bytes(raw)
    assert path.is_file(), f"missing {path}; run with UPDATE_GOLDEN=1"
    assert raw == path.read_bytes()


@pytest.mark.peer
def test_every_note_golden_passes_hapi(hl7v2_validate: Validate) -> None:
    cases = sorted(CASES)
    results = hl7v2_validate([build_case(c) for c in cases])
    assert {c: r.error for c, r in zip(cases, results, strict=True) if not r.ok} == {}
    assert {c: r.structure for c, r in zip(cases, results, strict=True)} == {
        "note-mdm-t02": "MDM_T02",
        "note-mdm-t08": "MDM_T02",
        "note-mdm-t10": "MDM_T02",
        "note-mdm-t11": "MDM_T01",
        "note-oru-r01": "ORU_R01",
    }
