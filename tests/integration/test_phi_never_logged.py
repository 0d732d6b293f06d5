"""Reliability matrix row 35: patient data never appears in logs, messages or the run report.

The canary patient's name, ID and accession go in; the test proves they reach the FHIR Bundle
(so the canary really was read) and appear nowhere else, with every logger at DEBUG.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from adapter.cli import main
from tests.support import synth

CANARIES = ("ZZCANARY", "CANARY123", "CANARYACC", "PHIGIVEN")


def canary_study(root: Path) -> list[Path]:
    files = synth.planning_ct(
        root / "study",
        seed="canary",
        patient_id="CANARY123",
        patient_name="ZZCANARY^PHIGIVEN",
        accession="CANARYACC",
        missing_slices=(3,),
    )
    broken = root / "broken"
    broken.mkdir()
    # A truncated copy and a text file that quotes the patient: both must be rejected without
    # echoing their content.
    data = files[0].read_bytes()
    (broken / "cut.dcm").write_bytes(data[: len(data) - 100])
    (broken / "letter.txt").write_text("Dear ZZCANARY PHIGIVEN, MRN CANARY123\n")
    return files


@pytest.mark.parametrize("incomplete", ["hold", "map"])
@pytest.mark.store
def test_no_canary_outside_the_bundle(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    incomplete: str,
) -> None:
    canary_study(tmp_path / "in")
    monkeypatch.setenv("RTPLAN_INGEST__INCOMPLETE_STUDIES", incomplete)
    monkeypatch.setenv("RTPLAN_INGEST__WORKERS", "1")
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG):
        code = main(["-v", "ingest", str(tmp_path / "in"), "--out", str(out)])
        map_code = main(["map", str(tmp_path / "in")])
    stdout, stderr = capsys.readouterr()
    assert code == map_code == 1  # rejected files, so not everything was mapped
    assert caplog.records, "logging was not captured: the test would prove nothing"
    report = (out / "report.json").read_text()
    quarantined = list((out / "quarantine").glob("*"))
    assert quarantined, "the truncated file should have been quarantined"
    for canary in CANARIES:
        assert canary not in caplog.text, f"{canary} logged"
        assert canary not in stderr, f"{canary} on stderr"
        assert canary not in report, f"{canary} in report.json"
    human = stdout.split("\n{", 1)[0]  # the ingest summary (the map Bundle JSON follows it)
    for canary in CANARIES:
        assert canary not in human, f"{canary} in the ingest summary"
    bundles = "".join(p.read_text() for p in (out / "fhir").glob("*.json"))
    if incomplete == "map":
        assert "CANARY123" in bundles  # the canary was read and delivered where it belongs
    assert logging.getLogger("pydicom").getEffectiveLevel() >= logging.ERROR
    assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING


def test_rejection_reasons_never_quote_values(tmp_path: Path) -> None:
    from zoneinfo import ZoneInfo

    from adapter.dicom.walk import read_all

    files = canary_study(tmp_path)
    shutil.copy(files[1], tmp_path / "broken" / "copy.dcm")
    _, rejections = read_all([tmp_path / "broken"], default_tz=ZoneInfo("UTC"))
    assert len(rejections) == 2
    for rejection in rejections:
        for canary in CANARIES:
            assert canary not in rejection.reason
