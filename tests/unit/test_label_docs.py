"""docs/pacs-label.md and docs/configuration.md say what the code does: their settings blocks
load, and every label setting is documented in both."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from adapter.cli import main
from adapter.config import LabelSettings, load_settings
from tests.support import FIXTURES, ROOT

DOCS = ROOT / "docs"


def yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(encoding="utf-8"), re.DOTALL)


def test_the_label_settings_example_in_pacs_label_md_loads(tmp_path: Path) -> None:
    (block,) = [b for b in yaml_blocks(DOCS / "pacs-label.md") if b.startswith("label:")]
    config = tmp_path / "rtplan.yaml"
    config.write_text(block)
    settings = load_settings(config, env={})
    assert settings.label == LabelSettings(
        cstore="PACS@pacs.example.org:11112",
        tls=True,
        ca_bundle="/etc/rtplan/pacs-ca.pem",
    )


def test_the_configuration_example_loads_with_the_label_defaults(tmp_path: Path) -> None:
    block = yaml_blocks(DOCS / "configuration.md")[0]
    config = tmp_path / "rtplan.yaml"
    config.write_text(block.replace("mappings_dir: mappings", f"mappings_dir: {ROOT / 'mappings'}"))
    assert load_settings(config, env={}).label == LabelSettings()


@pytest.mark.parametrize("doc", ["configuration.md", "pacs-label.md"])
def test_every_label_setting_is_documented(doc: str) -> None:
    text = (DOCS / doc).read_text(encoding="utf-8")
    for field in dataclasses.fields(LabelSettings):
        assert re.search(rf"\b{field.name}:", text) or f"label.{field.name}" in text, field.name


def test_the_documented_environment_switch_turns_labelling_off(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "`RTPLAN_LABEL__ENABLED=false`" in (DOCS / "pacs-label.md").read_text()
    monkeypatch.setenv("RTPLAN_LABEL__ENABLED", "false")
    assert main(["label", "preview", str(FIXTURES / "dicom" / "planning-ct")]) == 0
    assert "labelling is switched off" in capsys.readouterr().out
