"""The labelling KOS: content, exact copy of the study's attributes, and the rejection-title
block (at load and just before sending)."""

from __future__ import annotations

import asyncio
import base64
import shutil
from dataclasses import replace
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread

from adapter.config import IngestSettings, LabelSettings, Settings
from adapter.errors import MappingError, MappingTableError
from adapter.ingest.pipeline import StudyOutcome, run_ingest
from adapter.label.delivery import CStoreDeliverer, KosFileDeliverer, StowDeliverer
from adapter.label.kos import KOS_SOP_CLASS, KosPlan, build_kos, encode, referenced_instances
from adapter.label.service import build_for, labelled
from adapter.label.source import SourceUnavailable, read_study_attributes
from adapter.label.titles import (
    DicomCode,
    RejectionTitleRefused,
    load_vocabulary,
    refuse_rejection_title,
)
from adapter.store.labels import KIND_KOS
from adapter.store.outbox import Row, State
from adapter.tables import load_tables
from tests.peers.launch import free_port
from tests.support import FIXTURES

DICOM = FIXTURES / "dicom"
SETTINGS = Settings(ingest=IngestSettings(workers=1))
TABLES = load_tables(SETTINGS.mappings_dir)
VOCABULARY = load_vocabulary(TABLES)
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
REJECTION_TITLES = ["113001", "113037", "113038", "113039"]
PLANNING_CASES = ["planning-ct", "planning-mr", "pet-ct", "charset-latin1", "charset-utf8",
                  "charset-jp"]  # fmt: skip


def planning_outcome(case: str) -> StudyOutcome:
    result = run_ingest([DICOM / case], SETTINGS, TABLES)
    (outcome,) = [s for s in result.studies if labelled(s)]
    return outcome


def kos_for(case: str) -> object:
    ds, _ = build_for(planning_outcome(case), SETTINGS, VOCABULARY, NOW)
    return ds


def copy_mappings(tmp_path: Path) -> Path:
    folder = tmp_path / "mappings"
    shutil.copytree(SETTINGS.mappings_dir, folder)
    return folder


# -- load-time checks --------------------------------------------------------------------


def test_the_shipped_title_is_dcm_128198_for_rt_treatment_planning() -> None:
    assert VOCABULARY.title == DicomCode("128198", "DCM", "For RT Treatment Planning")
    assert VOCABULARY.allowed_titles == frozenset({"DCM|128198"})
    assert VOCABULARY.description_concept.value == "113012"


@pytest.mark.parametrize("code", REJECTION_TITLES)
def test_a_rejection_title_as_the_title_is_a_load_time_error(tmp_path: Path, code: str) -> None:
    folder = copy_mappings(tmp_path)
    table = folder / "pacs-label.yaml"
    table.write_text(table.read_text().replace('code: "128198"', f'code: "{code}"'))
    (folder / "pacs-label-titles.yaml").write_text(
        (folder / "pacs-label-titles.yaml").read_text().replace("DCM|128198", f"DCM|{code}")
    )
    with pytest.raises(MappingTableError) as caught:
        load_vocabulary(load_tables(folder))
    assert "rejection title" in str(caught.value)
    assert "pacs-label" in str(caught.value)


@pytest.mark.parametrize("code", REJECTION_TITLES)
def test_a_rejection_title_on_the_allow_list_is_a_load_time_error(
    tmp_path: Path, code: str
) -> None:
    folder = copy_mappings(tmp_path)
    titles = folder / "pacs-label-titles.yaml"
    titles.write_text(titles.read_text() + f'    - "DCM|{code}"\n')
    with pytest.raises(MappingTableError) as caught:
        load_vocabulary(load_tables(folder))
    assert str(caught.value).startswith("pacs-label-titles.yaml: rules.allowed[1]:")
    assert "rejection title" in str(caught.value)


def test_a_title_missing_from_the_allow_list_is_a_load_time_error(tmp_path: Path) -> None:
    folder = copy_mappings(tmp_path)
    table = folder / "pacs-label.yaml"
    table.write_text(
        table.read_text().replace(
            'code: "128198", display: "For RT Treatment Planning"',
            'code: "128180", display: "For RT Workflow"',
        )
    )
    with pytest.raises(MappingTableError, match=r"DCM\|128180 is not in pacs-label-titles"):
        load_vocabulary(load_tables(folder))


def test_a_series_description_longer_than_lo_is_a_load_time_error(tmp_path: Path) -> None:
    folder = copy_mappings(tmp_path)
    table = folder / "pacs-label.yaml"
    long = "X" * 65
    table.write_text(
        table.read_text().replace(
            'series_description: "RADIOTHERAPY PLANNING SCAN - NOT FOR DIAGNOSTIC USE"',
            f'series_description: "{long}"',
        )
    )
    with pytest.raises(MappingTableError, match=r"labels\.series_description"):
        load_vocabulary(load_tables(folder))


@pytest.mark.store
def test_a_rejection_title_in_the_tables_stops_the_cli_with_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapter.cli import main

    folder = copy_mappings(tmp_path)
    titles = folder / "pacs-label-titles.yaml"
    titles.write_text(titles.read_text() + '    - "DCM|113001"\n')
    monkeypatch.setenv("RTPLAN_MAPPINGS_DIR", str(folder))
    out = tmp_path / "out"
    code = main(["ingest", str(DICOM / "planning-ct"), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "rtplan: pacs-label-titles.yaml: rules.allowed[1]: DCM|113001 is a rejection title; "
        "archives hide what it references"
    ]
    assert not out.exists()  # nothing was read or written
    assert main(["mappings", "check", str(folder)]) == 2


# -- the pre-send check -----------------------------------------------------------------


def forced_rejection_row(code: str) -> Row:
    """A stored KOS whose title was changed to a rejection title after it was built."""
    ds = kos_for("planning-ct")
    ds.ConceptNameCodeSequence[0].CodeValue = code  # type: ignore[attr-defined]
    ds.ConceptNameCodeSequence[0].CodeMeaning = "Rejected for Quality Reasons"  # type: ignore[attr-defined]
    return Row(
        id=1, destination="pacs", target="x", key="pacs-label:1", kind=KIND_KOS,
        label="KOS-test-1",
        payload={
            "sop_instance_uid": str(ds.SOPInstanceUID),  # type: ignore[attr-defined]
            "study_uid": str(ds.StudyInstanceUID),  # type: ignore[attr-defined]
            "instance_number": 1,
            "document": base64.b64encode(encode(ds)).decode(),  # type: ignore[arg-type]
        },
        state=State.IN_FLIGHT, attempts=1, next_attempt_at=0.0, last_error="", result=None,
        created_at=0.0, updated_at=0.0,
    )  # fmt: skip


@pytest.mark.parametrize("code", REJECTION_TITLES)
def test_a_forced_rejection_title_is_refused_by_the_check(code: str) -> None:
    ds = kos_for("planning-ct")
    ds.ConceptNameCodeSequence[0].CodeValue = code  # type: ignore[attr-defined]
    with pytest.raises(RejectionTitleRefused, match=f"DCM\\|{code} is a rejection title"):
        refuse_rejection_title(ds, VOCABULARY.allowed_titles)
    # Even an allow-list that was tampered with in memory does not let it through.
    with pytest.raises(RejectionTitleRefused):
        refuse_rejection_title(ds, {f"DCM|{code}"})


@pytest.mark.parametrize("code", REJECTION_TITLES)
def test_a_forced_rejection_title_is_never_sent(tmp_path: Path, code: str) -> None:
    row = forced_rejection_row(code)
    allowed = VOCABULARY.allowed_titles
    # A C-STORE to a port where nothing listens would RETRY if it were tried: DEAD proves it
    # was refused before any connection.
    port = free_port()
    cstore = CStoreDeliverer("NOBODY", "127.0.0.1", port, calling_ae="RTPLAN",
                             allowed=allowed, timeout=2.0)  # fmt: skip
    files = KosFileDeliverer(tmp_path, allowed)
    stow = StowDeliverer(f"http://127.0.0.1:{port}/dicom-web", client=None, allowed=allowed)
    for deliverer in (cstore, files, stow):
        attempt = asyncio.run(deliverer.deliver(row))  # type: ignore[attr-defined]
        assert attempt.verdict.value == "dead"
        assert f"DCM|{code} is a rejection title" in attempt.reason
    assert not (tmp_path / "dicom").exists()


def test_the_builder_refuses_a_rejection_title_it_is_handed() -> None:
    outcome = planning_outcome("planning-ct")
    assert outcome.study is not None
    forced = replace(VOCABULARY, title=DicomCode("113001", "DCM", "Rejected for Quality Reasons"))
    copied = read_study_attributes(outcome.study.source_paths[0], outcome.study_uid)
    plan = KosPlan(outcome.study_uid, "d", 1, 9901)
    with pytest.raises(RejectionTitleRefused):
        build_kos(outcome.study, outcome.classification, copied, forced, plan, NOW)


# -- content -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", PLANNING_CASES)
def test_the_kos_references_every_image_instance_in_a_new_series(case: str) -> None:
    outcome = planning_outcome(case)
    assert outcome.study is not None
    ds = dcmread(BytesIO(encode(kos_for(case))))  # type: ignore[arg-type]
    images = [s for s in outcome.study.series if s.modality in ("CT", "MR", "PT")]
    expected = [(i.sop_class_uid, i.sop_instance_uid) for s in images for i in s.instances]
    assert expected
    assert ds.SOPClassUID == KOS_SOP_CLASS == ds.file_meta.MediaStorageSOPClassUID
    assert ds.Modality == "KO"
    assert ds.SeriesDescription == "RADIOTHERAPY PLANNING SCAN - NOT FOR DIAGNOSTIC USE"
    assert ds.SeriesInstanceUID not in {s.series_instance_uid for s in outcome.study.series}
    assert ds.StudyInstanceUID == outcome.study_uid
    title = ds.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("128198", "DCM")
    assert referenced_instances(ds) == expected
    (evidence,) = ds.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == outcome.study_uid
    by_series = {
        s.SeriesInstanceUID: [
            (r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID) for r in s.ReferencedSOPSequence
        ]
        for s in evidence.ReferencedSeriesSequence
    }
    assert by_series == {
        s.series_instance_uid: [(i.sop_class_uid, i.sop_instance_uid) for i in s.instances]
        for s in images
    }
    (text,) = [item for item in ds.ContentSequence if item.ValueType == "TEXT"]
    assert text.ConceptNameCodeSequence[0].CodeValue == "113012"
    assert text.TextValue.startswith("RADIOTHERAPY PLANNING SCAN - NOT FOR DIAGNOSTIC USE.")
    assert outcome.classification.summary in text.TextValue


@pytest.mark.parametrize("case", PLANNING_CASES)
def test_patient_and_study_attributes_are_copied_exactly(case: str) -> None:
    outcome = planning_outcome(case)
    assert outcome.study is not None
    source = dcmread(outcome.study.source_paths[0], stop_before_pixels=True)
    kos_bytes = encode(kos_for(case))  # type: ignore[arg-type]
    kos = dcmread(BytesIO(kos_bytes))
    # Raw (still encoded) elements: read again and never decoded.
    raw_src = dcmread(outcome.study.source_paths[0], stop_before_pixels=True)
    raw_kos = dcmread(BytesIO(kos_bytes))
    for keyword in ("SpecificCharacterSet", "PatientName", "PatientID", "IssuerOfPatientID",
                    "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
                    "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
                    "StudyDescription", "TimezoneOffsetFromUTC"):  # fmt: skip
        if keyword in source:
            # The encoded bytes, not only the decoded text: the PACS matches on them.
            assert kos[keyword].value == source[keyword].value, keyword
            assert raw_kos.get_item(keyword).value == raw_src.get_item(keyword).value, keyword
    issuer = source.IssuerOfAccessionNumberSequence[0].LocalNamespaceEntityID
    assert kos.IssuerOfAccessionNumberSequence[0].LocalNamespaceEntityID == issuer


def test_the_japanese_character_set_is_kept_with_its_escape_sequences() -> None:
    data = encode(kos_for("charset-jp"))  # type: ignore[arg-type]
    raw = dcmread(BytesIO(data)).get_item("PatientName").value
    assert b"\x1b$B" in raw  # ISO 2022 escape into JIS X 0208, as in the source file
    kos = dcmread(BytesIO(data))
    assert kos.SpecificCharacterSet == ["", "ISO 2022 IR 87"]
    assert str(kos.PatientName) == "Yamada^Tarou=山田^太郎=やまだ^たろう"


def test_a_diagnostic_study_gets_no_kos() -> None:
    settings = replace(SETTINGS, ingest=IngestSettings(workers=1, diagnostic_studies="map"))
    result = run_ingest([DICOM / "diagnostic-ct"], settings, TABLES)
    (outcome,) = result.studies
    assert outcome.bundle is not None  # mapped (without a planning label) ...
    assert not labelled(outcome)  # ... but never labelled on the PACS
    assert outcome.study is not None
    copied = read_study_attributes(outcome.study.source_paths[0], outcome.study_uid)
    plan = KosPlan(outcome.study_uid, "d", 1, 9901)
    with pytest.raises(MappingError, match="not a planning scan"):
        build_kos(outcome.study, outcome.classification, copied, VOCABULARY, plan, NOW)


def test_same_input_same_uids_and_a_new_version_gets_a_new_instance_uid() -> None:
    outcome = planning_outcome("planning-ct")
    first, digest = build_for(outcome, SETTINGS, VOCABULARY, NOW)
    again, _ = build_for(outcome, SETTINGS, VOCABULARY, NOW)
    second, _ = build_for(outcome, SETTINGS, VOCABULARY, NOW, instance_number=2)
    assert encode(first) == encode(again)
    assert first.SOPInstanceUID != second.SOPInstanceUID
    assert first.SeriesInstanceUID == second.SeriesInstanceUID
    assert second.InstanceNumber == 2
    assert len(digest) == 64


def test_content_time_is_written_at_the_study_offset() -> None:
    ds = kos_for("planning-ct")
    offset = ds.TimezoneOffsetFromUTC  # type: ignore[attr-defined]
    expected = NOW.astimezone(
        datetime.strptime(offset, "%z").tzinfo  # type: ignore[arg-type]
    )
    assert ds.ContentDate == expected.strftime("%Y%m%d")  # type: ignore[attr-defined]
    assert ds.ContentTime == expected.strftime("%H%M%S")  # type: ignore[attr-defined]


def test_files_that_are_gone_are_a_clear_problem(tmp_path: Path) -> None:
    with pytest.raises(SourceUnavailable, match="not on disk"):
        read_study_attributes(str(tmp_path / "gone.dcm"), "1.2.3")
    with pytest.raises(SourceUnavailable, match="not on disk"):
        read_study_attributes(f"{tmp_path}/study.zip::a.dcm", "1.2.3")


def test_label_settings_are_checked() -> None:
    from adapter.config import load_settings
    from adapter.errors import ConfigError

    for env, key in (
        ({"RTPLAN_LABEL__CSTORE": "ARCHIVE"}, "label.cstore"),
        ({"RTPLAN_LABEL__CSTORE": "A" * 17 + "@h:104"}, "label.cstore"),
        ({"RTPLAN_LABEL__STOW_RS_URL": "ftp://x"}, "label.stow_rs_url"),
        ({"RTPLAN_LABEL__CALLING_AE": ""}, "label.calling_ae"),
        ({"RTPLAN_LABEL__ENABLED": "perhaps"}, "label.enabled"),
    ):
        with pytest.raises(ConfigError) as caught:
            load_settings(None, env=env)
        assert caught.value.key == key
    settings = load_settings(None, env={"RTPLAN_LABEL__CSTORE": "PACS@127.0.0.1:11112"})
    assert settings.label == LabelSettings(cstore="PACS@127.0.0.1:11112")


def test_content_time_without_a_study_offset_is_the_site_local_time() -> None:
    summer = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)  # 13:00 in Europe/London (BST)
    ds, _ = build_for(planning_outcome("tz-none-summer"), SETTINGS, VOCABULARY, summer)
    assert "TimezoneOffsetFromUTC" not in ds
    assert (ds.ContentDate, ds.ContentTime) == ("20260701", "130000")


def test_an_allow_list_entry_with_spaces_is_a_load_time_error(tmp_path: Path) -> None:
    folder = copy_mappings(tmp_path)
    titles = folder / "pacs-label-titles.yaml"
    titles.write_text(titles.read_text() + '    - "DCM| 113001"\n')
    with pytest.raises(MappingTableError, match=r"rules\.allowed\[1\]: write SCHEME\|CODE"):
        load_vocabulary(load_tables(folder))
