"""pydicom's bundled vendor files (GE, Siemens, big endian, implicit VR, JPEG 2000, RLE,
deflate, RT objects): none crashes the run, each is accounted for, none is called a planning
scan (none is one), and the raw dataset without file meta is quarantined with its reason."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from adapter.config import IngestSettings, Settings
from adapter.ingest.pipeline import Status, run_ingest
from adapter.tables import load_tables

pytestmark = pytest.mark.store  # every test here reaches the store: both backends

VENDOR_FILES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "rtplan.dcm",
    "rtstruct.dcm",
    "rtdose.dcm",
    "JPEG2000.dcm",
    "liver_1frame.dcm",
    "SC_rgb_rle.dcm",
    "ExplVR_BigEnd.dcm",
    "image_dfl.dcm",
    "reportsi.dcm",
)


def test_vendor_files(tmp_path: Path) -> None:
    for name in VENDOR_FILES:
        source = get_testdata_file(name, download=False)
        assert source is not None, f"{name} is not bundled with pydicom"
        shutil.copy(source, tmp_path / name)
    settings = Settings(ingest=IngestSettings(workers=1, timezone="UTC"))
    result = run_ingest([tmp_path], settings, load_tables(settings.mappings_dir))
    assert result.files == len(VENDOR_FILES)
    # Files sharing a SOP Instance UID count once, and the duplicate is reported on the study.
    read = sum(s.instances for s in result.studies) + len(result.rejections)
    duplicates = [p for s in result.studies for p in s.completeness.problems if "duplicate" in p]
    assert read < result.files and duplicates
    assert all(s.status is Status.HELD_DIAGNOSTIC for s in result.studies)
    rejected = {Path(r.path).name: r.reason for r in result.rejections}
    assert "file meta" in rejected["rtstruct.dcm"]
