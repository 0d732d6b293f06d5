"""The package layering is a contract: ``[tool.importlinter]`` in pyproject.toml, run here.

The layers contract says which package may import which (each layer only those below it); the
acyclic-siblings contract fails on any import cycle between sibling packages or modules at
any depth; four forbidden contracts keep the design's rules (mapping does no I/O, the
deliverers know nothing of DICOM or reviews, dicom nothing of FHIR or HL7, and no module
outside the store opens a database). grimp, which import-linter uses, reads every import
statement in a module, including those inside functions and under ``if TYPE_CHECKING:``, so a
function-local import cannot dodge the contract. The negative tests copy the package to a
temporary folder, inject one bad import, and run the same command and configuration on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(project: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on ``project`` (its ``adapter/`` and ``pyproject.toml``), uncached."""
    env = {**os.environ, "PYTHONPATH": str(project)}  # the copy wins over the installed package
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(project / "pyproject.toml"), "--no-cache"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A copy of the package and its pyproject.toml, for injecting a bad import."""
    shutil.copytree(
        ROOT / "adapter", tmp_path / "adapter", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, code: str) -> None:
    path.write_text(path.read_text() + "\n\n" + code)


def test_the_package_keeps_its_import_contracts() -> None:
    # Exactly as docs/architecture.md shows it.
    done = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 kept, 0 broken" in done.stdout


def _layers() -> list[list[str]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c for c in config["contracts"] if c["type"] == "layers"]
    assert layers["exhaustive"] is True  # a new package must be placed
    return [[name.strip() for name in layer.split("|")] for layer in layers["layers"]]


def _contract(contract_id: str) -> dict[str, object]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (found,) = [c for c in config["contracts"] if c["id"] == contract_id]
    return dict(found)


def test_the_database_contract_covers_every_package_but_the_store() -> None:
    sources = _contract("database-only-in-store")["source_modules"]
    assert isinstance(sources, list)
    expected = {f"adapter.{name}" for layer in _layers() for name in layer} - {"adapter.store"}
    assert set(sources) == expected


def test_a_database_connection_outside_the_store_breaks_the_contract(copy: Path) -> None:
    _append(
        copy / "adapter" / "jobs" / "deliver.py",
        "def _peek(path: str) -> object:\n    import sqlite3\n\n    return sqlite3.connect(path)\n",
    )
    done = _lint(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "No module outside store/ opens a database connection BROKEN" in done.stdout
    assert "adapter.jobs.deliver -> sqlite3" in done.stdout


def test_file_io_in_mapping_breaks_the_purity_contract(copy: Path) -> None:
    _append(
        copy / "adapter" / "mapping" / "narrative.py",
        "def _save(text: str) -> None:\n    import pathlib\n\n"
        "    pathlib.Path('x').write_text(text)\n",
    )
    done = _lint(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "mapping/ is pure: no files, sockets, databases, processes or event loops BROKEN" in (
        done.stdout
    )
    assert "adapter.mapping.narrative -> pathlib" in done.stdout


def test_every_package_is_in_a_layer() -> None:
    """The layers named in pyproject.toml are exactly the packages and modules of ``adapter/``."""
    named = {name for layer in _layers() for name in layer}
    found = {
        p.stem if p.is_file() else p.name
        for p in (ROOT / "adapter").iterdir()
        if (p.suffix == ".py" and p.stem not in ("__init__", "__main__"))
        or (p / "__init__.py").is_file()
    }
    assert named == found


def test_the_docs_show_the_layers_in_the_contract_order() -> None:
    """README "Layout" and docs/architecture.md name every package, top to bottom in the
    order of the layers contract."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    start = architecture.index("```")
    diagram = architecture[start : architecture.index("```", start + 3)]
    for text in (layout, diagram):
        positions = []
        for layer in _layers():
            for name in layer:
                shown = f"`{name}/`" if (ROOT / "adapter" / name).is_dir() else f"`{name}.py`"
                if text is diagram:
                    shown = shown.strip("`")
                assert shown in text, f"{shown} missing"
                positions.append(text.index(shown))
        assert positions == sorted(positions)


def test_a_function_local_upward_import_breaks_the_layers(copy: Path) -> None:
    # mapping is pure and low; the delivery job is in the application layer above it.
    _append(
        copy / "adapter" / "mapping" / "bundle.py",
        "def _sneaky() -> object:\n"
        "    from adapter.jobs.deliver import deliver\n\n"
        "    return deliver\n",
    )
    done = _lint(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "each layer imports only the layers below it BROKEN" in done.stdout
    assert "adapter.mapping.bundle -> adapter.jobs.deliver" in done.stdout


def test_a_type_checking_upward_import_breaks_the_layers(copy: Path) -> None:
    _append(
        copy / "adapter" / "store" / "studies.py",
        "from typing import TYPE_CHECKING\n\n"
        "if TYPE_CHECKING:\n"
        "    from adapter.review.service import SubmitResult  # noqa: F401\n",
    )
    done = _lint(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "adapter.store.studies -> adapter.review.service" in done.stdout


def test_a_cycle_between_sibling_modules_breaks_the_acyclic_contract(copy: Path) -> None:
    # Inside one package the layers contract says nothing; the acyclic contract does.
    store = copy / "adapter" / "store"
    assert "adapter.store.timers" not in (store / "labels.py").read_text()
    _append(
        store / "labels.py",
        "def _a() -> object:\n    import adapter.store.timers\n\n    return adapter.store.timers\n",
    )
    _append(
        store / "timers.py",
        "def _b() -> object:\n    import adapter.store.labels\n\n    return adapter.store.labels\n",
    )
    done = _lint(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "No import cycle between sibling packages or modules, at any depth BROKEN" in (
        done.stdout
    )
    assert "each layer imports only the layers below it KEPT" in done.stdout
    assert "No cycles are allowed in adapter.store" in done.stdout
    assert "- .timers -> .labels (1 import)" in done.stdout


def test_a_new_package_outside_the_layers_breaks_the_contract(copy: Path) -> None:
    (copy / "adapter" / "newpart").mkdir()
    (copy / "adapter" / "newpart" / "__init__.py").write_text('"""Not yet placed."""\n')
    done = _lint(copy)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "adapter.newpart" in done.stdout


def test_grimp_counts_imports_inside_functions() -> None:
    """The graph the contract checks has the lazy, function-local imports too (e.g. the
    start-up-time import of the pydicom reader in ``adapter.dicom.header``)."""
    source = (ROOT / "adapter" / "dicom" / "header.py").read_text()
    assert "    from adapter.dicom.pydicom_path import read_with_pydicom" in source  # local
    graph = grimp.build_graph("adapter", cache_dir=None)
    assert graph.direct_import_exists(
        importer="adapter.dicom.header", imported="adapter.dicom.pydicom_path"
    )
