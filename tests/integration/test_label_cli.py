"""The PACS label on the embedded default: ``rtplan ingest --out`` writes each planning study's
KOS under ``DIR/dicom/``, ``rtplan label preview`` prints it, ``rtplan label status`` shows the
label state; a late series supersedes; labelling can be switched off."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from adapter.cli import main
from adapter.ingest.pipeline import log_key
from adapter.store.outbox import Outbox
from tests.peers.postgres_fixture import CliStore
from tests.store_backend import StoreUnderTest
from tests.support import FIXTURES

DICOM = FIXTURES / "dicom"
PLANNING = DICOM / "planning-ct"
DIAGNOSTIC = DICOM / "diagnostic-ct"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def study_uid(folder: Path) -> str:
    return str(dcmread(next(iter(sorted(folder.glob("*CT_0001.dcm")))), stop_before_pixels=True)
               .StudyInstanceUID)  # fmt: skip


def kos_files(out: Path) -> list[Path]:
    return sorted((out / "dicom").glob("*.dcm"))


@pytest.mark.store
def test_ingest_writes_one_kos_per_planning_study_and_none_for_a_diagnostic_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], store: StoreUnderTest
) -> None:
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "ingest", str(PLANNING), str(DIAGNOSTIC), "--out", str(out))
    assert code == 0
    planning = study_uid(PLANNING)
    (kos,) = kos_files(out)
    assert kos.name == f"KOS-{log_key(planning)}-1.dcm"
    assert stat.S_IMODE(kos.stat().st_mode) == 0o600  # it holds patient data
    ds = dcmread(kos)
    assert ds.StudyInstanceUID == planning
    assert ds.ConceptNameCodeSequence[0].CodeValue == "128198"
    assert f"PACS label {log_key(planning)}: KOS #1 (new)" in stdout
    report = json.loads((out / "report.json").read_text())
    entries = {s["study_instance_uid"]: s for s in report["studies"]}
    assert entries[planning]["pacs_label"]["kos_sop_instance_uid"] == ds.SOPInstanceUID
    assert "pacs_label" not in entries[study_uid(DIAGNOSTIC)]

    code, stdout, _ = run(capsys, "label", "status", *store.db_option(out / "outbox.sqlite"))
    assert code == 0
    assert stdout.splitlines() == [
        f"{log_key(planning)} accepted KOS #1 dicom-files:delivered",
        "0 none, 0 sent, 1 accepted, 0 failed",
    ]
    code, stdout, _ = run(
        capsys, "label", "status", *store.db_option(out / "outbox.sqlite"),
        "--study", study_uid(DIAGNOSTIC),
    )  # fmt: skip
    assert stdout.splitlines()[0] == f"{log_key(study_uid(DIAGNOSTIC))} none"

    # The same files again: the stored KOS is re-used, nothing new is written or queued.
    code, stdout, _ = run(capsys, "ingest", str(PLANNING), "--out", str(out))
    assert code == 0
    assert f"PACS label {log_key(planning)}: KOS #1 (already built)" in stdout
    assert kos_files(out) == [kos]
    with Outbox(store.at(out / "outbox.sqlite")) as outbox:
        assert len([r for r in outbox.rows() if r.kind == "dicom-kos"]) == 1


def late_series(folder: Path) -> None:
    """Add a one-slice CT series to the study, as if it arrived after the first ingest."""
    source = dcmread(folder / "planning-ct_CT_0001.dcm")
    source.SeriesInstanceUID = generate_uid(entropy_srcs=["late series"])
    source.SOPInstanceUID = generate_uid(entropy_srcs=["late series", "1"])
    source.file_meta.MediaStorageSOPInstanceUID = source.SOPInstanceUID
    source.SeriesNumber = 3
    source.InstanceNumber = 1
    source.save_as(folder / "late_CT_0001.dcm")


def copy_without_declared_counts(dest: Path) -> Path:
    """The bundled study, without (0020,1206)/(0020,1208) so that a late series does not make it
    incomplete (a real late series would come with updated counts)."""
    folder = dest / "planning-ct"
    shutil.copytree(PLANNING, folder)
    for path in folder.glob("*.dcm"):
        ds = dcmread(path)
        for keyword in ("NumberOfStudyRelatedInstances", "NumberOfStudyRelatedSeries"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(path)
    return folder


def test_a_late_series_gets_a_new_kos_that_supersedes_the_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_store: CliStore
) -> None:
    folder = copy_without_declared_counts(tmp_path)
    out = tmp_path / "out"
    assert run(capsys, "ingest", str(folder), "--out", str(out))[0] == 0
    late_series(folder)
    code, stdout, _ = run(capsys, "ingest", str(folder), "--out", str(out))
    assert code == 0
    key = log_key(study_uid(folder))
    assert f"PACS label {key}: KOS #2 (new)" in stdout
    first, second = (dcmread(p) for p in kos_files(out))
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert (first.InstanceNumber, second.InstanceNumber) == (1, 2)
    first_refs = len(first.ContentSequence) - 1  # minus the TEXT item
    assert len(second.ContentSequence) - 1 == first_refs + 1
    (evidence,) = second.CurrentRequestedProcedureEvidenceSequence
    series = {s.SeriesInstanceUID for s in evidence.ReferencedSeriesSequence}
    assert generate_uid(entropy_srcs=["late series"]) in series
    report = json.loads((out / "report.json").read_text())
    (entry,) = report["studies"]
    assert entry["pacs_label"]["supersedes"] == first.SOPInstanceUID
    with Outbox(cli_store.location(out / "outbox.sqlite")) as outbox:
        history = outbox.labels().history(study_uid(folder))
    assert [r.superseded_by for r in history] == [second.SOPInstanceUID, None]
    db = cli_store.store.db_option(out / "outbox.sqlite")
    code, stdout, _ = run(capsys, "label", "status", *db)
    assert stdout.splitlines()[0] == (
        f"{key} accepted KOS #2 (supersedes 1 earlier) dicom-files:delivered"
    )


def test_label_preview_prints_what_would_be_sent_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = run(capsys, "label", "preview", str(PLANNING), str(DIAGNOSTIC))
    assert code == 0
    planning, diagnostic = log_key(study_uid(PLANNING)), log_key(study_uid(DIAGNOSTIC))
    assert f"study {planning}: mapped: new KOS #1" in stdout
    assert f"study {diagnostic}: held-not-planning: no KOS" in stdout
    assert "Key Object Selection Document Storage" in stdout
    assert "For RT Treatment Planning" in stdout
    assert "RADIOTHERAPY PLANNING SCAN - NOT FOR DIAGNOSTIC USE" in stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.store
def test_label_preview_with_an_outbox_says_the_stored_kos_is_reused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], store: StoreUnderTest
) -> None:
    out = tmp_path / "out"
    assert run(capsys, "ingest", str(PLANNING), "--out", str(out))[0] == 0
    code, stdout, _ = run(
        capsys, "label", "preview", str(PLANNING), *store.db_option(out / "outbox.sqlite")
    )
    assert code == 0
    assert f"study {log_key(study_uid(PLANNING))}: mapped: KOS #1 already stored; re-used" in stdout


@pytest.mark.store
def test_labelling_can_be_switched_off_in_the_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "rtplan.yaml"
    config.write_text("label:\n  enabled: false\n")
    out = tmp_path / "out"
    argv = ["--config", str(config), "ingest", str(PLANNING), "--out", str(out)]
    code, stdout, _ = run(capsys, *argv)
    assert code == 0
    assert not (out / "dicom").exists()
    assert "PACS label" not in stdout
    assert list((out / "fhir").glob("*.json"))  # the rest of ingest is unchanged
    code, stdout, _ = run(capsys, "--config", str(config), "label", "preview", str(PLANNING))
    assert code == 0
    assert stdout.strip() == (
        "labelling is switched off (label.enabled: false): nothing would be sent"
    )


@pytest.mark.store
def test_a_study_read_from_an_archive_is_reported_not_silently_unlabelled(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = shutil.make_archive(str(tmp_path / "study"), "zip", PLANNING)
    out = tmp_path / "out"
    code, stdout, _ = run(capsys, "ingest", archive, "--out", str(out))
    assert code == 1  # mapped and delivered, but the label could not be built
    assert "not on disk" in stdout
    report = json.loads((out / "report.json").read_text())
    assert "not on disk" in report["studies"][0]["pacs_label"]["problem"]
    assert not (out / "dicom").exists()


@pytest.mark.store
def test_a_replayed_kos_with_a_rejection_title_is_refused_before_sending(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], store: StoreUnderTest
) -> None:
    """An analyst's corrected payload is the one way to put arbitrary bytes in a KOS row: the
    pre-send check still refuses a rejection title, and nothing is written."""
    import base64
    from io import BytesIO

    out = tmp_path / "out"
    assert run(capsys, "ingest", str(PLANNING), "--out", str(out))[0] == 0
    db = out / "outbox.sqlite"
    with Outbox(store.at(db)) as outbox:
        (row,) = [r for r in outbox.rows() if r.kind == "dicom-kos"]
    ds = dcmread(BytesIO(base64.b64decode(row.payload["document"])))
    ds.ConceptNameCodeSequence[0].CodeValue = "113001"
    ds.ConceptNameCodeSequence[0].CodeMeaning = "Rejected for Quality Reasons"
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    forced = {**row.payload, "document": base64.b64encode(buffer.getvalue()).decode()}
    payload = tmp_path / "forced.json"
    payload.write_text(json.dumps(forced))
    (kos,) = kos_files(out)
    kos.unlink()
    code, stdout, _ = run(capsys, "outbox", *store.db_option(db), "replay", str(row.id),
                          "--payload", str(payload))  # fmt: skip
    assert code == 1
    assert "refused before sending: the KOS title DCM|113001 is a rejection title" in stdout
    assert kos_files(out) == []


@pytest.mark.store
def test_ingest_json_counts_the_pacs_labels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["ingest", str(PLANNING), str(DIAGNOSTIC), "--out", str(out), "--json"]
    code, stdout, _ = run(capsys, *argv)
    assert code == 0
    assert json.loads(stdout)["pacs_labels"] == {"new": 1, "reused": 0, "not_built": 0}
    code, stdout, _ = run(capsys, *argv)
    assert json.loads(stdout)["pacs_labels"] == {"new": 0, "reused": 1, "not_built": 0}
