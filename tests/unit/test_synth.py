"""The synthetic DICOM generator (fixtures/synth.py) produces what it promises."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
BUNDLED = FIXTURES / "dicom"
UID_RE = re.compile(r"^2\.25\.[1-9][0-9]*$")


from tests.support import synth  # noqa: E402


def _read_dir(path: Path) -> dict[str, Dataset]:
    return {p.name: dcmread(p) for p in sorted(path.glob("*.dcm"))}


def _by_modality(datasets: dict[str, Dataset], modality: str) -> list[Dataset]:
    return [ds for ds in datasets.values() if ds.Modality == modality]


def _contour_chain(rtstruct: Dataset) -> tuple[str, str, list[str]]:
    ref_for = rtstruct.ReferencedFrameOfReferenceSequence[0]
    series = ref_for.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    sops = [item.ReferencedSOPInstanceUID for item in series.ContourImageSequence]
    return ref_for.FrameOfReferenceUID, series.SeriesInstanceUID, sops


def test_uid_derivation_is_valid_and_documented() -> None:
    import hashlib

    uid = synth.uid_for("planning-ct", "/study")
    digest = hashlib.sha256(b"planning-ct/study").digest()
    assert uid == f"2.25.{int.from_bytes(digest[:16], 'big')}"
    assert UID_RE.match(uid) and len(uid) <= 64


@pytest.mark.parametrize("case", sorted(synth.CASES))
def test_bundled_case_reads_back_and_is_well_formed(case: str) -> None:
    datasets = _read_dir(BUNDLED / case)
    assert datasets, f"no files for {case}"
    study_uids = {ds.StudyInstanceUID for ds in datasets.values()}
    assert len(study_uids) == 1
    for name, ds in datasets.items():
        meta = ds.file_meta
        assert meta.TransferSyntaxUID == ExplicitVRLittleEndian, name
        assert meta.SourceApplicationEntityTitle == synth.SOURCE_AE_TITLE
        assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID):
            assert UID_RE.match(uid) and len(uid) <= 64, uid
        if "PixelData" in ds:
            assert len(ds.PixelData) == ds.Rows * ds.Columns * ds.BitsAllocated // 8
            assert ds.pixel_array.shape == (16, 16)


def test_planning_ct_rt_chain(tmp_path: Path) -> None:
    paths = synth.planning_ct(tmp_path)
    assert len(paths) == 10
    datasets = _read_dir(tmp_path)
    cts = sorted(_by_modality(datasets, "CT"), key=lambda ds: ds.InstanceNumber)
    (rtstruct,) = _by_modality(datasets, "RTSTRUCT")
    (rtplan,) = _by_modality(datasets, "RTPLAN")
    assert [ds.InstanceNumber for ds in cts] == list(range(1, 9))
    assert len({ds.FrameOfReferenceUID for ds in cts}) == 1
    assert len({ds.SeriesInstanceUID for ds in datasets.values()}) == 3
    assert [float(ds.ImagePositionPatient[2]) for ds in cts] == sorted(
        float(ds.ImagePositionPatient[2]) for ds in cts
    )
    assert {ds.NumberOfStudyRelatedInstances for ds in datasets.values()} == {10}
    assert {ds.PatientPosition for ds in cts} == {"HFS"}
    for_uid, series_uid, sops = _contour_chain(rtstruct)
    assert rtstruct.SOPClassUID == synth.RT_STRUCTURE_SET_STORAGE
    assert for_uid == cts[0].FrameOfReferenceUID
    assert series_uid == cts[0].SeriesInstanceUID
    assert sops == [ds.SOPInstanceUID for ds in cts]
    assert rtstruct.StructureSetROISequence[0].ROIName == "PTV"
    assert rtplan.SOPClassUID == synth.RT_PLAN_STORAGE
    assert rtplan.FrameOfReferenceUID == cts[0].FrameOfReferenceUID
    assert rtplan.ReferencedStructureSetSequence[0].ReferencedSOPInstanceUID == (
        rtstruct.SOPInstanceUID
    )
    ct = cts[0]
    assert ct.ProcedureCodeSequence[0].CodeValue == "CTSIMPEL"
    assert ct.RequestAttributesSequence[0].RequestedProcedureID == "RP0001"
    assert ct.RequestAttributesSequence[0].ReasonForTheRequestedProcedure == (
        "Radiotherapy planning"
    )
    assert ct.IssuerOfAccessionNumberSequence[0].LocalNamespaceEntityID == "HOSP-ACC"
    assert ct.TimezoneOffsetFromUTC == "+0000"
    assert "ContrastBolusAgent" not in ct


def test_mr_only_and_pet_ct_share_frame_of_reference() -> None:
    mr = _read_dir(BUNDLED / "planning-mr")
    (rs,) = _by_modality(mr, "RTSTRUCT")
    images = _by_modality(mr, "MR")
    assert _contour_chain(rs)[0] == images[0].FrameOfReferenceUID
    assert _contour_chain(rs)[1] == images[0].SeriesInstanceUID
    assert "TimezoneOffsetFromUTC" not in images[0]

    pet = _read_dir(BUNDLED / "pet-ct")
    (rs,) = _by_modality(pet, "RTSTRUCT")
    ct, pt = _by_modality(pet, "CT"), _by_modality(pet, "PT")
    assert pt[0].SOPClassUID == synth.PET_IMAGE_STORAGE
    assert pt[0].FrameOfReferenceUID == ct[0].FrameOfReferenceUID
    assert _contour_chain(rs)[1] == ct[0].SeriesInstanceUID
    assert pt[0].SeriesInstanceUID != ct[0].SeriesInstanceUID


def test_diagnostic_ct_is_same_patient_without_rt() -> None:
    diag = _read_dir(BUNDLED / "diagnostic-ct")
    plan = _read_dir(BUNDLED / "planning-ct")
    assert {ds.Modality for ds in diag.values()} == {"CT"}
    d, p = next(iter(diag.values())), next(iter(plan.values()))
    assert (d.PatientID, str(d.PatientName)) == (p.PatientID, str(p.PatientName))
    assert d.StudyInstanceUID != p.StudyInstanceUID
    assert d.FrameOfReferenceUID != p.FrameOfReferenceUID
    assert d.ContrastBolusAgent
    assert d.ProcedureCodeSequence[0].CodeValue == "CTCHESTC"


@pytest.mark.parametrize(
    ("case", "charset", "name"),
    [
        ("charset-latin1", "ISO_IR 100", "MÜLLER^JÜRGEN"),
        ("charset-utf8", "ISO_IR 192", "Ğüneş^Ayşe"),
        ("charset-jp", ["", "ISO 2022 IR 87"], "Yamada^Tarou=山田^太郎=やまだ^たろう"),
    ],
)
def test_charsets_round_trip(case: str, charset: object, name: str) -> None:
    for ds in _read_dir(BUNDLED / case).values():
        assert ds.SpecificCharacterSet == charset
        assert str(ds.PatientName) == name


def test_japanese_name_uses_iso_2022_escapes() -> None:
    raw = (BUNDLED / "charset-jp" / "charset-jp_CT_0001.dcm").read_bytes()
    assert b"Yamada^Tarou=\x1b$B;3ED\x1b(B^\x1b$BB@O:\x1b(B=" in raw


def test_incomplete_study_keeps_count_and_references() -> None:
    datasets = _read_dir(BUNDLED / "incomplete-ct")
    cts = _by_modality(datasets, "CT")
    assert sorted(ds.InstanceNumber for ds in cts) == [1, 2, 3, 5, 6, 7, 8]
    assert {ds.NumberOfStudyRelatedInstances for ds in datasets.values()} == {10}
    (rs,) = _by_modality(datasets, "RTSTRUCT")
    sops = _contour_chain(rs)[2]
    assert len(sops) == 8
    assert set(sops) - {ds.SOPInstanceUID for ds in cts} == {
        synth.uid_for("incomplete-ct", "/ct/sop/4")
    }


@pytest.mark.parametrize(("case", "month"), [("tz-none-summer", "07"), ("tz-none-winter", "01")])
def test_tz_none_cases(case: str, month: str) -> None:
    for ds in _read_dir(BUNDLED / case).values():
        assert "TimezoneOffsetFromUTC" not in ds
        assert ds.StudyDate[4:6] == month


def test_two_runs_are_byte_identical(tmp_path: Path) -> None:
    first = synth.pet_ct(tmp_path / "a")
    second = synth.pet_ct(tmp_path / "b")
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


@pytest.mark.parametrize("case", sorted(synth.CASES))
def test_bundled_fixtures_match_generator(case: str, tmp_path: Path) -> None:
    """Golden outputs depend on these bytes: regenerate with fixtures/regenerate.sh."""
    written = synth.write_case(case, tmp_path)
    bundled = sorted(p.name for p in (BUNDLED / case).glob("*.dcm"))
    assert sorted(p.name for p in written) == bundled
    for path in written:
        assert path.read_bytes() == (BUNDLED / case / path.name).read_bytes(), path.name


def test_cli_bench_copies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        str(tmp_path),
        "--case",
        "bench",
        "--slices",
        "3",
        "--mr-slices",
        "2",
        "--rows",
        "8",
        "--cols",
        "8",
        "--copies",
        "2",
    ]
    assert synth.main(args) == 0
    assert "wrote 12 files" in capsys.readouterr().out
    studies = set()
    for sub in ("bench-000", "bench-001"):
        datasets = _read_dir(tmp_path / sub)
        assert sorted(ds.Modality for ds in datasets.values()) == [
            "CT",
            "CT",
            "CT",
            "MR",
            "MR",
            "RTSTRUCT",
        ]
        studies |= {ds.StudyInstanceUID for ds in datasets.values()}
        assert {ds.NumberOfStudyRelatedInstances for ds in datasets.values()} == {6}
    assert len(studies) == 2


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing_slices"):
        synth.planning_ct(tmp_path, missing_slices=(9,))
    with pytest.raises(ValueError, match="rtplan"):
        synth.planning_ct(tmp_path, rtstruct=False)
