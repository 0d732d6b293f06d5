"""Golden label KOS files for every bundled planning case, each checked by independent tools:
``dciodvfy`` (dicom3tools, the IOD validator) must report no error, and ``dsrdump`` (dcmtk)
must show the expected content tree.

Regenerate after an intended change with ``UPDATE_GOLDEN=1 pytest tests/golden`` and review the
``.dsrdump.txt`` diff: it is the readable form of what the PACS will receive.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest

from adapter.config import IngestSettings, Settings
from adapter.ingest.pipeline import run_ingest
from adapter.label.kos import encode
from adapter.label.service import build_for, labelled
from adapter.label.titles import load_vocabulary
from adapter.tables import load_tables

ROOT = Path(__file__).resolve().parents[2]
DICOM = ROOT / "fixtures" / "dicom"
EXPECTED = ROOT / "fixtures" / "expected" / "kos"
SETTINGS = Settings(ingest=IngestSettings(workers=1))
TABLES = load_tables(SETTINGS.mappings_dir)
VOCABULARY = load_vocabulary(TABLES)
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
CASES = ["planning-ct", "planning-mr", "pet-ct", "charset-latin1", "charset-utf8", "charset-jp",
         "tz-none-summer", "tz-none-winter"]  # fmt: skip


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (Debian dicom3tools / dcmtk; .ci/run installs it)")
    return path


def write_kos(case: str, folder: Path) -> Path:
    result = run_ingest([DICOM / case], SETTINGS, TABLES)
    (outcome,) = [s for s in result.studies if labelled(s)]
    ds, _ = build_for(outcome, SETTINGS, VOCABULARY, NOW)
    target = folder / f"{case}.kos.dcm"
    target.write_bytes(encode(ds))
    return target


def dsrdump(path: Path) -> bytes:
    """dsrdump's output as bytes: values stay in the document's own character set (dcmtk's
    iconv cannot convert ISO 2022 IR 87 to UTF-8, so ``+U8`` is not used)."""
    proc = subprocess.run(
        [tool("dsrdump"), "+Pc", "+Pu", "+Pl", str(path)], capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("case", CASES)
def test_dciodvfy_reports_no_error(case: str, tmp_path: Path) -> None:
    kos = write_kos(case, tmp_path)
    proc = subprocess.run(
        [tool("dciodvfy"), str(kos)], capture_output=True, text=True, check=False
    )
    report = proc.stdout + proc.stderr
    assert "KeyObjectSelectionDocument" in report  # it recognised the IOD
    errors = [line for line in report.splitlines() if line.startswith("Error")]
    assert errors == []
    # The only warning allowed is about codes copied from the study itself (its LOCAL
    # procedure code), never about what the adapter wrote.
    warnings = [line for line in report.splitlines() if line.startswith("Warning")]
    assert all("<LOCAL>" in w for w in warnings), warnings


@pytest.mark.parametrize("case", CASES)
def test_dsrdump_shows_the_content_tree(case: str, tmp_path: Path) -> None:
    kos = write_kos(case, tmp_path)
    text = dsrdump(kos).decode("latin-1")  # the tree lines are ASCII
    result = run_ingest([DICOM / case], SETTINGS, TABLES)
    (outcome,) = [s for s in result.studies if labelled(s)]
    assert outcome.study is not None
    lines = text.splitlines()
    tree = lines[lines.index('<CONTAINER:(128198,DCM,"For RT Treatment Planning")=SEPARATE>') :]
    assert tree[1].startswith('  <contains TEXT:(113012,DCM,"Key Object Description")=')
    assert "RADIOTHERAPY PLANNING SCAN - NOT FOR DIAGNOSTIC USE." in tree[1]
    images = [s for s in outcome.study.series if s.modality in ("CT", "MR", "PT")]
    expected = [i.sop_instance_uid for s in images for i in s.instances]
    found = [line.split(',"')[1].rstrip('")>') for line in tree[2:] if "IMAGE:" in line]
    assert found == expected
    series = "Series              : RADIOTHERAPY PLANNING SCAN - NOT FOR DIAGNOSTIC USE (#9901)"
    assert series in text


@pytest.mark.parametrize("case", CASES)
def test_golden_kos(case: str, tmp_path: Path) -> None:
    kos = write_kos(case, tmp_path)
    expected_dcm = EXPECTED / f"{case}.kos.dcm"
    expected_dump = EXPECTED / f"{case}.dsrdump.txt"
    if os.environ.get("UPDATE_GOLDEN"):
        EXPECTED.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kos, expected_dcm)
        expected_dump.write_bytes(dsrdump(kos))
    assert dsrdump(kos) == expected_dump.read_bytes()
    assert kos.read_bytes() == expected_dcm.read_bytes()
