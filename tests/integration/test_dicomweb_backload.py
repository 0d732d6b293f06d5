"""``rtplan ingest --dicomweb`` against a real Orthanc's DICOMweb: the same Bundles as file
ingest of the same files; an interrupted back-load resumed sends nothing twice; hostile
answers are refused with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from adapter.cli import main
from adapter.store.outbox import Outbox
from tests.peers.orthanc_fixture import OrthancPeer
from tests.store_backend import StoreUnderTest
from tests.support import FIXTURES, ROOT

pytest_plugins = ["tests.peers.orthanc_fixture"]
pytestmark = [pytest.mark.peer, pytest.mark.store]

DICOM = FIXTURES / "dicom"
CASES = ["planning-ct", "planning-mr", "diagnostic-ct", "pet-ct"]


def files() -> list[Path]:
    return [p for case in CASES for p in sorted((DICOM / case).glob("*.dcm"))]


def bundles(out: Path) -> dict[str, Any]:
    return {p.name: json.loads(p.read_text()) for p in sorted((out / "fhir").glob("*.json"))}


def studies(out: Path) -> dict[str, Any]:
    """The report's studies; the label KOS is compared by presence (its UID is new per run)."""
    found = {}
    for entry in json.loads((out / "report.json").read_text())["studies"]:
        label = entry.pop("pacs_label", None)
        entry["labelled"] = label is not None and "kos_sop_instance_uid" in label
        found[entry["study_instance_uid"]] = entry
    return found


def study_uids() -> set[str]:
    return {
        str(dcmread(sorted((DICOM / c).glob("*.dcm"))[0], stop_before_pixels=True).StudyInstanceUID)
        for c in CASES
    }


def test_dicomweb_backload_gives_the_same_bundles_as_file_ingest(
    orthanc: OrthancPeer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    store: StoreUnderTest,
) -> None:
    orthanc.upload(files())
    by_files, by_web = tmp_path / "files", tmp_path / "web"
    assert main(["ingest", *[str(DICOM / c) for c in CASES], "--out", str(by_files)]) in (0, 1)
    capsys.readouterr()
    store.point_cli(monkeypatch, by_web / "outbox.sqlite")  # the backload's own store
    code = main(["ingest", "--dicomweb", orthanc.dicomweb_url, "--out", str(by_web), "--json"])
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["studies_found"] == len(CASES) and summary["studies_already_done"] == 0
    assert summary["mapped"] >= 2 and summary["held_not_planning"] >= 1
    assert code in (0, 1)
    assert err.count("study ") == len(CASES)  # progress, one line per study
    expected = bundles(by_files)
    assert expected and bundles(by_web) == expected
    assert studies(by_web) == studies(by_files)


def test_an_interrupted_backload_resumes_and_sends_nothing_twice(
    orthanc: OrthancPeer, tmp_path: Path, store: StoreUnderTest
) -> None:
    orthanc.upload(files())
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "adapter.cli", "ingest", "--dicomweb", orthanc.dicomweb_url,
           "--out", str(out), "--rate", "2"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    database = out / "outbox.sqlite"
    deadline = time.monotonic() + 60
    recorded = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if store.postgresql or database.exists():
            with Outbox(store.at(database)) as outbox:
                recorded = sum(1 for uid in study_uids() if outbox.study(uid) is not None)
            if recorded >= 1:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    with Outbox(store.at(database)) as outbox:
        first = sum(1 for uid in study_uids() if outbox.study(uid) is not None)
    assert 1 <= first < len(CASES), "the interruption came too late to test resuming"

    resumed = subprocess.run([*cmd, "--json"], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=300, check=False)  # fmt: skip
    summary = json.loads(resumed.stdout)
    assert summary["studies_already_done"] == first
    assert summary["studies"] == len(CASES) - first
    with Outbox(store.at(database)) as outbox:
        for uid in study_uids():
            assert outbox.study(uid) is not None
            assert len(outbox.rows_for_key(f"study:{uid}", kind="fhir-transaction")) <= 1
        kos = [r for r in outbox.rows() if r.kind == "dicom-kos"]
    assert len(kos) == len({r.key for r in kos})  # one label per study, never twice


def test_a_bad_since_date_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["ingest", "--dicomweb", "http://127.0.0.1:9/dicom-web", "--since", "2024-13-01",
                 "--out", str(tmp_path)])  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 2
    assert err.strip() == "rtplan: config --since: not a calendar date"


def test_the_documented_since_rate_and_study_forms(
    orthanc: OrthancPeer, tmp_path: Path, capsys: pytest.CaptureFixture[str], store: StoreUnderTest
) -> None:
    """As docs/operations.md shows them: ``--since 2024-01-01 --rate 5`` and ``--study UID``."""
    orthanc.upload(files())
    url = orthanc.dicomweb_url
    out = tmp_path / "since"
    main(["ingest", "--dicomweb", url, "--since", "2024-01-01", "--rate", "5", "--out", str(out),
          "--json"])  # fmt: skip
    assert json.loads(capsys.readouterr().out)["studies_found"] == len(CASES)
    main(["ingest", "--dicomweb", url, "--since", "2026-03-01", "--out", str(tmp_path / "x"),
          "--json"])  # fmt: skip
    assert json.loads(capsys.readouterr().out)["studies_found"] == len(CASES) - 1  # diagnostic-ct
    planning = str(dcmread(sorted((DICOM / "planning-ct").glob("*.dcm"))[0]).StudyInstanceUID)
    code = main(["ingest", "--dicomweb", url, "--study", planning, "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0
    # Read again on request (the --since run did it): the same Bundle again, the same label.
    assert summary["studies_found"] == 1 and summary["mapped"] == 1
    with Outbox(store.at(out / "outbox.sqlite")) as outbox:
        first, again = outbox.rows_for_key(f"study:{planning}", kind="fhir-transaction")
        assert again.payload == first.payload
        assert len(outbox.rows_for_key(f"study:{planning}", kind="dicom-kos")) <= 1
