"""read_header / read_all: shipped odd files, charsets, time zones, RT references, PHI."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pydicom.config import disable_value_validation
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

from adapter.dicom.header import read_header
from adapter.dicom.limits import ReadLimits, is_valid_uid
from adapter.dicom.models import InstanceHeader, Rejection, RejectionKind
from adapter.dicom.walk import iter_files, read_all

LONDON = ZoneInfo("Europe/London")


def make_ds(**attrs: Any) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.1.1"
    ds.file_meta.SourceApplicationEntityTitle = "CTSCANNER"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.1.1"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.1"
    ds.Modality = "CT"
    ds.InstanceNumber = 1
    ds.PatientName = "ZZCANARY^PHI"
    ds.PatientID = "CANARY123"
    ds.AccessionNumber = "CANARYACC"
    for key, value in attrs.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    return ds


def patch(path: Path, old: bytes, new: bytes) -> None:
    """Swap bytes of equal length: pydicom refuses to write invalid values itself."""
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new))


def write(ds: Dataset, path: Path) -> Path:
    ds.save_as(path, enforce_file_format=True)
    return path


def header(path: Path, **kw: Any) -> InstanceHeader:
    result = read_header(path, default_tz=LONDON, **kw)
    assert isinstance(result, InstanceHeader), result
    return result


def rejection(path: Path, **kw: Any) -> Rejection:
    result = read_header(path, default_tz=LONDON, **kw)
    assert isinstance(result, Rejection), result
    return result


def shipped(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None
    return Path(str(path))


# --- row 27: truncated files -------------------------------------------------------------


@pytest.mark.parametrize("name", ["rtplan_truncated.dcm", "MR_truncated.dcm"])
def test_truncated_shipped_files_are_quarantined(name: str) -> None:
    r = rejection(shipped(name))
    assert r.kind is RejectionKind.QUARANTINED
    assert "truncated" in r.reason


def test_untruncated_twins_are_read() -> None:
    assert header(shipped("rtplan.dcm")).modality == "RTPLAN"
    assert header(shipped("MR_small.dcm")).modality == "MR"


def test_file_cut_short_in_pixel_data_is_quarantined(tmp_path: Path) -> None:
    ds = make_ds(
        Rows=4,
        Columns=4,
        BitsAllocated=16,
        BitsStored=16,
        HighBit=15,
        SamplesPerPixel=1,
        PixelRepresentation=0,
        PhotometricInterpretation="MONOCHROME2",
        PixelData=b"\0" * 32,
    )
    full = write(ds, tmp_path / "full.dcm")
    assert header(full).sop_instance_uid == "1.2.3.4.1.1"
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(full.read_bytes()[:-10])
    assert "truncated" in rejection(cut).reason


def test_pixel_data_shorter_than_geometry_is_quarantined(tmp_path: Path) -> None:
    ds = make_ds(Rows=4, Columns=4, BitsAllocated=16, SamplesPerPixel=1, PixelData=b"\0" * 16)
    r = rejection(write(ds, tmp_path / "short.dcm"))
    assert "geometry" in r.reason


# --- row 30: no meta, missing transfer syntax, bad VR -------------------------------------


def test_no_meta_is_quarantined_with_reason() -> None:
    r = rejection(shipped("no_meta.dcm"))
    assert r.kind is RejectionKind.QUARANTINED
    assert "file meta" in r.reason


def test_meta_without_transfer_syntax_is_quarantined() -> None:
    r = rejection(shipped("meta_missing_tsyntax.dcm"))
    assert r.kind is RejectionKind.QUARANTINED
    assert "TransferSyntaxUID (0002,0010)" in r.reason


def test_bad_vr_in_geometry_is_quarantined_without_warning_escaping() -> None:
    # pytest runs with filterwarnings=error: a leaked UserWarning would fail this test.
    r = rejection(shipped("badVR.dcm"))
    assert r.reason == "invalid value in NumberOfFrames (0028,0008)"


def test_invalid_optional_number_strict_and_lenient(tmp_path: Path) -> None:
    path = write(make_ds(InstanceNumber=987654), tmp_path / "bad_is.dcm")
    patch(path, b"987654", b"1A    ")
    assert rejection(path).reason == "invalid value in InstanceNumber (0020,0013)"
    assert header(path, limits=ReadLimits(strict=False)).instance_number is None


def test_text_file_and_empty_file_are_not_dicom(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not DICOM\n" * 20)
    empty = tmp_path / "empty.dcm"
    empty.write_bytes(b"")
    assert rejection(text).kind is RejectionKind.NOT_DICOM
    assert rejection(text).reason == "not a DICOM file"
    assert rejection(empty).kind is RejectionKind.NOT_DICOM


def test_preamble_magic_alone_is_not_enough(tmp_path: Path) -> None:
    polyglot = tmp_path / "polyglot.dcm"
    polyglot.write_bytes(b"MZ" + b"\0" * 126 + b"DICM" + b"\xff" * 40)
    assert rejection(polyglot).kind is RejectionKind.QUARANTINED


# --- required attributes and UIDs (row 31 also in test_hostile_inputs) --------------------


@pytest.mark.parametrize(
    "keyword",
    ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality"],
)
def test_missing_required_attribute_is_named(tmp_path: Path, keyword: str) -> None:
    r = rejection(write(make_ds(**{keyword: None}), tmp_path / "x.dcm"))
    assert r.reason.startswith(f"missing required attribute {keyword} (")


@pytest.mark.parametrize(
    ("uid", "ok"),
    [
        ("1.2.840.10008.1.2", True),
        ("0", True),
        ("1.0.2", True),
        ("1" * 64, True),
        ("1" * 65, False),
        ("1.02", False),
        ("../../x", False),
        ("/etc/y", False),
        ("1.2.abc", False),
        ("", False),
        ("1..2", False),
        ("1.2.", False),
    ],
)
def test_uid_syntax(uid: str, ok: bool) -> None:
    assert is_valid_uid(uid) is ok


# --- charsets ----------------------------------------------------------------------------


def test_latin1_person_name(tmp_path: Path) -> None:
    ds = make_ds(
        SpecificCharacterSet="ISO_IR 100",
        PatientName="Müller^Jürgen^Karl^Dr.",
        StudyDescription="Schädel",
    )
    h = header(write(ds, tmp_path / "latin1.dcm"))
    assert h.patient.name.family == "Müller"
    assert h.patient.name.given == ("Jürgen", "Karl")
    assert h.patient.name.prefix == "Dr."
    assert h.study_description == "Schädel"


def test_utf8_text(tmp_path: Path) -> None:
    ds = make_ds(
        SpecificCharacterSet="ISO_IR 192",
        PatientName="Łukasz^Żółć",
        ReferringPhysicianName="Ωmega^Ελένη",
        StudyDescription="胸部 CT",
    )
    h = header(write(ds, tmp_path / "utf8.dcm"))
    assert (h.patient.name.family, h.patient.name.given) == ("Łukasz", ("Żółć",))
    assert h.referring_physician.given == ("Ελένη",)
    assert h.study_description == "胸部 CT"


def test_iso2022_japanese_person_name(tmp_path: Path) -> None:
    ds = make_ds(
        SpecificCharacterSet=["", "ISO 2022 IR 87"],
        PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう",
    )
    h = header(write(ds, tmp_path / "jp.dcm"))
    name = h.patient.name
    assert (name.family, name.given) == ("Yamada", ("Tarou",))
    assert name.ideographic == "山田^太郎"
    assert name.phonetic == "やまだ^たろう"


# --- time zones --------------------------------------------------------------------------


@pytest.mark.parametrize(("day", "offset"), [("20240715", 1), ("20240115", 0)])
def test_default_zone_is_dst_aware(tmp_path: Path, day: str, offset: int) -> None:
    ds = make_ds(StudyDate=day, StudyTime="093000", SeriesDate=day, SeriesTime="0945")
    h = header(write(ds, tmp_path / "t.dcm"))
    assert h.study_started is not None and h.series_started is not None
    assert h.study_started.utcoffset() == timedelta(hours=offset)
    assert h.series_started.utcoffset() == timedelta(hours=offset)
    assert (h.study_started.hour, h.study_started.minute) == (9, 30)


def test_timezone_offset_tag_wins(tmp_path: Path) -> None:
    ds = make_ds(StudyDate="20240715", StudyTime="093000.5", TimezoneOffsetFromUTC="-0500")
    h = header(write(ds, tmp_path / "t.dcm"))
    assert h.study_started == datetime(2024, 7, 15, 14, 30, 0, 500000, tzinfo=ZoneInfo("UTC"))
    assert h.study_started is not None
    assert h.study_started.utcoffset() == timedelta(hours=-5)


def test_bad_dates_give_none_not_quarantine(tmp_path: Path) -> None:
    ds = make_ds()
    with disable_value_validation():
        ds.add_new(0x00080020, "DA", "2024-13-45")
        ds.add_new(0x00080021, "DA", "20240230")
        ds.add_new(0x00080031, "TM", "99")
        path = write(ds, tmp_path / "bad_dates.dcm")
    h = header(path)
    assert h.study_started is None and h.series_started is None


# --- codes, issuers, RT references -------------------------------------------------------


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


def test_order_and_descriptive_attributes(tmp_path: Path) -> None:
    issuer = Dataset()
    issuer.LocalNamespaceEntityID = "RIS-A"
    request = Dataset()
    request.RequestedProcedureID = "RP1"
    request.ReasonForTheRequestedProcedure = "planning"
    request.RequestedProcedureCodeSequence = Sequence([_code("RPCT", "L", "CT planning")])
    ds = make_ds(
        IssuerOfAccessionNumberSequence=Sequence([issuer]),
        IssuerOfPatientID="H1",
        ProcedureCodeSequence=Sequence([_code("P1", "99L", "CT thorax")]),
        RequestAttributesSequence=Sequence([request]),
        ContrastBolusAgent="Omnipaque",
        ImageLaterality="L",
        ReferringPhysicianName="Who^Doctor",
        NumberOfStudyRelatedInstances=3,
        SeriesNumber=2,
    )
    h = header(write(ds, tmp_path / "order.dcm"))
    assert h.accession_issuer == "RIS-A" and h.patient.issuer == "H1"
    assert [c.code for c in h.procedure_codes] == ["P1"]
    assert [(c.code, c.meaning) for c in h.requested_procedure_codes] == [("RPCT", "CT planning")]
    assert (h.requested_procedure_id, h.reason_for_request) == ("RP1", "planning")
    assert (h.contrast_agent, h.laterality) == ("Omnipaque", "L")
    assert h.referring_physician.family == "Who"
    assert (h.number_of_study_related_instances, h.series_number) == (3, 2)
    assert h.source_ae_title == "CTSCANNER"
    assert h.rt is None


def rtstruct(image_uids: list[str], *, sop: str = "1.2.3.4.9.1") -> Dataset:
    contour = Sequence()
    for uid in image_uids:
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = uid
        contour.append(item)
    series = Dataset()
    series.SeriesInstanceUID = "1.2.3.4.1"
    series.ContourImageSequence = contour
    study = Dataset()
    study.ReferencedSOPInstanceUID = "1.2.3.4"
    study.RTReferencedSeriesSequence = Sequence([series])
    frame = Dataset()
    frame.FrameOfReferenceUID = "1.2.3.4.77"
    frame.RTReferencedStudySequence = Sequence([study])
    return make_ds(
        SOPClassUID="1.2.840.10008.5.1.4.1.1.481.3",
        SOPInstanceUID=sop,
        SeriesInstanceUID="1.2.3.4.9",
        Modality="RTSTRUCT",
        FrameOfReferenceUID="1.2.3.4.77",
        ReferencedFrameOfReferenceSequence=Sequence([frame]),
    )


def test_rtstruct_references(tmp_path: Path) -> None:
    h = header(write(rtstruct(["1.2.3.4.1.1", "1.2.3.4.1.2"]), tmp_path / "rs.dcm"))
    assert h.rt is not None
    assert h.rt.frame_of_reference_uids == ("1.2.3.4.77",)
    assert h.rt.series_uids == ("1.2.3.4.1",)
    assert h.rt.sop_instance_uids == ("1.2.3.4.1.1", "1.2.3.4.1.2")


def test_rtplan_structure_set_reference() -> None:
    h = header(shipped("rtplan.dcm"))
    assert h.rt is not None
    assert h.rt.referenced_structure_set_uids == ("1.2.333.444.55.6.7777.88888",)


def test_invalid_referenced_uid_quarantines(tmp_path: Path) -> None:
    with disable_value_validation():
        path = write(rtstruct(["../../x"]), tmp_path / "rs.dcm")
    r = rejection(path)
    assert r.reason == "invalid UID in ReferencedSOPInstanceUID (0008,1155)"


# --- PHI never in reasons ----------------------------------------------------------------


def test_no_rejection_reason_contains_patient_data(tmp_path: Path) -> None:
    with disable_value_validation():
        cases = [
            make_ds(StudyInstanceUID=None),
            make_ds(Modality=None),
            make_ds(SOPInstanceUID="CANARY123"),
        ]
        paths = [write(ds, tmp_path / f"c{i}.dcm") for i, ds in enumerate(cases)]
    paths.append(write(make_ds(InstanceNumber=1234567890), tmp_path / "bad_is.dcm"))
    patch(paths[-1], b"1234567890", b"CANARY123 ")
    truncated = tmp_path / "cut.dcm"
    truncated.write_bytes(paths[0].read_bytes()[:-7])
    paths.append(truncated)
    headers, rejections = read_all(paths, default_tz=LONDON)
    assert not headers and len(rejections) == len(paths)
    for r in rejections:
        for canary in ("ZZCANARY", "PHI", "CANARY123", "CANARYACC"):
            assert canary not in r.reason


# --- a mixed folder ----------------------------------------------------------------------


def test_mixed_folder_every_file_accounted_for(tmp_path: Path) -> None:
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    for i in range(3):
        ds = make_ds(SOPInstanceUID=f"1.2.3.4.1.{i + 1}", InstanceNumber=i + 1)
        write(ds, root / "sub" / f"ct{i}.dcm")
    (root / "readme.txt").write_text("not dicom")
    (root / ".hidden").write_bytes(b"\0" * 10)
    broken = root / "broken.dcm"
    broken.write_bytes((root / "sub" / "ct0.dcm").read_bytes()[:200])
    shutil.copy(shipped("rtplan_truncated.dcm"), root / "rtplan_truncated.dcm")
    (root / "link.dcm").symlink_to(root / "sub" / "ct0.dcm")
    (root / "linkdir").symlink_to(root / "sub")
    files = list(iter_files([root]))
    assert [p.relative_to(root).as_posix() for p in files] == [
        ".hidden",
        "broken.dcm",
        "link.dcm",
        "linkdir",
        "readme.txt",
        "rtplan_truncated.dcm",
        "sub/ct0.dcm",
        "sub/ct1.dcm",
        "sub/ct2.dcm",
    ]
    assert len(files) == 9
    for workers in (1, 2):
        headers, rejections = read_all([root], default_tz=LONDON, workers=workers)
        assert len(headers) + len(rejections) == len(files)
        assert len(headers) == 3
        reasons = {Path(r.path).name: r.reason for r in rejections}
        assert reasons["link.dcm"] == "symbolic link not followed"
        assert reasons["linkdir"] == "symbolic link not followed"
        assert reasons["readme.txt"] == "not a DICOM file"


def test_parallel_results_match_serial(tmp_path: Path) -> None:
    for i in range(80):
        write(
            make_ds(SOPInstanceUID=f"1.2.3.4.1.{i + 1}", InstanceNumber=i + 1),
            tmp_path / f"{i:03d}.dcm",
        )
    (tmp_path / "x.txt").write_text("x")
    assert read_all([tmp_path], default_tz=LONDON, workers=2) == read_all(
        [tmp_path], default_tz=LONDON, workers=1
    )


def test_worker_crash_becomes_rejection_for_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import adapter.dicom.walk as walk

    for i in range(40):
        write(make_ds(SOPInstanceUID=f"1.2.3.4.1.{i + 1}"), tmp_path / f"{i:03d}.dcm")
    real = walk.read_header

    def crashing(path: Path, **kw: Any) -> InstanceHeader | Rejection:
        if path.name == "007.dcm":
            os._exit(9)  # a segfault/OOM kill in the worker, as the parent sees it
        if path.name == "008.dcm":
            raise MemoryError
        return real(path, **kw)

    monkeypatch.setattr(walk, "read_header", crashing)  # inherited by forked workers
    headers, rejections = read_all([tmp_path], default_tz=LONDON, workers=2)
    assert len(headers) == 38
    assert {(Path(r.path).name, r.reason) for r in rejections} == {
        ("007.dcm", "reader process crashed on this file"),
        ("008.dcm", "internal error while reading (MemoryError)"),
    }
