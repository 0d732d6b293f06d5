"""The receiver's own scan for the spool's three elements agrees with ``identify`` (pydicom):
on every bundled file, re-encoded in each syntax the scan reads, and on damaged bytes it
either defers (None) or gives exactly what ``identify`` gives."""

from __future__ import annotations

import warnings
from io import BytesIO
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from adapter.receive.scan import scan_identity
from adapter.receive.spool import Identity, NotStorable, identify
from tests.receive_support import data_set_offset
from tests.support import FIXTURES

FILES = sorted((FIXTURES / "dicom").rglob("*.dcm"))


def reference(raw: bytes) -> Identity | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's words on damaged bytes
        try:
            return identify(raw)
        except NotStorable:
            return None


def encoded(path: Path, syntax: str, *, undefined_lengths: bool = False) -> bytes:
    ds = dcmread(path)
    if undefined_lengths:
        _undefined(ds)
    ds.file_meta.TransferSyntaxUID = syntax
    out = BytesIO()
    dcmwrite(
        out,
        ds,
        implicit_vr=syntax == ImplicitVRLittleEndian,
        little_endian=syntax != ExplicitVRBigEndian,
        force_encoding=syntax == ExplicitVRBigEndian,  # from a little endian file
    )
    return out.getvalue()


def _undefined(ds: Dataset) -> None:
    """Every sequence and item of undefined length, as many modalities write them."""
    for element in ds:
        if element.VR == "SQ":
            element.is_undefined_length = True
            for item in element.value:
                item.is_undefined_length_sequence_item = True
                _undefined(item)


def test_the_fixtures_cover_more_than_one_study() -> None:
    assert len(FILES) >= 20
    assert len({reference(p.read_bytes()) for p in FILES}) >= 20


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_each_bundled_file_reads_as_identify_reads_it(path: Path) -> None:
    raw = path.read_bytes()
    syntax = str(dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)
    found = scan_identity(raw, data_set_offset(raw), syntax)
    assert found is not None, "the scan should read a plain bundled file itself"
    assert found == reference(raw)


@pytest.mark.parametrize(
    ("syntax", "undefined"),
    [
        (ImplicitVRLittleEndian, False),
        (ImplicitVRLittleEndian, True),
        (ExplicitVRLittleEndian, True),
    ],
    ids=["implicit", "implicit-undefined-lengths", "explicit-undefined-lengths"],
)
def test_other_encodings_of_the_same_files_read_alike(syntax: str, undefined: bool) -> None:
    for path in FILES[::7]:
        raw = encoded(path, syntax, undefined_lengths=undefined)
        found = scan_identity(raw, data_set_offset(raw), syntax)
        assert found is not None and found == reference(raw), path.name


def test_big_endian_is_left_to_identify() -> None:
    raw = encoded(FILES[0], ExplicitVRBigEndian)
    assert scan_identity(raw, data_set_offset(raw), ExplicitVRBigEndian) is None
    assert reference(raw) is not None


def test_a_missing_study_uid_is_left_to_identify_which_refuses_it() -> None:
    ds = dcmread(FILES[0])
    del ds.StudyInstanceUID
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    raw = out.getvalue()
    assert scan_identity(raw, data_set_offset(raw), ExplicitVRLittleEndian) is None
    assert reference(raw) is None


SEED = FILES[0].read_bytes()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(st.integers(0, 4000), st.integers(0, 255)),
        min_size=1,
        max_size=6,
    ),
    st.integers(200, len(SEED)),
)
def test_damaged_bytes_are_read_alike_or_left_to_identify(
    edits: list[tuple[int, int]], cut: int
) -> None:
    start = data_set_offset(SEED)
    raw = bytearray(SEED[:cut] if cut > start else SEED)
    for offset, value in edits:
        position = start + offset
        if position < len(raw):
            raw[position] = value
    data = bytes(raw)
    found = scan_identity(data, start, ExplicitVRLittleEndian)
    if found is not None:
        assert found == reference(data)
