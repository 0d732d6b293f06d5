from __future__ import annotations

from pathlib import Path

import pytest

from adapter.config import load_settings
from adapter.errors import ConfigError


def test_defaults_without_file_or_env() -> None:
    settings = load_settings(None, env={})
    assert settings.fhir.version == "auto"  # R4 unless a server says 5.x
    assert settings.ingest.timezone == "Europe/London"
    assert settings.ingest.diagnostic_studies == "report"


def test_file_and_env_override(tmp_path: Path) -> None:
    path = tmp_path / "rtplan.yaml"
    path.write_text("ingest:\n  timezone: Europe/Paris\nfhir:\n  create_patient: true\n")
    settings = load_settings(
        path, env={"RTPLAN_INGEST__TIMEZONE": "Asia/Tokyo", "RTPLAN_FHIR__VERSION": "R5"}
    )
    assert settings.ingest.timezone == "Asia/Tokyo"
    assert settings.fhir.create_patient is True
    assert settings.fhir.version == "R5"


@pytest.mark.parametrize(
    ("content", "env", "key"),
    [
        ("ingest:\n  timezone: Mars/Olympus\n", {}, "ingest.timezone"),
        ("ingest:\n  colour: red\n", {}, "ingest.colour"),
        ("fhir:\n  version: R3\n", {}, "fhir.version"),
        ("fhir:\n  create_patient: maybe\n", {}, "fhir.create_patient"),
        ("archive:\n  wado_rs_base_url: http://pacs/dicom-web/\n", {}, "archive.wado_rs_base_url"),
        ("", {"RTPLAN_NOPE__X": "1"}, "RTPLAN_NOPE__X"),
        ("", {"RTPLAN_INGEST__WORKERS": "many"}, "ingest.workers"),
        ("plugins: []\n", {}, "plugins"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, content: str, env: dict[str, str], key: str) -> None:
    path = tmp_path / "rtplan.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env=env)
    assert caught.value.key == key


def test_a_yaml_syntax_error_is_one_line_with_its_place(tmp_path: Path) -> None:
    path = tmp_path / "rtplan.yaml"
    path.write_text("dicom: {listen_port: 11712\n")  # the brace is never closed
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    assert caught.value.key == str(path)
    assert caught.value.problem.startswith("not valid YAML: line 2, column 1: expected ','")
    assert "\n" not in str(caught.value)
