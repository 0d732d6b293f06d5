"""docs/configuration.md is the settings reference (issue 8): its example file lists every key
of every section with the code's default, and every ``RTPLAN_*`` variable any doc shows is one
the loader accepts, with the value the doc implies."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from adapter.config import DEFAULT_TOKEN_ENV, SECTIONS, Settings, load_settings
from adapter.errors import ConfigError
from tests.support import ROOT

DOCS = ROOT / "docs"
REFERENCE = DOCS / "configuration.md"
# Variables of the test tooling, not of the adapter (docs/security.md: the long fuzz run).
TOOLING = {"RTPLAN_FUZZ"}
# Shown as the example of a typo that is refused.
TYPO = "RTPLAN_FHIR__VERSON"


def _example() -> str:
    text = REFERENCE.read_text(encoding="utf-8")
    block: str = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)[0]
    return block.replace("mappings_dir: mappings", f"mappings_dir: {ROOT / 'mappings'}")


def test_the_example_lists_every_key_of_every_section() -> None:
    data = yaml.safe_load(_example())
    assert set(data) == {"mappings_dir", *SECTIONS}
    for section, cls in SECTIONS.items():
        keys = {f.name for f in dataclasses.fields(cls)}
        assert set(data[section] or {}) == keys, section


def test_the_example_is_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "rtplan.yaml"
    path.write_text(_example())
    assert load_settings(path, env={}) == Settings(mappings_dir=ROOT / "mappings")


def test_every_key_has_a_line_in_the_reference() -> None:
    """Each key is explained: in the table (``section.key``) or on its line of the example."""
    text = REFERENCE.read_text(encoding="utf-8")
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            explained = f"`{section}.{f.name}`" in text or f"`{section}.*`" in text
            commented = re.search(rf"^  {f.name}:.*#", text, re.MULTILINE)
            assert explained or commented, f"{section}.{f.name}"


def _documented_variables() -> list[tuple[str, str, str | None]]:
    found = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"\bRTPLAN_([A-Z0-9_]+)(?:=([^\s`'\"]+))?", text):
            name = f"RTPLAN_{match.group(1)}"
            found.append((path.name, name, match.group(2)))
    return found


def test_the_docs_show_variables() -> None:
    names = {name for _, name, _ in _documented_variables()}
    assert {"RTPLAN_INGEST__TIMEZONE", "RTPLAN_MAPPINGS_DIR", DEFAULT_TOKEN_ENV} <= names


@pytest.mark.parametrize(("doc", "name", "value"), _documented_variables())
def test_every_documented_variable_is_accepted_as_shown(
    doc: str, name: str, value: str | None
) -> None:
    if name == TYPO:
        with pytest.raises(ConfigError) as caught:
            load_settings(None, env={name: "R4"})
        assert caught.value.key == TYPO
        return
    if name in TOOLING:  # read by the test tooling, never by the adapter
        assert name in (ROOT / "tests" / "fuzz" / "conftest.py").read_text(encoding="utf-8")
        return
    if name == DEFAULT_TOKEN_ENV:  # a secret, not an override: accepted, and not a setting
        settings = load_settings(None, env={name: "tok-3f9a-secret"})
        assert "tok-3f9a-secret" not in repr(settings)
        return
    env = {name: value if value is not None else _valid_value(name)}
    settings = load_settings(None, env=env)
    if value is not None:
        section, _, key = name.removeprefix("RTPLAN_").lower().partition("__")
        got = getattr(getattr(settings, section), key) if key else getattr(settings, section)
        shown = tuple(v.strip() for v in value.split(",")) if isinstance(got, tuple) else value
        assert str(got).lower() == str(shown).lower() or got == shown, (doc, name)


def _valid_value(name: str) -> str:
    key = name.removeprefix("RTPLAN_").lower()
    if key == "mappings_dir":
        return str(ROOT / "mappings")
    section, _, field = key.partition("__")
    default = getattr(getattr(Settings(), section), field)
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, tuple):
        return ",".join(default)
    return str(default)


# Each error line the reference shows, and how a user gets it: (settings file, environment).
ERROR_SCENARIOS: dict[str, tuple[str, dict[str, str]]] = {
    "rtplan: config ingest.timezone: not an IANA time zone name": (
        "ingest:\n  timezone: Mars/Olympus\n",
        {},
    ),
    "rtplan: config fhir.max_attempts: must be a whole number from 1 to 100000": (
        "fhir:\n  max_attempts: 0\n",
        {},
    ),
    "rtplan: config RTPLAN_FHIR__VERSON: unknown environment override": (
        "",
        {"RTPLAN_FHIR__VERSON": "R4"},
    ),
}


def test_every_error_line_the_reference_shows_is_covered() -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    shown = set(re.findall(r"rtplan: config [^`\n]*", text))
    assert shown == set(ERROR_SCENARIOS)


@pytest.mark.parametrize("line", sorted(ERROR_SCENARIOS))
def test_the_documented_error_line_is_printed_exactly(
    line: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from adapter.cli import main

    content, env = ERROR_SCENARIOS[line]
    path = tmp_path / "rtplan.yaml"
    path.write_text(content)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(["--config", str(path), "mappings", "check"]) == 2
    assert capsys.readouterr().err == line + "\n"
