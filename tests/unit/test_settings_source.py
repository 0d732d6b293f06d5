"""Settings on pydantic-settings (issue 8): nested ``RTPLAN_SECTION__KEY`` overrides, unknown
variables refused by name, secrets never echoed, and a new section needing no loader change."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adapter.config import SECTIONS, FhirSettings, Settings, load_settings
from adapter.errors import ConfigError
from adapter.settings_source import SettingsReader
from tests.support import ROOT


def test_a_nested_override_changes_one_key_and_keeps_the_files_others(tmp_path: Path) -> None:
    path = tmp_path / "rtplan.yaml"
    path.write_text("fhir:\n  base_url: https://ehr.example.org/fhir\n  max_attempts: 7\n")
    settings = load_settings(path, env={"RTPLAN_FHIR__MAX_ATTEMPTS": "9"})
    assert settings.fhir.max_attempts == 9
    assert settings.fhir.base_url == "https://ehr.example.org/fhir"  # the file's, kept
    assert settings.fhir.concurrency == FhirSettings().concurrency  # the default, kept


def _env_text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _every_key() -> list[tuple[str, str]]:
    return [(name, f.name) for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)]


@pytest.mark.parametrize(("section", "key"), _every_key())
def test_every_key_has_its_environment_override(section: str, key: str) -> None:
    """``RTPLAN_<SECTION>__<KEY>`` reaches every key (docs/configuration.md)."""
    default = getattr(getattr(Settings(), section), key)
    variable = f"RTPLAN_{section.upper()}__{key.upper()}"
    value = getattr(getattr(load_settings(None, env={variable: _env_text(default)}), section), key)
    assert value == default and type(value) is type(default)


def test_overrides_are_typed_not_text() -> None:
    settings = load_settings(
        None,
        env={
            "RTPLAN_FHIR__MAX_ATTEMPTS": "12",
            "RTPLAN_FHIR__INITIAL_WAIT": "0.5",
            "RTPLAN_FHIR__CREATE_PATIENT": "true",
            "RTPLAN_DICOM__ALLOWED_CALLERS": "CTSIM1, PACS",
            "RTPLAN_MAPPINGS_DIR": str(ROOT / "mappings"),
        },
    )
    assert settings.fhir.max_attempts == 12 and settings.fhir.initial_wait == 0.5
    assert settings.fhir.create_patient is True
    assert settings.dicom.allowed_callers == ("CTSIM1", "PACS")
    assert settings.mappings_dir == ROOT / "mappings"


@pytest.mark.parametrize(
    "variable",
    [
        "RTPLAN_FHIR__VERSON",  # a key's typo
        "RTPLAN_FHIRR__VERSION",  # a section's typo
        "RTPLAN_FHIR_VERSION",  # one underscore where two belong
        "RTPLAN_FHIR",  # a whole section from one variable
        "RTPLAN_INGEST__TIMEZONE__ZONE",  # nesting deeper than a section
        "RTPLAN_MAPPINGSDIR",
        "rtplan_fhir__verson",  # names are read case-insensitively, so typos are too
    ],
)
def test_an_unknown_variable_is_refused_by_name(variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env={variable: "R4"})
    assert caught.value.key == variable and caught.value.problem == "unknown environment override"


def test_variables_without_the_prefix_are_not_ours() -> None:
    assert load_settings(None, env={"PATH": "/bin", "FHIR__VERSION": "R3"}).fhir.version == "auto"


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"RTPLAN_FHIR__AUTH": "tok-3f9a-secret"}, "fhir.auth"),
        ({"RTPLAN_FHIR__MAX_ATTEMPTS": "tok-3f9a-secret"}, "fhir.max_attempts"),
        ({"RTPLAN_FHIR__READ_TIMEOUT": "tok-3f9a-secret"}, "fhir.read_timeout"),
        ({"RTPLAN_FHIR__CREATE_PATIENT": "tok-3f9a-secret"}, "fhir.create_patient"),
        ({"RTPLAN_FHIR__BASE_URL": "http://u:tok-3f9a-secret@ehr.example.org/"}, "fhir.base_url"),
    ],
)
def test_a_refused_value_is_never_echoed(env: dict[str, str], key: str) -> None:
    """A value put in the wrong variable may be a token: the error names the key only."""
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env=env)
    assert caught.value.key == key
    assert "tok-3f9a-secret" not in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_token_is_neither_a_setting_nor_printed(tmp_path: Path) -> None:
    settings = load_settings(
        None, env={"RTPLAN_FHIR_TOKEN": "tok-3f9a-secret", "RTPLAN_FHIR__AUTH": "bearer"}
    )
    assert "tok-3f9a-secret" not in repr(settings)
    renamed = load_settings(
        None,
        env={"RTPLAN_FHIR__TOKEN_ENV": "RTPLAN_EHR_TOKEN", "RTPLAN_EHR_TOKEN": "tok-3f9a-secret"},
    )
    assert renamed.fhir.token_env == "RTPLAN_EHR_TOKEN"
    assert "tok-3f9a-secret" not in repr(renamed)


def _rtplan(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapter.cli", *args],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("RTPLAN_")}, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("config", "env", "line"),
    [
        ("fhir:\n  max_attempts: 0\n", {}, "config fhir.max_attempts: must be a whole number"),
        ("", {"RTPLAN_FHIR__AUTH": "tok-3f9a-secret"}, "config fhir.auth: must be one of"),
        ("", {"RTPLAN_FHIR__VERSON": "R4"}, "config RTPLAN_FHIR__VERSON: unknown environment"),
        (
            "fhir:\n  base_url: http://ehr.example.org/fhir\n",
            {"RTPLAN_FHIR_TOKEN": "tok-3f9a-secret"},
            "config fhir.base_url: must be https://",
        ),
    ],
)
def test_the_command_line_says_one_line_and_exits_2(
    tmp_path: Path, config: str, env: dict[str, str], line: str
) -> None:
    path = tmp_path / "rtplan.yaml"
    path.write_text(config)
    result = _rtplan(["--config", str(path), "mappings", "check"], env, tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"rtplan: {line}") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert "tok-3f9a-secret" not in result.stdout + result.stderr


# -- adding a section needs no loader change (issue 8: i8-pg adds store.url) ---------------


@dataclass(frozen=True, slots=True)
class _StoreSettings:
    url: str = ""


@dataclass(frozen=True, slots=True)
class _Extended:
    fhir: FhirSettings = field(default_factory=FhirSettings)
    store: _StoreSettings = field(default_factory=_StoreSettings)


def test_a_new_section_is_read_and_overridden_without_a_loader_change() -> None:
    reader = SettingsReader(_Extended, "RTPLAN_")
    env = {"RTPLAN_STORE__URL": "postgresql://db.example.org/rtplan"}
    reader.refuse_unknown_variables(env, secrets=())
    loaded: Any = reader.load({"store": {"url": "sqlite:///x"}}, env)
    assert loaded.store == _StoreSettings(url="postgresql://db.example.org/rtplan")
    with pytest.raises(ConfigError) as caught:
        reader.refuse_unknown_variables({"RTPLAN_STORE__URI": "x"}, secrets=())
    assert caught.value.key == "RTPLAN_STORE__URI"
    with pytest.raises(ConfigError) as caught:
        reader.load({"store": {"uri": "sqlite:///x"}}, {})
    assert (caught.value.key, caught.value.problem) == ("store.uri", "unknown setting")


# -- start-up (issue 16): pydantic only when there is something to read --------------------


def test_the_defaults_without_pydantic_are_what_pydantic_settings_gives_for_no_input() -> None:
    """No file and no override: ``load_settings`` returns ``Settings()`` without the model;
    that must be exactly what the pydantic-settings model builds from nothing."""
    from_model = SettingsReader(Settings, "RTPLAN_").load({}, {})
    assert load_settings(None, env={}) == from_model == Settings()
    only_the_token = {"RTPLAN_FHIR_TOKEN": "tok-3f9a-secret", "PATH": "/bin"}
    assert load_settings(None, env=only_the_token) == from_model


def test_an_empty_settings_file_is_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "rtplan.yaml"
    path.write_text("# nothing set\n")
    assert load_settings(path, env={}) == Settings()


def _modules_after(code: str, env: dict[str, str]) -> set[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("RTPLAN_")}
    result = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys; print(' '.join(sys.modules))"],
        env={**clean, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return set(result.stdout.split())


def test_loading_the_defaults_imports_no_pydantic() -> None:
    loaded = _modules_after("from adapter.config import load_settings; load_settings()", {})
    heavy = {"pydantic", "pydantic_settings", "pydantic_core", "yaml", "annotated_types"}
    assert not heavy & loaded


def test_an_override_is_read_by_pydantic_settings() -> None:
    """The fast path is only for "nothing to read": an override goes through the model."""
    code = (
        "from adapter.config import load_settings\n"
        "assert load_settings().fhir.max_attempts == 9"
    )
    assert "pydantic_settings" in _modules_after(code, {"RTPLAN_FHIR__MAX_ATTEMPTS": "9"})


@pytest.mark.parametrize("value", [-1, 0, 5, 10, 11, 2.5, "7", "x", float("nan"), float("inf")])
def test_the_light_bounds_validate_as_annotated_types_interval_does(value: object) -> None:
    """``settings_source.Interval`` (no annotated_types at start-up) gives pydantic the same
    constraints, and so the same results and error types, as ``annotated_types.Interval``,
    on whole numbers and on finite floats (the two ways the settings use it)."""
    import annotated_types
    from pydantic import TypeAdapter, ValidationError

    from adapter.settings_source import FINITE, Interval

    def outcome(kind: Any, *metadata: object) -> object:
        adapter: TypeAdapter[Any] = TypeAdapter(typing.Annotated[kind, *metadata])
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            return [error["type"] for error in exc.errors()]

    for kind, finite in ((int, ()), (float, (FINITE,))):
        ours = outcome(kind, *finite, Interval(ge=0, le=10))
        theirs = outcome(kind, *finite, annotated_types.Interval(ge=0, le=10))
        assert ours == theirs, kind
