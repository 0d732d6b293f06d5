"""Reliability rows 13 and 14: ``kill -9`` of the adapter at random points during ingest and
delivery loses no outbox row and creates no duplicate on the server.

Each round starts ``rtplan ingest`` as a separate process against a real FHIR server and kills
it with SIGKILL at a random moment (while reading, while writing the outbox, while a Bundle is
in flight). Rows seen after one kill must all still be there after the next. At the end one
``rtplan outbox run`` finishes the job and every study exists exactly once.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import make_study, study_count

pytestmark = pytest.mark.sqlite_only(
    reason="the SQLite file's integrity after kill -9 (PostgreSQL: test_store_two_instances.py)"
)

RTPLAN = str(Path(sys.executable).parent / "rtplan")
ROUNDS = 8


def row_ids(db: Path) -> set[int]:
    if not db.exists():
        return set()
    with sqlite3.connect(db) as conn:
        try:
            return {r[0] for r in conn.execute("SELECT id FROM outbox")}
        except sqlite3.OperationalError:  # killed before the schema was committed
            return set()


def test_kill9_loses_nothing_and_duplicates_nothing(fhir_url: str, tmp_path: Path) -> None:
    root = tmp_path / "studies"
    uids = [make_study(root)[1] for _ in range(6)]
    db = tmp_path / "outbox.sqlite"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RTPLAN_")},
        "RTPLAN_FHIR__CREATE_PATIENT": "true",
        "RTPLAN_FHIR__CONCURRENCY": "1",
        "RTPLAN_FHIR__INITIAL_WAIT": "0.05",
        "RTPLAN_OUTBOX__PATH": str(db),
        "RTPLAN_INGEST__WORKERS": "1",
    }
    chooser = random.Random(20261126)
    seen: set[int] = set()
    killed = 0
    for _ in range(ROUNDS):
        proc = subprocess.Popen(
            [RTPLAN, "ingest", str(root), "--fhir-url", fhir_url],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # Start-up time varies with the machine's load; pick the kill moment once the process is
        # at work (its outbox exists), so a slow start never turns every round into a no-op.
        started = time.monotonic()
        while not db.exists() and proc.poll() is None and time.monotonic() - started < 120:
            time.sleep(0.02)
        time.sleep(chooser.uniform(0.0, 1.4))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
        now = row_ids(db)
        assert seen <= now, f"rows lost after a kill: {sorted(seen - now)}"
        seen = now
    assert killed >= ROUNDS // 2, "the adapter finished too fast to be killed mid-way"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finish = subprocess.run(
        [RTPLAN, "outbox", "--db", str(db), "run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finish.returncode == 0, finish.stdout + finish.stderr
    with sqlite3.connect(db) as conn:
        states = dict(conn.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
    assert states and set(states) == {"delivered"}, states
    assert seen <= row_ids(db)
    for uid in uids:
        assert study_count(fhir_url, uid) == 1
