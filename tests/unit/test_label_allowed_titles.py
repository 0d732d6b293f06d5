"""``adapter.label.delivery.allowed_titles``: the allow-list the label deliverers check against,
read from the tables once per process and read again as soon as a table file's bytes change
(even within the same clock tick and at the same size)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from adapter.config import Settings
from adapter.errors import MappingTableError
from adapter.label.delivery import allowed_titles


def copy_tables(tmp_path: Path) -> Path:
    folder = tmp_path / "mappings"
    shutil.copytree(Settings().mappings_dir, folder)
    return folder


def test_the_allow_list_is_read_again_when_a_table_changes(tmp_path: Path) -> None:
    folder = copy_tables(tmp_path)
    assert allowed_titles(folder) == frozenset({"DCM|128198"})
    titles = folder / "pacs-label-titles.yaml"
    titles.write_text(
        titles.read_text().replace('    - "DCM|128198"', '    - "DCM|128198"\n    - "DCM|128199"')
    )
    assert allowed_titles(folder) == frozenset({"DCM|128198", "DCM|128199"})


def test_a_rejection_title_added_later_is_refused_at_the_next_read(tmp_path: Path) -> None:
    folder = copy_tables(tmp_path)
    assert allowed_titles(folder) == frozenset({"DCM|128198"})
    titles = folder / "pacs-label-titles.yaml"
    text = titles.read_text().replace('"DCM|128198"', '"DCM|128198"\n    - "DCM|113001"')
    titles.write_text(text)
    with pytest.raises(MappingTableError, match="rejection title"):
        allowed_titles(folder)


def test_a_same_size_change_is_seen(tmp_path: Path) -> None:
    folder = copy_tables(tmp_path)
    assert allowed_titles(folder) == frozenset({"DCM|128198"})
    sizes = {p.name: p.stat().st_size for p in folder.glob("*.yaml")}
    titles, label = folder / "pacs-label-titles.yaml", folder / "pacs-label.yaml"
    titles.write_text(titles.read_text().replace('"DCM|128198"', '"SCT|128198"'))
    label.write_text(label.read_text().replace("title: {system: DCM,", "title: {system: SCT,"))
    assert {p.name: p.stat().st_size for p in folder.glob("*.yaml")} == sizes
    assert allowed_titles(folder) == frozenset({"SCT|128198"})
