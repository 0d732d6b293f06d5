"""The run report counts the files the reader's fast path deferred to the pydicom path, and
a native crash while reading one file costs that file only (docs/ingest.md)."""

from __future__ import annotations

import faulthandler
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file

from adapter.cli import main
from adapter.dicom import fast
from adapter.dicom.models import InstanceHeader, Rejection
from tests.support import FIXTURES

pytestmark = pytest.mark.store  # every test here reaches the store: both backends

DICOM = FIXTURES / "dicom"


def test_json_and_report_count_the_pydicom_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "in"
    shutil.copytree(DICOM / "planning-ct", root / "planning-ct")
    shutil.copytree(DICOM / "charset-jp", root / "charset-jp")  # ISO 2022: pydicom decodes
    implicit = get_testdata_file("MR_small_implicit.dcm", download=False)
    assert implicit is not None
    shutil.copy(implicit, root / "implicit.dcm")
    jp = sum(1 for _ in (root / "charset-jp").glob("*.dcm"))
    out = tmp_path / "out"
    code = main(["ingest", str(root), "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code in (0, 1)
    expected = {fast.CHARSET: jp, fast.TRANSFER_SYNTAX: 1}
    assert summary["pydicom_path_reasons"] == expected
    assert summary["read_by_pydicom_path"] == jp + 1
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["read_by_pydicom_path"] == jp + 1
    assert report["summary"]["pydicom_path_reasons"] == expected


def test_plain_run_reports_zero(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["ingest", str(DICOM / "planning-ct"), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["read_by_pydicom_path"], summary["pydicom_path_reasons"]) == (0, {})


def test_native_crash_in_a_worker_quarantines_that_file_and_the_run_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real SIGSEGV (not an exception) in the reader of one file, with 2 workers."""
    import adapter.dicom.walk as walk

    root = tmp_path / "in"
    for copy in range(4):  # 40 files: more than one pool chunk (32), so the pool is used
        shutil.copytree(DICOM / "planning-ct", root / f"copy{copy}")
    victim = sorted((root / "copy1").glob("*_CT_0003.dcm"))[0]
    real = walk.read_header

    def segfaulting(path: Path, **kw: Any) -> InstanceHeader | Rejection:
        if path == victim:
            faulthandler.disable()  # keep the test output quiet; the signal still kills
            faulthandler._sigsegv()  # type: ignore[attr-defined]
        return real(path, **kw)

    monkeypatch.setattr(walk, "read_header", segfaulting)  # inherited by forked workers
    monkeypatch.setenv("RTPLAN_INGEST__WORKERS", "2")
    out = tmp_path / "out"
    code = main(["ingest", str(root), "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 1
    files = sum(1 for p in root.rglob("*") if p.is_file())
    assert summary["files"] == files and summary["quarantined"] == 1
    report = json.loads((out / "report.json").read_text())
    (rejected,) = report["rejected_files"]
    assert rejected["path"] == str(victim)
    assert rejected["reason"] == "reader process crashed on this file"
