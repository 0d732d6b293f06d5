"""``rtplan`` end to end on the embedded default: exit codes, report, quarantine, no writes
from ``map``, errors that name the key, and idempotent re-ingest."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file

from adapter.cli.main import _progress_printer, main
from tests.support import FIXTURES, synth

DICOM = FIXTURES / "dicom"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def copy_case(case: str, dest: Path) -> Path:
    shutil.copytree(DICOM / case, dest / case)
    return dest / case


def bundles(out: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((out / "fhir").glob("*.json"))]


@pytest.mark.store
def test_main_job_exits_zero_and_holds_the_diagnostic_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, _ = run(
        capsys,
        "ingest",
        str(DICOM / "planning-ct"),
        str(DICOM / "diagnostic-ct"),
        "--out",
        str(out),
        "--json",
    )
    assert code == 0
    summary = json.loads(stdout)
    assert (summary["mapped"], summary["held_not_planning"], summary["files"]) == (1, 1, 18)
    written = bundles(out)
    assert len(written) == 1
    report = json.loads((out / "report.json").read_text())
    held = [s for s in report["studies"] if s["status"] == "held-not-planning"]
    assert len(held) == 1 and held[0]["planning_scan"] is False
    # The diagnostic study is in no Bundle: it was neither labelled nor sent.
    assert held[0]["study_instance_uid"] not in json.dumps(written)


@pytest.mark.store
def test_mixed_folder_accounts_for_every_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "in"
    root.mkdir()
    for case in ("planning-ct", "diagnostic-ct", "incomplete-ct"):
        copy_case(case, root)
    (root / "notes.txt").write_text("not an image\n")
    shutil.copy(get_testdata_file("rtplan_truncated.dcm"), root / "truncated.dcm")
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "ingest", str(root), "--out", str(out), "--json")
    assert code == 1  # something was not mapped
    summary = json.loads(stdout)
    assert summary["mapped"] == 1
    assert summary["held_not_planning"] == 1
    assert summary["held_incomplete"] == 1
    assert summary["not_dicom"] == 1
    assert summary["quarantined"] == 1
    files = sum(1 for p in root.rglob("*") if p.is_file())
    report = json.loads((out / "report.json").read_text())
    seen = sum(s["instances"] for s in report["studies"]) + len(report["rejected_files"])
    assert seen == files == summary["files"]
    reasons = {Path(r["path"]).name: r for r in report["rejected_files"]}
    assert "truncated" in reasons["truncated.dcm"]["reason"]
    assert (out / reasons["truncated.dcm"]["copy"]).read_bytes() == (
        root / "truncated.dcm"
    ).read_bytes()
    incomplete = next(s for s in report["studies"] if s["status"] == "held-incomplete")
    assert incomplete["completeness_problems"]
    mapped = next(s for s in report["studies"] if s["status"] == "mapped")
    assert mapped["declared_instances"] == mapped["instances"] == 10  # (0020,1208) checked


@pytest.mark.store
def test_human_output_shows_evidence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(capsys, "ingest", str(DICOM / "planning-mr"), "--out", str(tmp_path))
    assert code == 0
    assert "planning scan: an RT Structure Set references the images of series 3 (MR)" in stdout


def test_map_prints_the_bundle_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, stdout, stderr = run(capsys, "map", str(DICOM / "planning-ct"))
    assert code == 0
    assert json.loads(stdout)["resourceType"] == "Bundle"
    assert "mapped" in stderr
    assert list(tmp_path.iterdir()) == []
    expected = json.loads((FIXTURES / "expected" / "planning-mr.bundle.json").read_text())
    run(capsys, "map", str(DICOM / "planning-mr"))  # same as the golden file
    code, stdout, _ = run(capsys, "map", str(DICOM / "planning-mr"))
    assert json.loads(stdout) == expected


def test_mappings_check_lists_codes_to_verify(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run(capsys, "mappings", "check")
    assert code == 0
    assert "procedure-codes.yaml" in stdout and "430447002" in stdout


def test_bad_table_exits_2_naming_file_and_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tables = tmp_path / "mappings"
    shutil.copytree(FIXTURES.parent / "mappings", tables)
    path = tables / "laterality.yaml"
    path.write_text(path.read_text().replace('display: "Left"', "colour: blue"))
    code, _, stderr = run(capsys, "mappings", "check", str(tables))
    assert code == 2
    assert "laterality.yaml: rows[1] (code 'L') target[0]" in stderr


def test_bad_setting_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTPLAN_INGEST__TIMEZONE", "Nowhere/Special")
    code, _, stderr = run(capsys, "ingest", str(DICOM / "planning-ct"), "--out", str(tmp_path))
    assert code == 2
    assert "ingest.timezone" in stderr
    assert not (tmp_path / "fhir").exists()


def test_progress_bar_only_on_a_terminal() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert _progress_printer(io.StringIO()) is None
    tty = Tty()
    show = _progress_printer(tty)
    show(5, 10)
    show(10, 10)
    assert "5/10 files" in tty.getvalue() and tty.getvalue().endswith("10/10 files\n")


@pytest.mark.store
def test_reingest_is_byte_identical_and_parallel_matches_serial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RTPLAN_INGEST__WORKERS", "1")
    run(capsys, "ingest", str(DICOM / "pet-ct"), "--out", str(tmp_path / "a"))
    run(capsys, "ingest", str(DICOM / "pet-ct"), "--out", str(tmp_path / "a"))
    monkeypatch.setenv("RTPLAN_INGEST__WORKERS", "2")
    big = synth.planning_ct(tmp_path / "big", slices=80)  # more than one read chunk
    run(capsys, "ingest", str(DICOM / "pet-ct"), "--out", str(tmp_path / "b"))
    assert bundles(tmp_path / "a") == bundles(tmp_path / "b")
    run(capsys, "ingest", str(tmp_path / "big"), "--out", str(tmp_path / "c"))
    monkeypatch.setenv("RTPLAN_INGEST__WORKERS", "1")
    run(capsys, "ingest", str(tmp_path / "big"), "--out", str(tmp_path / "d"))
    assert bundles(tmp_path / "c") == bundles(tmp_path / "d")
    assert bundles(tmp_path / "c")[0]["entry"][-1]["resource"]["numberOfInstances"] == len(big)


@pytest.mark.store
def test_series_arriving_later_updates_the_same_imaging_study(tmp_path: Path) -> None:
    """Same conditional-update key and fullUrl, so the server updates rather than duplicates."""
    from adapter.config import IngestSettings, Settings
    from adapter.ingest.pipeline import Status, run_ingest
    from adapter.tables import load_tables

    settings = Settings(ingest=IngestSettings(workers=1, incomplete_studies="map"))
    holding = Settings(ingest=IngestSettings(workers=1))
    tables = load_tables(settings.mappings_dir)
    folder = tmp_path / "study"
    files = synth.planning_ct(folder, slices=4)
    plan = [p for p in files if p.name.endswith("_RTPLAN.dcm")]
    held_back = tmp_path / "later"
    held_back.mkdir()
    shutil.move(plan[0], held_back / plan[0].name)
    # (0020,1208) counts the missing RTPLAN: by default the study waits for it ...
    assert run_ingest([folder], holding, tables).studies[0].status is Status.HELD_INCOMPLETE
    # ... and with incomplete_studies=map it is sent now and updated when the series arrives.
    first = run_ingest([folder], settings, tables).studies[0].bundle
    shutil.move(held_back / plan[0].name, folder / plan[0].name)
    second = run_ingest([folder], settings, tables).studies[0].bundle
    assert first is not None and second is not None
    a, b = first["entry"][-1], second["entry"][-1]
    assert a["request"] == b["request"] and a["fullUrl"] == b["fullUrl"]
    assert a["request"]["method"] == "PUT" and a["request"]["url"].startswith(
        "ImagingStudy?identifier="
    )
    assert (a["resource"]["numberOfSeries"], b["resource"]["numberOfSeries"]) == (2, 3)
