"""docs/store.md "Tests on both backends": the ``store`` fixture's parametrisation, the
``--store-backend`` option and the check that no store test runs on one backend unnoticed.
Each case is a separate pytest run, as a developer would start it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def pytest_run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def collected(*args: str) -> list[str]:
    result = pytest_run("--collect-only", "-q", *args)
    assert result.returncode in (0, 5), result.stdout + result.stderr  # 5: nothing collected
    return [line for line in result.stdout.splitlines() if "::" in line]


def test_a_store_test_runs_on_each_backend_and_the_option_picks_one() -> None:
    store_test = "tests/unit/test_timers.py::test_fires_once_when_due"
    plain_test = "tests/unit/test_timers.py"  # its store tests take store_url
    assert collected(store_test) == [f"{store_test}[sqlite]", f"{store_test}[postgresql]"]
    assert collected("--store-backend", "sqlite", store_test) == [f"{store_test}[sqlite]"]
    on_pg = collected("--store-backend", "postgresql", plain_test)
    assert on_pg and all(name.endswith("[postgresql]") for name in on_pg)


def test_sqlite_only_tests_and_tests_without_a_store_run_once() -> None:
    sqlite_only = "tests/unit/test_outbox.py::test_sqlite_is_durable_mode"
    no_store = "tests/unit/test_classify.py"
    assert collected(sqlite_only) == [f"{sqlite_only}[sqlite]"]
    assert collected("--store-backend", "postgresql", sqlite_only) == []
    names = collected(no_store)
    assert names and not any("[sqlite" in n or "postgresql]" in n for n in names)


def test_an_unmarked_test_that_writes_a_sqlite_store_fails(tmp_path: Path) -> None:
    (tmp_path / "test_unmarked.py").write_text(
        "import sqlite3\n\n"
        "def test_writes_a_store(tmp_path):\n"
        "    db = sqlite3.connect(tmp_path / 'x.db')\n"
        "    db.execute('CREATE TABLE outbox (a)')\n"
        "    db.commit()\n"
        "    db.close()\n"
    )
    result = pytest_run("-p", "tests.store_backend", "-q", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "wrote a SQLite store (x.db) but runs on one backend only" in result.stdout
