"""Reliability matrix rows 28, 29, 31, 32, 33: crafted hostile files and archives."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import tracemalloc
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from adapter.dicom.header import read_header
from adapter.dicom.limits import MiB, ReadLimits
from adapter.dicom.models import InstanceHeader, Rejection, RejectionKind
from adapter.dicom.walk import read_all

LONDON = ZoneInfo("Europe/London")


from tests.support import FIXTURES, hostile  # noqa: E402

HOSTILE_PY = FIXTURES / "hostile.py"


def rejected(path: Path, limits: ReadLimits | None = None) -> Rejection:
    result = read_header(path, default_tz=LONDON, limits=limits or ReadLimits())
    assert isinstance(result, Rejection), result
    assert result.kind is RejectionKind.QUARANTINED
    return result


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


# --- row 28 ------------------------------------------------------------------------------


def test_huge_declared_length_is_refused_with_low_memory(tmp_path: Path) -> None:
    for path in hostile.write_huge_length(tmp_path):
        assert path.stat().st_size < 400
        tracemalloc.start()
        try:
            reason = rejected(path).reason
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 50 * MiB, (path.name, peak)
        assert "truncated" in reason


def test_huge_length_names_the_element(tmp_path: Path) -> None:
    top, implicit, _ = hostile.write_huge_length(tmp_path)
    assert "(0009,1010) declares 4294967280 bytes" in rejected(top).reason
    assert "SOPClassUID (0008,0016) declares 4294967280 bytes" in rejected(implicit).reason


def test_element_above_max_element_length_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.dcm"
    path.write_bytes(
        hostile.file_meta() + hostile.identity() + hostile.element(0x00400275, "SQ", b"\0" * 4096)
    )
    assert "above the 1024 limit" in rejected(path, ReadLimits(max_element_length=1024)).reason


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "pydicom-path"])
def test_unmapped_private_element_above_the_limit_is_refused(tmp_path: Path, fast: bool) -> None:
    """Issue 14: an element the mapper never reads (a private blob) is held to the limit too."""
    path = tmp_path / "private-blob.dcm"
    path.write_bytes(
        hostile.file_meta()
        + hostile.identity()
        + hostile.element(0x00090010, "LO", b"RTPLANTEST")
        + hostile.element(0x00091001, "OB", b"\0" * 2048)
    )
    result = read_header(
        path, default_tz=LONDON, limits=ReadLimits(max_element_length=1024), fast=fast
    )
    assert isinstance(result, Rejection), result
    assert "(0009,1001) declares 2048 bytes, above the 1024 limit" in result.reason


def test_a_65_mib_private_element_is_refused_by_default(tmp_path: Path) -> None:
    """The documented limit is 64 MiB: 65 MiB inside the file is quarantined, naming the tag."""
    path = tmp_path / "private-65mib.dcm"
    blob = 65 * MiB
    with path.open("wb") as f:
        f.write(hostile.file_meta() + hostile.identity())
        f.write(hostile.element(0x00090010, "LO", b"RTPLANTEST"))
        f.write(hostile.element(0x00091001, "OB", b"", length=blob))
        f.truncate(f.tell() + blob)  # sparse: the bytes are in the file without being written
    assert f"(0009,1001) declares {blob} bytes" in rejected(path).reason


def test_other_files_unaffected_by_hostile_neighbour(tmp_path: Path) -> None:
    hostile.write_huge_length(tmp_path)
    good = tmp_path / "good.dcm"
    good.write_bytes(hostile.file_meta() + hostile.identity())
    headers, rejections = read_all([tmp_path], default_tz=LONDON, workers=2)
    assert [Path(h.path).name for h in headers] == ["good.dcm"]
    assert len(rejections) == 3


# --- row 29 ------------------------------------------------------------------------------


def test_300_level_nesting_is_a_clean_rejection(tmp_path: Path) -> None:
    deep, lazy = hostile.write_nested(tmp_path)
    assert "nesting" in rejected(deep).reason
    assert "nesting deeper than 32 levels" in rejected(lazy).reason


def test_nesting_within_limit_is_read(tmp_path: Path) -> None:
    path = tmp_path / "ok.dcm"
    path.write_bytes(hostile.file_meta() + hostile.identity() + hostile.nested_sequence(5))
    assert isinstance(read_header(path, default_tz=LONDON), InstanceHeader)
    assert "nesting" in rejected(path, ReadLimits(max_sequence_depth=4)).reason


# --- row 31 ------------------------------------------------------------------------------


def test_malicious_uids_are_rejected_and_nothing_written(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    paths = hostile.write_malicious_uids(src)
    before = tree(tmp_path)
    for path in paths:
        reason = rejected(path).reason
        expected = "StudyInstanceUID" if "study" in path.name else "SOPInstanceUID"
        assert reason.startswith(f"invalid UID in {expected} (")
        for bad in hostile.MALICIOUS_UIDS.values():
            assert bad not in reason
    assert tree(tmp_path) == before
    assert not (tmp_path.parent / "x").exists()


# --- row 32 ------------------------------------------------------------------------------


def test_deflate_bomb_is_bounded(tmp_path: Path) -> None:
    path = hostile.write_deflate_bomb(tmp_path, inflated=256 * MiB)  # > 128 MiB default
    assert path.stat().st_size < 2 * MiB
    tracemalloc.start()
    try:
        reason = rejected(path).reason
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "decompression bomb" in reason
    assert peak < 50 * MiB


def test_small_limits_catch_smaller_bomb_and_ratio(tmp_path: Path) -> None:
    path = hostile.write_deflate_bomb(tmp_path, inflated=8 * MiB)
    assert "bomb" in rejected(path, ReadLimits(max_inflated_size=4 * MiB)).reason
    assert "bomb" in rejected(path, ReadLimits(ratio_floor=1 * MiB)).reason


def test_honest_deflated_file_is_read() -> None:
    from pydicom.data import get_testdata_file

    name = get_testdata_file("image_dfl.dcm")
    assert name is not None
    assert isinstance(read_header(Path(str(name)), default_tz=LONDON), InstanceHeader)


# --- row 33 ------------------------------------------------------------------------------


def test_zip_traversal_absolute_and_symlink_members(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    cases = hostile.write_zip_cases(src, many=10, bomb=1 * MiB)
    before = tree(tmp_path)
    headers, rejections = read_all([cases["traversal"]], default_tz=LONDON)
    assert [h.path for h in headers] == [f"{cases['traversal']}::ok/a.dcm"]
    reasons = {r.path.split("::")[1]: r.reason for r in rejections}
    assert reasons == {
        "../../evil.dcm": "member path with '..' refused",
        "/abs/evil.dcm": "absolute member path refused",
        "ok/link.dcm": "symbolic link not followed",
    }
    assert tree(tmp_path) == before  # temp expansion removed, nothing written outside


def test_zip_member_count_cap(tmp_path: Path) -> None:
    cases = hostile.write_zip_cases(tmp_path, many=101, bomb=1 * MiB)
    _, rejections = read_all(
        [cases["many"]], default_tz=LONDON, limits=ReadLimits(max_archive_members=100)
    )
    assert [r.reason for r in rejections] == ["archive has 101 members, above the 100 limit"]


def test_zip_with_20001_entries_refused_by_default(tmp_path: Path) -> None:
    cases = hostile.write_zip_cases(tmp_path, many=20_001, bomb=1 * MiB)
    _, rejections = read_all([cases["many"]], default_tz=LONDON)
    assert [r.path for r in rejections] == [str(cases["many"])]
    assert "20001 members" in rejections[0].reason


def test_zip_bomb_refused(tmp_path: Path) -> None:
    cases = hostile.write_zip_cases(tmp_path, many=1, bomb=64 * MiB)
    _, rejections = read_all([cases["bomb"]], default_tz=LONDON)
    assert len(rejections) == 1 and "ratio" in rejections[0].reason
    _, rejections = read_all(
        [cases["bomb"]], default_tz=LONDON, limits=ReadLimits(max_archive_bytes=1 * MiB)
    )
    assert "expands beyond" in rejections[0].reason


def test_tar_members_filtered(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    archive = hostile.write_tar_cases(src)["traversal"]
    before = tree(tmp_path)
    headers, rejections = read_all([archive], default_tz=LONDON)
    assert [h.path for h in headers] == [f"{archive}::ok/a.dcm"]
    reasons = {r.path.split("::")[1]: r.reason for r in rejections}
    assert reasons == {
        "../evil.dcm": "member path with '..' refused",
        "/abs/evil.dcm": "absolute member path refused",
        "ok/sym.dcm": "symbolic link not followed",
        "ok/hard.dcm": "hard link not followed",
        "ok/fifo": "special file (device/FIFO) refused",
    }
    assert tree(tmp_path) == before


def test_plain_tar_and_nested_archive(tmp_path: Path) -> None:
    good = tmp_path / "a.dcm"
    good.write_bytes(hostile.file_meta() + hostile.identity())
    inner = tmp_path / "inner.zip"
    import zipfile

    with zipfile.ZipFile(inner, "w") as zf:
        zf.write(good, "a.dcm")
    outer = tmp_path / "outer.tar"
    with tarfile.open(outer, "w") as tf:
        tf.add(good, "x/a.dcm")
        tf.add(inner, "x/inner.zip")
    headers, rejections = read_all([outer], default_tz=LONDON)
    assert [h.path for h in headers] == [f"{outer}::x/a.dcm"]
    assert [(r.path, r.reason) for r in rejections] == [
        (f"{outer}::x/inner.zip", "nested archive not expanded")
    ]


def test_corrupt_archive_is_a_rejection(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not really")
    _, rejections = read_all([bad], default_tz=LONDON)
    assert rejections[0].reason.startswith("unreadable archive")


# --- the builder itself ------------------------------------------------------------------


@pytest.mark.parametrize("args", [[], ["a", "b"]])
def test_main_usage(args: list[str]) -> None:
    assert hostile.main(args) == 2


def test_main_writes_cases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The full-size bombs take seconds; main's wiring is what is tested here.
    monkeypatch.setattr(hostile, "write_deflate_bomb", lambda out: out / "deflate_bomb.dcm")
    monkeypatch.setattr(hostile, "write_zip_cases", lambda out: {})
    assert hostile.main([str(tmp_path)]) == 0
    assert (tmp_path / "nested_300.dcm").exists()
    assert (tmp_path / "traversal.tar.gz").exists()
    usage = subprocess.run([sys.executable, str(HOSTILE_PY)], capture_output=True, check=False)
    assert usage.returncode == 2
