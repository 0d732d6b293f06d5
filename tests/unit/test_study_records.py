"""The per-study record: written at ingest with the study's outbox rows, in one transaction."""

from __future__ import annotations

import math
import shutil
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import dcmread

from adapter.cli import main
from adapter.dicom.models import PersonName
from adapter.store.outbox import NewRow, Outbox
from adapter.store.studies import StudyRecord, pn_string
from tests.peers.postgres_fixture import CliStore
from tests.support import FIXTURES, synth, tx

PLANNING_CT = FIXTURES / "dicom" / "planning-ct"


def record(uid: str = "1.2.3", **changes: str) -> StudyRecord:
    values = {
        "study_uid": uid,
        "patient_id": "P1",
        "patient_issuer": "HOSP",
        "patient_name": "DOE^JANE",
        "birth_date": "1960-01-02",
        "sex": "F",
        "accession": "",
        "requested_procedure_id": "RP1",
        "scheduled_step_id": "",
    }
    values.update(changes)
    return StudyRecord(**values)


def row(key: str, payload: dict[str, object]) -> NewRow:
    return NewRow("files", "/out", key, "fhir-transaction", "label", payload)


def test_pn_string_is_the_dicom_form() -> None:
    assert pn_string(PersonName(family="DOE", given=("JANE",))) == "DOE^JANE"
    full = PersonName("DOE", ("JANE", "Q"), "DR", "JR", "ideo^x", "phon")
    assert pn_string(full) == "DOE^JANE^Q^DR^JR=ideo^x=phon"
    assert pn_string(PersonName(family="DOE", phonetic="do")) == "DOE==do"
    assert pn_string(PersonName()) == ""


def test_record_is_stored_with_the_rows_and_read_back(store_url: Path | str) -> None:
    with Outbox(store_url) as outbox:
        assert outbox.study("1.2.3") is None
        ids = outbox.enqueue_many([row("study:1.2.3", tx(a=1))], [record()])
        assert len(ids) == 1
        assert outbox.study("1.2.3") == record()


def test_a_failed_write_stores_neither_rows_nor_record(store_url: Path | str) -> None:
    with Outbox(store_url) as outbox:
        with pytest.raises(ValueError):  # NaN is not JSON: the row cannot be stored
            outbox.enqueue_many([row("study:1.2.3", tx(a=math.nan))], [record()])
        assert outbox.study("1.2.3") is None
        assert outbox.rows() == []


def test_order_fields_are_filled_in_never_overwritten_and_patient_kept(
    store_url: Path | str,
) -> None:
    with Outbox(store_url) as outbox:
        outbox.enqueue_many([], [record()])
        later = record(accession="ACC9", requested_procedure_id="RP2", patient_id="OTHER")
        outbox.enqueue_many([], [later])
        stored = outbox.study("1.2.3")
        assert stored == record(accession="ACC9")  # filled; RP1 and P1 kept


@pytest.mark.sqlite_only(reason="reads the SQLite file's own catalogue")
def test_the_table_lives_in_the_outbox_file(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    Outbox(path).close()
    names = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert "studies" in names


def test_ingest_records_the_study_from_its_headers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_store: CliStore
) -> None:
    out = tmp_path / "out"
    assert main(["ingest", str(PLANNING_CT), "--out", str(out)]) == 0
    capsys.readouterr()
    study_uid = synth.uid_for("planning-ct", "/study")
    with Outbox(cli_store.location(out / "outbox.sqlite")) as outbox:
        stored = outbox.study(study_uid)
        rows = outbox.rows_for_key(f"study:{study_uid}")
    assert stored is not None
    # The facts the workflow reads later (issue 8): what the classifier and the mapping decided.
    assert stored.classification == "planning" and stored.modality == "CT"
    assert {e.strength for e in stored.evidence} >= {"conclusive"}
    assert stored.review_task_key == f"urn:rtplan:review-task|review:{study_uid}"
    assert stored.review_task is not None and stored.review_task["resourceType"] == "Task"
    assert stored.patient_system and not stored.fhir_imaging_study_id  # no FHIR server here
    assert stored.review_due == stored.review_task["restriction"]["period"]["end"]
    # The review note's header: the ImagingStudy's start, description and modalities as mapped.
    assert stored.study_started == "2026-03-02T09:30:00+00:00"
    assert stored.study_description.endswith(": RT PLANNING CT PELVIS")
    assert stored.study_modalities == ("CT", "RTSTRUCT", "RTPLAN")
    assert replace(
        stored,
        requested_procedure="",
        modality="",
        classification="",
        evidence=(),
        patient_system="",
        patient_created=False,
        review_task_key="",
        review_task=None,
        review_due="",
        study_started="",
        study_description="",
        study_modalities=(),
    ) == StudyRecord(
        study_uid=study_uid,
        patient_id="RTP0001",
        patient_issuer="HOSP-MRN",
        patient_name="TEST^PLANNING",
        birth_date="1958-04-17",
        sex="M",
        accession="ACC0001",
        requested_procedure_id="RP0001",
        scheduled_step_id="SPS0001",
    )
    assert len(rows) == 1  # the record came with the study's Bundle row


def test_an_identical_duplicate_is_named_but_not_an_identity_hold(tmp_path: Path) -> None:
    from dataclasses import replace

    from adapter.config import Settings
    from adapter.ingest.pipeline import Status, run_ingest
    from adapter.jobs.output import write_report
    from adapter.tables import load_tables

    folder = tmp_path / "study"
    shutil.copytree(PLANNING_CT, folder)
    first = sorted(folder.glob("*_CT_*.dcm"))[0]
    shutil.copy(first, folder / "zz-same.dcm")
    settings = Settings()
    settings = replace(settings, ingest=replace(settings.ingest, incomplete_studies="map"))
    result = run_ingest([folder], settings, load_tables(settings.mappings_dir))
    (outcome,) = result.studies
    assert outcome.status is Status.MAPPED  # same content: not a patient conflict
    report = write_report(result, tmp_path / "out")
    (entry,) = report["studies"]
    assert entry["duplicate_files"] == [
        {
            "path": str(folder / "zz-same.dcm"),
            "sop_instance_uid": dcmread(first).SOPInstanceUID,
            "same_content": True,
        }
    ]
