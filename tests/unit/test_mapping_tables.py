"""The shipped tables load, and every kind of table error names its file and row."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapter.config import DEFAULT_MAPPINGS_DIR
from adapter.errors import MappingTableError, UnmappedCode
from adapter.tables import load_tables

HEADER = """table: demo
title: Demo
source: test
version: "1"
owner: tests
"""


def write(tmp_path: Path, body: str, name: str = "demo.yaml") -> Path:
    (tmp_path / name).write_text(HEADER + body, encoding="utf-8")
    return tmp_path


def test_shipped_tables_are_valid() -> None:
    tables = load_tables(DEFAULT_MAPPINGS_DIR)
    assert {"procedure-codes", "body-site", "modality", "laterality", "identifier-systems"} <= set(
        tables.conceptmaps
    )
    assert "planning-labels" in tables.labels
    assert "classification-rules" in tables.rules


def test_unconfirmed_codes_are_flagged_for_verification() -> None:
    """standards.md marks SNOMED 430447002 and LOINC 82126-4 unconfirmed: they must be flagged."""
    flagged = {
        (f.coding.system, f.coding.code) for f in load_tables(DEFAULT_MAPPINGS_DIR).verify_flags
    }
    assert ("http://snomed.info/sct", "430447002") in flagged
    assert ("http://loinc.org", "82126-4") in flagged
    confirmed = ("http://loinc.org", "30582-1")
    assert confirmed not in flagged


ROWS = """source_system: "urn:x:y"
target_system: SCT
unmapped: {mode: error}
rows:
"""


@pytest.mark.parametrize(
    ("body", "row", "problem"),
    [
        (
            ROWS + "  - source: {code: A}\n    target: {code: '1', display: One}\n"
            "  - source: {code: A}\n    target: {code: '2', display: Two}\n",
            "rows[1] (code 'A')",
            "duplicate source code",
        ),
        (
            ROWS + "  - source: {code: A}\n    target: {code: '1'}\n",
            "rows[0] (code 'A') target[0]",
            "has no display",
        ),
        (
            ROWS
            + "  - source: {code: A}\n    target: {code: '1', display: One, system: 'not a uri'}\n",
            "rows[0] (code 'A') target[0]",
            "is not a URI",
        ),
        (
            ROWS + "  - source: {code: A}\n    target: {code: '1', display: One, colour: red}\n",
            "rows[0] (code 'A') target[0]",
            "unknown key(s): colour",
        ),
        (
            ROWS + "  - source: {code: A}\n    targets: {code: '1', display: One}\n",
            "rows[0]",
            "unknown key(s): targets",
        ),
        (ROWS + "  - source: {code: A}\n", "rows[0] (code 'A')", "row has no target"),
        (
            ROWS.replace("{mode: error}", "{mode: maybe}")
            + "  - source: {code: A}\n    target: null\n",
            "unmapped",
            "explicit policy",
        ),
        (ROWS + "  - source: {code: 7}\n    target: null\n", "rows[0]", "quote numeric codes"),
    ],
)
def test_table_errors_name_file_and_row(tmp_path: Path, body: str, row: str, problem: str) -> None:
    with pytest.raises(MappingTableError) as caught:
        load_tables(write(tmp_path, body))
    assert caught.value.file == "demo.yaml"
    assert caught.value.row == row
    assert problem in caught.value.problem


def test_missing_header_field_is_named(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("table: bad\ntitle: t\nsource: s\nversion: '1'\n")
    with pytest.raises(MappingTableError, match=r"bad.yaml: owner: header field"):
        load_tables(tmp_path)


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("table: x\nrows: [\n")
    with pytest.raises(MappingTableError, match=r"broken.yaml: line \d+"):
        load_tables(tmp_path)


def test_unmapped_policies(tmp_path: Path) -> None:
    body = ROWS + "  - source: {code: A}\n    target: {code: '1', display: One}\n"
    table = load_tables(write(tmp_path, body)).conceptmap("demo")
    assert table.lookup("A")[0].code == "1"
    assert table.lookup("A")[0].system == "http://snomed.info/sct"  # alias expanded
    with pytest.raises(UnmappedCode, match="demo"):
        table.lookup("B")
    omit = load_tables(write(tmp_path, body.replace("{mode: error}", "{mode: omit}")))
    assert omit.conceptmap("demo").lookup("B") == ()
    fixed_body = body.replace("{mode: error}", "{mode: fixed, target: {code: '9', display: Nine}}")
    assert load_tables(write(tmp_path, fixed_body)).conceptmap("demo").lookup("B")[0].code == "9"


def test_tables_are_immutable() -> None:
    table = load_tables(DEFAULT_MAPPINGS_DIR).conceptmap("modality")
    with pytest.raises(TypeError):
        table.rows["XX"] = ()  # type: ignore[index]
