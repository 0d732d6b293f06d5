"""A study's patient never changes under it (issue 13), on real FHIR servers (Medplum, HAPI).

Four ways a study could drift to another patient, each held: a late series naming another
patient, the study re-ingested under another patient, a study whose instances name two
patients (even with ``incomplete_studies: map``), and a repeated SOP instance with another
patient. Each time: exit 1, ``held-identity`` in report.json with the hold to resolve, nothing
sent (the FHIR server unchanged), an ``identity-hold`` audit record, a reconciliation item
(exit 1). ``rtplan identity resolve`` releases or closes it, and the audit names who did.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

from adapter.cli import main
from adapter.ingest.pipeline import log_key
from adapter.store.outbox import Outbox
from tests.store_backend import StoreUnderTest
from tests.support import make_study, read_study, study_count, synth

pytestmark = pytest.mark.store  # every test here reaches the store: both backends


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def setup_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> None:
    monkeypatch.setenv("RTPLAN_FHIR__CREATE_PATIENT", "true")
    monkeypatch.setenv("RTPLAN_FHIR__INITIAL_WAIT", "0.05")
    monkeypatch.setenv("RTPLAN_INGEST__WORKERS", "1")
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def rewrite(
    files: list[Path], dest: Path, *, patient_id: str, name: str = "OTHER^PATIENT", tag: str = ""
) -> list[Path]:
    """Copies of ``files`` naming another patient; with ``tag``, as a new series (new UIDs)."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for path in files:
        ds = dcmread(path)
        ds.PatientID = patient_id
        ds.PatientName = name
        if tag:
            ds.SeriesInstanceUID = synth.uid_for(tag, "/series")
            ds.SOPInstanceUID = synth.uid_for(tag, f"/sop/{path.name}")
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.SeriesNumber = 9
        target = dest / f"{tag or 'copy'}-{path.name}"
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return written


def ingest(capsys: pytest.CaptureFixture[str], out: Path, base: str, *paths: Path) -> Any:
    code, stdout = run(capsys, "ingest", *map(str, paths), "--fhir-url", base, "--out", str(out))
    report = json.loads((out / "report.json").read_text())
    return code, report, stdout


def patients_named(base: str, patient_id: str) -> int:
    params = {"identifier": patient_id, "_summary": "count"}
    return int(httpx.get(f"{base}/Patient", params=params, timeout=30).json()["total"])


def assert_held(
    capsys: pytest.CaptureFixture[str], out: Path, code: int, report: Any, study_uid: str
) -> int:
    """Held, reported, audited and listed by reconcile; returns the hold id."""
    assert code == 1
    entry = next(s for s in report["studies"] if s["study_instance_uid"] == study_uid)
    assert entry["status"] == "held-identity" and "output" not in entry  # no Bundle written
    assert report["summary"]["held_identity"] == 1
    hold = int(entry["identity_hold"])
    code, stdout = run(capsys, "audit", "--study", study_uid, "--out", str(out))
    assert code == 0 and "identity-hold" in stdout and f"hold {hold}:" in stdout
    code, stdout = run(capsys, "reconcile", "--json", "--out", str(out))
    listed = json.loads(stdout)
    assert code == 1 and listed["identity_holds_open"] >= 1
    assert any(i["kind"] == "identity" and i["hold"] == hold for i in listed["items"])
    return hold


def test_late_series_and_reingest_under_another_patient_are_held_then_resolved(
    fhir_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    store: StoreUnderTest,
) -> None:
    setup_env(monkeypatch, tmp_path)
    # Patient ids of this run only: the FHIR server outlives the test (both store backends).
    late_id, moved_id = f"LATE{store.backend.upper()}", f"MOVED{store.backend.upper()}"
    out = tmp_path / "out"
    folder, study_uid = make_study(tmp_path / "in")
    code, report, _ = ingest(capsys, out, fhir_url, folder)
    assert code == 0
    before = read_study(fhir_url, study_uid)
    bundle_file = out / "fhir" / f"ImagingStudy-{log_key(study_uid)}.json"
    bundle_before = bundle_file.read_bytes()
    with Outbox(store.at(out / "outbox.sqlite")) as outbox:
        rows_before = len(outbox.rows())
        recorded = outbox.study(study_uid)
    assert recorded is not None

    # 1. A late CT series of the same study naming another patient.
    cts = sorted(folder.glob("*_CT_*.dcm"))
    late = rewrite(cts, tmp_path / "late", patient_id=late_id, tag="late-series")
    code, report, stdout = ingest(capsys, out, fhir_url, late[0].parent)
    late_hold = assert_held(capsys, out, code, report, study_uid)
    assert "HELD (patient identity): patient differs" in stdout
    assert "PatientID, PatientName" in stdout and late_id not in stdout  # fields, no values
    # 2. The whole study again, under another patient.
    again = rewrite(sorted(folder.glob("*.dcm")), tmp_path / "again", patient_id=moved_id)
    code, report, _ = ingest(capsys, out, fhir_url, again[0].parent)
    moved_hold = assert_held(capsys, out, code, report, study_uid)
    assert moved_hold != late_hold

    # Nothing was sent for either: the server's ImagingStudy is the same version, same patient.
    after = read_study(fhir_url, study_uid)
    assert after["meta"]["versionId"] == before["meta"]["versionId"]
    assert after["subject"] == before["subject"]
    assert patients_named(fhir_url, late_id) == patients_named(fhir_url, moved_id) == 0
    assert bundle_file.read_bytes() == bundle_before  # the output folder is unchanged too
    with Outbox(store.at(out / "outbox.sqlite")) as outbox:
        assert len(outbox.rows()) == rows_before
        assert outbox.study(study_uid) == recorded

    # The late series was a mistake: keep the recorded patient. No --by: a usage error.
    with pytest.raises(SystemExit):
        main(["identity", "resolve", str(late_hold), "--keep", "--out", str(out)])
    capsys.readouterr()
    code, stdout = run(
        capsys,
        "identity", "resolve", str(late_hold), "--keep",
        "--by", "Dr Keep", "--reason", "wrong patient on the scanner", "--out", str(out),
    )  # fmt: skip
    assert code == 0 and f"hold {late_hold} resolved (keep) by Dr Keep" in stdout
    # The study really was the other patient's: replace, and the held Bundle goes out.
    code, stdout = run(
        capsys,
        "identity", "resolve", str(moved_hold), "--replace",
        "--by", "Dr Replace", "--reason", "PAS merge confirmed", "--out", str(out),
    )  # fmt: skip
    assert code == 0 and "delivered 2, gave up 0" in stdout
    moved = read_study(fhir_url, study_uid)
    assert moved["subject"] != before["subject"] and patients_named(fhir_url, moved_id) == 1
    assert study_count(fhir_url, study_uid) == 1
    with Outbox(store.at(out / "outbox.sqlite")) as outbox:
        stored = outbox.study(study_uid)
        assert stored is not None and stored.patient_id == moved_id
        assert outbox.identity_holds(open_only=True) == []
    code, stdout = run(capsys, "audit", "--study", study_uid, "--out", str(out))
    assert "identity-resolve" in stdout
    assert "keep" in stdout and "by Dr Keep" in stdout and "by Dr Replace" in stdout
    # Once resolved, reconcile has nothing overdue for the study's identity.
    code, stdout = run(capsys, "identity", "list", "--out", str(out))
    assert code == 0 and "0 open identity hold(s)" in stdout


def test_mixed_patients_and_conflicting_duplicate_are_never_mapped(
    fhir_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    store: StoreUnderTest,
) -> None:
    # incomplete_studies: map would map an incomplete study; a patient mix is held regardless.
    setup_env(monkeypatch, tmp_path, RTPLAN_INGEST__INCOMPLETE_STUDIES="map")
    out = tmp_path / "out"
    mixed, mixed_uid = make_study(tmp_path / "mixed")
    half = sorted(mixed.glob("*_CT_*.dcm"))[:2]
    for path in rewrite(half, tmp_path / "mix-tmp", patient_id="MIXED0002"):
        shutil.move(path, mixed / path.name.removeprefix("copy-"))  # overwrite in place
    duplicated, dup_uid = make_study(tmp_path / "dup")
    first = sorted(duplicated.glob("*_CT_*.dcm"))[0]
    (copy,) = rewrite([first], tmp_path / "dup-tmp", patient_id="DUP0002")
    shutil.move(copy, duplicated / "zz-repeat.dcm")  # same SOP Instance UID, another patient

    code, report, _ = ingest(capsys, out, fhir_url, mixed, duplicated)
    assert code == 1
    by_uid = {s["study_instance_uid"]: s for s in report["studies"]}
    assert by_uid[mixed_uid]["status"] == by_uid[dup_uid]["status"] == "held-identity"
    assert "2 different patients" in by_uid[mixed_uid]["problem"]
    assert "duplicate SOP instance(s) with different content" in by_uid[dup_uid]["problem"]
    (named,) = by_uid[dup_uid]["duplicate_files"]
    assert named == {
        "path": str(duplicated / "zz-repeat.dcm"),
        "sop_instance_uid": dcmread(first).SOPInstanceUID,
        "same_content": False,
    }
    assert report["summary"]["held_identity"] == 2
    # Nothing sent for either study.
    assert study_count(fhir_url, mixed_uid) == study_count(fhir_url, dup_uid) == 0
    assert patients_named(fhir_url, "MIXED0002") == patients_named(fhir_url, "DUP0002") == 0
    with Outbox(store.at(out / "outbox.sqlite")) as outbox:
        assert outbox.rows() == []
        holds = {h.study_uid: h.id for h in outbox.identity_holds(open_only=True)}
    assert set(holds) == {mixed_uid, dup_uid}
    code, stdout = run(capsys, "reconcile", "--out", str(out))
    assert code == 1 and stdout.count("OVERDUE identity") == 2

    # Nothing mappable to release: --replace is refused with one clear line (exit 2).
    code = main(
        ["identity", "resolve", str(holds[mixed_uid]), "--replace",
         "--by", "Dr A", "--reason", "x", "--out", str(out)]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "nothing to release" in err and "Traceback" not in err
    for hold in holds.values():
        code, _ = run(
            capsys,
            "identity", "resolve", str(hold), "--keep",
            "--by", "Dr A", "--reason", "fixed at the PACS", "--out", str(out),
        )  # fmt: skip
        assert code == 0
    code, stdout = run(capsys, "reconcile", "--out", str(out))
    assert code == 0 and "0 open item(s), 0 overdue" in stdout
