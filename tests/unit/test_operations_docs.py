"""docs/operations.md and docs/configuration.md say what the code does: their settings blocks
load, every dicom/http setting is documented, the documented defaults are the code's."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from adapter.config import (
    DicomSettings,
    HttpSettings,
    LogSettings,
    ServeSettings,
    load_settings,
)
from adapter.errors import ConfigError
from tests.support import ROOT

DOCS = ROOT / "docs"


def yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(encoding="utf-8"), re.DOTALL)


def test_the_configuration_example_gives_the_dicom_and_http_defaults(tmp_path: Path) -> None:
    block = yaml_blocks(DOCS / "configuration.md")[0]
    config = tmp_path / "rtplan.yaml"
    config.write_text(block.replace("mappings_dir: mappings", f"mappings_dir: {ROOT / 'mappings'}"))
    settings = load_settings(config, env={})
    assert settings.dicom == DicomSettings() and settings.http == HttpSettings()
    assert settings.log == LogSettings()
    assert settings.serve == ServeSettings(mllp_listener=True, delivery=True)


def test_the_operations_example_loads_as_documented(tmp_path: Path) -> None:
    (block,) = yaml_blocks(DOCS / "operations.md")
    config = tmp_path / "rtplan.yaml"
    config.write_text(block)
    settings = load_settings(config, env={})
    assert settings.dicom == DicomSettings(listen_port=11112, allowed_callers=("CTSIM1",))
    assert settings.http == HttpSettings(listen_port=8080, tokens_file="/etc/rtplan/api-tokens")


@pytest.mark.parametrize(
    ("section", "cls"),
    [
        ("dicom", DicomSettings),
        ("http", HttpSettings),
        ("log", LogSettings),
        ("serve", ServeSettings),
    ],
)
def test_every_service_setting_is_documented(section: str, cls: type) -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    for field in dataclasses.fields(cls):
        assert f"`{section}.{field.name}`" in text, field.name
        assert re.search(rf"^  {field.name}:", text, re.MULTILINE), field.name


def test_the_documented_allowed_callers_override() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert "`RTPLAN_DICOM__ALLOWED_CALLERS=CTSIM1,PACS`" in text
    env = {"RTPLAN_DICOM__ALLOWED_CALLERS": "CTSIM1,PACS"}
    assert load_settings(None, env=env).dicom.allowed_callers == ("CTSIM1", "PACS")
    # The JSON form, as the shell passes it after the quotes the docs show.
    assert """`RTPLAN_DICOM__ALLOWED_CALLERS='["CTSIM1","PACS"]'`""" in text
    env = {"RTPLAN_DICOM__ALLOWED_CALLERS": '["CTSIM1","PACS"]'}
    assert load_settings(None, env=env).dicom.allowed_callers == ("CTSIM1", "PACS")
    with pytest.raises(ConfigError) as refused:
        load_settings(None, env={"RTPLAN_DICOM__ALLOWED_CALLERS": '["CTSIM1",'})
    assert refused.value.key == "dicom.allowed_callers"


def test_the_operations_doc_names_its_commands_as_the_tests_run_them() -> None:
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    assert "rtplan serve --config rtplan.yaml --out DIR" in text  # test_serve_service.py
    assert "python -m adapter.api.openapi" in text  # test_http_api.py


def test_the_documented_part_switches_as_environment_overrides() -> None:
    text = (DOCS / "operations.md").read_text(encoding="utf-8")
    for name in ("RTPLAN_SERVE__DELIVERY=false", "RTPLAN_SERVE__MLLP_LISTENER=false"):
        assert f"`{name}`" in text
    env = {"RTPLAN_SERVE__DELIVERY": "false", "RTPLAN_SERVE__MLLP_LISTENER": "false"}
    assert load_settings(None, env=env).serve == ServeSettings(mllp_listener=False, delivery=False)
    assert "rtplan serve --config api.yaml --out DIR" in text  # test_serve_parts.py
    assert "rtplan serve --config worker.yaml --out DIR" in text
