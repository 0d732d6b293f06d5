"""Golden HL7 v2 orders: one new + one cancel per shipped receiver profile, each valid per HAPI.

Regenerate after an intended change with ``UPDATE_GOLDEN=1 pytest tests/golden/test_hl7_golden.py``
and review the diff: the expected files are what the interface analyst signs off. The order is
deliberately hostile: every delimiter, CR/LF, the MLLP framing bytes, a Windows path that looks
like an escape sequence, and non-Latin-1-free but Latin-1-encodable names.
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from adapter.hl7.messages import build_order
from adapter.hl7.model import (
    OrderPatient,
    OrderRequest,
    PatientIdentifier,
    PersonNameGroup,
    Provider,
)
from adapter.hl7.profiles import DOCUMENT_MESSAGES, load_profiles
from tests.peers.hl7v2_validator_fixture import Validate

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = ROOT / "fixtures" / "expected" / "hl7"
# Order receivers only: the document receivers (MDM/ORU, the review note) have their own tests.
PROFILES = {
    name: profile
    for name, profile in load_profiles(ROOT / "mappings" / "receivers").items()
    if profile.message not in DOCUMENT_MESSAGES
}
NOW = datetime(2025, 3, 30, 1, 30, 0, tzinfo=timezone(timedelta(hours=1)))
CONTROL_ID = "RTP0000000000000042"

TRICKY_ORDER = OrderRequest(
    control="NW",
    placer_order_number="SR-2025|0042",
    placer_namespace="RTPLAN",
    patient=OrderPatient(
        identifiers=(
            PatientIdentifier("MRN^0042", "HOSP&MRN"),
            PatientIdentifier("9434765919", "NHS", "NH"),
        ),
        birth_date="1950-02-03",
        sex="F",
        # The alphabetic group goes to every receiver; the ideographic one only where the
        # charset can carry it (not the Latin-1 swfb-ris).
        names=(
            PersonNameGroup("O'Brien-Søren^Smith", "Zoë~Ann", prefix="Mrs"),
            PersonNameGroup("山田", "花子", representation="I"),
        ),
    ),
    study_instance_uid="1.2.826.0.1.3680043.8.498.42",
    accession_number="ACC&0042",
    requested_procedure_id="RP0042",
    scheduled_procedure_step_id="SPS0042",
    modality="CT",
    priority="urgent",
    reason_code="C34.1",
    reason_text="Upper lobe, bronchus or lung | staging",
    reason_system="I10",
    concern_text=(
        "Possible nodule ^ RUL & adrenal ~ check.\r\nSee C:\\F\\scans\\T\\x and \\.br\\ as typed.\n"
        "Framing \x0b VT and \x1c FS bytes; tab\tend."
    ),
    ordering_provider=Provider(
        "ONC123", "Smith|Jones", "Ann&Bo", prefix="Dr", assigning_authority="HOSP-STAFF"
    ),
    requested_at="2025-03-30T01:29:00+01:00",
    review_id="review-0042",
    extra_notes=("Second note with \\E\\ inside",),
)
CASES = {f"{name}-{kind}": (name, kind) for name in sorted(PROFILES) for kind in ("new", "cancel")}


def build_case(case: str) -> bytes:
    name, kind = CASES[case]
    order = TRICKY_ORDER if kind == "new" else replace(TRICKY_ORDER, control="CA")
    return build_order(order, PROFILES[name], control_id=CONTROL_ID, now=NOW)


@pytest.mark.parametrize("case", sorted(CASES))
def test_message_matches_golden(case: str) -> None:
    raw = build_case(case)
    path = EXPECTED / f"{case}.hl7"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
    assert path.is_file(), f"missing {path}; run with UPDATE_GOLDEN=1"
    assert raw == path.read_bytes()


@pytest.mark.peer
def test_every_golden_passes_hapi(hl7v2_validate: Validate) -> None:
    cases = sorted(CASES)
    results = hl7v2_validate([build_case(c) for c in cases])
    failures = {c: r.error for c, r in zip(cases, results, strict=True) if not r.ok}
    assert not failures
    # HAPI re-encodes identically, except one HAPI quirk: in FT it writes literal text "\\.br\\"
    # back as the formatting command \\.br\\ (a line break). Our \\E\\.br\\E\\ is the escaped text.
    for case, raw, result in zip(cases, (build_case(c) for c in cases), results, strict=True):
        if result.roundtrip:
            continue
        ours = next(s for s in raw.decode("iso-8859-1").split("\r") if s.startswith("NTE|1|"))
        assert result.reencoded.encode("iso-8859-1", "replace").decode(
            "iso-8859-1"
        ) == ours.replace("\\E\\.br\\E\\", "\\.br\\"), case
    structures = {c: (r.structure, r.version) for c, r in zip(cases, results, strict=True)}
    assert structures["default-ris-new"] == ("ORM_O01", "2.3.1")
    assert structures["swfb-ris-new"] == ("OMG_O19", "2.5.1")
    assert structures["imaging-procedure-control-new"] == ("OMI_O23", "2.5.1")


@pytest.mark.peer
def test_conformance_profile_catches_what_hapi_parsing_allows(hl7v2_validate: Validate) -> None:
    """The conformance checks can fail: no PID-5, no IPC-2, MSH-18 or OBR-24 outside the
    version's table (each of these parses fine in HAPI)."""
    orm = build_case("default-ris-new").decode("utf-8")
    omi = build_case("imaging-procedure-control-new").decode("utf-8")

    def field(text: str, segment: str, number: int, value: str) -> bytes:
        lines = text.split("\r")
        for i, line in enumerate(lines):
            if line.startswith(segment + "|"):
                parts = line.split("|")
                parts[number if segment != "MSH" else number - 1] = value
                lines[i] = "|".join(parts)
                break
        return "\r".join(lines).encode("utf-8")

    bad = [
        field(orm, "PID", 5, ""),
        field(orm, "MSH", 18, "UNICODE UTF-8"),
        field(orm, "OBR", 24, "MR"),
        field(omi, "IPC", 2, ""),
    ]
    results = hl7v2_validate(bad)
    errors = [r.error for r in results]
    assert not any(r.ok for r in results), errors
    assert "PID-5-1 is required" in errors[0]
    assert "MSH-18 value 'UNICODE UTF-8'" in errors[1]
    assert "OBR-24 value 'MR'" in errors[2]
    assert "IPC-2 is required" in errors[3]
