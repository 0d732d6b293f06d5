"""Start-up (issue 16): each ``rtplan`` command imports what it runs, and no more.

Imports are most of a short command's wall time (docs/ingest.md "Start-up"), so these tests
fail when a module-level import drags a heavy stack back onto a path that does not use it.
Each runs a fresh interpreter and reads its ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adapter.cli.outbox import ROW_STATES
from adapter.jobs.payload_codecs import CODEC_MODULES
from adapter.store.outbox import State
from tests.support import FIXTURES, ROOT

# Third-party stacks that the default ``rtplan ingest --out`` (no FHIR server, no HL7 receiver,
# no settings file or override) never uses.
HEAVY_PACKAGES = frozenset(
    {
        "pydantic",  # the settings model: only with a settings file or an RTPLAN_* override
        "pydantic_core",
        "pydantic_settings",
        "pydicom",  # the KOS is written from raw bytes; the reader is our own
        "numpy",
        "httpx",  # the FHIR and DICOMweb clients
        "jwt",
        "cryptography",
        "fhir",  # fhir.resources
        "hl7apy",
        "pynetdicom",
        "fastapi",  # rtplan serve's HTTP API
        "starlette",
        "uvicorn",
        "psycopg",  # PostgreSQL: only with store.url postgresql://
    }
)
# Our own packages the default ingest has no use for.
UNUSED_ADAPTER_PACKAGES = (
    "adapter.fhir",
    "adapter.hl7",
    "adapter.review",
    "adapter.dicomweb",
    "adapter.service",
    "adapter.api",
    "adapter.receive",
    "adapter.safety",
)

_REPORT_MODULES = (
    "import json, sys\n"
    "from adapter.cli.main import main\n"
    "code = main(sys.argv[2:])\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    json.dump({'code': code, 'modules': sorted(sys.modules)}, f)\n"
)


def _modules_of(args: list[str], tmp_path: Path) -> tuple[int, set[str]]:
    """Exit status and every module loaded by one ``rtplan ARGS`` run, with no settings."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RTPLAN_")}
    report = tmp_path / "modules.json"
    subprocess.run(
        [sys.executable, "-c", _REPORT_MODULES, str(report), *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    found = json.loads(report.read_text())
    return int(found["code"]), set(found["modules"])


# The payload codecs of every outbox kind (docs/store.md): the delivery worker decodes each row
# through its kind's codec, rows of any kind can be in the store it drains, and a kind without
# its codec would be a dead letter. They are light (no hl7apy, pydicom or httpx), which the
# third-party check above proves, so they are the one part of those packages ingest loads.
PACKAGES_OF_CODECS = {"adapter.fhir", "adapter.hl7", "adapter.review"}
CODECS = frozenset({module.__name__ for module in CODEC_MODULES} | PACKAGES_OF_CODECS)


def _heavy(modules: set[str]) -> list[str]:
    packages = {name.split(".")[0] for name in modules} & HEAVY_PACKAGES
    unused = tuple(p + "." for p in UNUSED_ADAPTER_PACKAGES)
    ours = [m for m in modules if m.startswith(unused) and m not in CODECS]
    return sorted(packages) + sorted(ours)


@pytest.mark.sqlite_only(reason="the embedded default's imports: no store.url, so SQLite")
def test_default_ingest_imports_no_heavy_stack(tmp_path: Path) -> None:
    args = ["ingest", str(FIXTURES / "dicom" / "planning-ct"), "--out", str(tmp_path / "o")]
    code, modules = _modules_of([*args, "--json"], tmp_path)
    assert code == 0
    assert "adapter.jobs.ingest" in modules  # it did run the ingest
    assert _heavy(modules) == []
    assert not {"zipfile", "tarfile"} & modules  # only when an archive is given


def test_every_command_starts_with_the_parser_only(tmp_path: Path) -> None:
    """``import adapter.cli`` builds the parser of every command: no store, no pipeline, no
    settings model; each command imports its own modules when it runs."""
    code = "import sys, adapter.cli; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    modules = set(out.stdout.split())
    ours = {m for m in modules if m.startswith("adapter.")}
    assert ours <= {
        "adapter.cli",
        "adapter.cli.main",
        "adapter.cli.dicomweb",
        "adapter.cli.hl7",
        "adapter.cli.label",
        "adapter.cli.outbox",
        "adapter.cli.review",
        "adapter.cli.safety",
        "adapter.config",
        "adapter.errors",
        "adapter.jsoninput",
        "adapter.settings_source",
    }, sorted(ours)
    assert not {"yaml", "asyncio", "sqlite3", "annotated_types"} & modules
    assert _heavy(modules) == []


def test_the_mappings_check_loads_no_store_and_no_pydantic(tmp_path: Path) -> None:
    code, modules = _modules_of(["mappings", "check"], tmp_path)
    assert code == 0
    unused = ("adapter.store", "adapter.jobs", "adapter.ingest")
    assert not any(m.startswith(unused) for m in modules)
    assert _heavy(modules) == []


def test_the_outbox_state_choices_are_the_store_states() -> None:
    """The parser spells out the row states (so it need not import the store): the same list."""
    assert tuple(state.value for state in State) == ROW_STATES


@pytest.mark.sqlite_only(reason="the documented command as written: the embedded default store")
def test_importtime_shows_where_ingest_start_up_goes(tmp_path: Path) -> None:
    """The command docs/ingest.md gives for measuring start-up, as written there."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RTPLAN_")}
    dicom = FIXTURES / "dicom" / "planning-ct"
    command = [sys.executable, "-X", "importtime", "-m", "adapter.cli", "ingest", str(dicom)]
    result = subprocess.run(
        [*command, "--out", str(tmp_path / "out"), "--json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["mapped"] == 1
    modules = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
               if line.startswith("import time:")]  # fmt: skip
    assert "adapter.jobs.ingest" in modules and "adapter.cli.main" in modules
    assert _heavy(set(modules)) == []


def test_the_executable_freezes_the_heap_before_exit_and_main_does_not(tmp_path: Path) -> None:
    """``rtplan`` (``adapter.cli.run``) freezes its heap so that the interpreter's final
    collections skip it; ``main`` (which tests call in-process) leaves the collector alone."""
    code = (
        "import gc, sys\n"
        "from adapter.cli import main, run\n"
        "assert main(['mappings', 'check']) == 0 and gc.get_freeze_count() == 0\n"
        "sys.argv = ['rtplan', 'mappings', 'check']\n"
        "code = run()\n"
        "print(code, gc.get_freeze_count() > 0)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RTPLAN_")}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    assert done.stdout.splitlines()[-1] == "0 True"
    # The installed entry point is run(), with main()'s exit status.
    script = Path(sys.executable).parent / "rtplan"
    version = subprocess.run(
        [str(script), "mappings", "check"], env=env, cwd=tmp_path, capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert version.returncode == 0, version.stderr
    assert "from adapter.cli import run" in script.read_text(encoding="utf-8")
