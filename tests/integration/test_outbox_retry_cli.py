"""docs/delivery.md: ``rtplan outbox retry ID`` of a delivered (or in-flight) row changes
nothing and says so in one line, exit status 2 (issue 8 found a traceback). Run as a user runs
it, in a separate process; the refused command is not audited as done."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from adapter.store.outbox import Outbox, State
from tests.store_backend import StoreUnderTest
from tests.support import ROOT, tx

DOCUMENTED = re.compile(r"^rtplan: config id: row 7 is delivered; only dead or waiting rows retry$")


def _rtplan(args: list[str], cwd: Path, store: StoreUnderTest) -> subprocess.CompletedProcess[str]:
    env = store.env({k: v for k, v in os.environ.items() if not k.startswith("RTPLAN_")})
    return subprocess.run(
        [sys.executable, "-m", "adapter.cli", *args],
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _outbox_with(db: Path | str, rows: int, folder: Path) -> list[int]:
    with Outbox(db) as outbox:
        return [
            outbox.enqueue(
                destination="files",
                target=str(folder),
                key=f"k{n}",
                kind="fhir-transaction",
                label=f"L{n}",
                payload=tx(),
            )
            for n in range(rows)
        ]


def test_the_documented_line_is_the_one_printed() -> None:
    text = (ROOT / "docs" / "delivery.md").read_text(encoding="utf-8")
    assert any(DOCUMENTED.match(line) for line in text.splitlines())


@pytest.mark.parametrize("state", [State.DELIVERED, State.IN_FLIGHT])
@pytest.mark.store
def test_retry_of_a_row_that_needs_none(
    tmp_path: Path, state: State, store: StoreUnderTest
) -> None:
    sqlite_file = tmp_path / "outbox.sqlite"
    db = store.at(sqlite_file)
    ids = _outbox_with(db, 7, tmp_path)
    with Outbox(db) as outbox:
        claimed = outbox.claim(7, lease_seconds=600)
        row_id = claimed[-1].id
        assert row_id == ids[-1] == 7
        if state is State.DELIVERED:
            outbox.mark_delivered(row_id, {"file": "x"})
        before = outbox.get(row_id)
        audited = len(outbox.audit_records())
    assert before.state is state

    result = _rtplan(
        ["outbox", *store.db_option(sqlite_file), "retry", str(row_id)], tmp_path, store
    )

    assert result.returncode == 2
    assert result.stdout == "" and "Traceback" not in result.stderr
    line = f"rtplan: config id: row 7 is {state.value}; only dead or waiting rows retry"
    assert result.stderr == line + "\n"
    with Outbox(db) as outbox:
        after = outbox.get(row_id)
        assert (after.state, after.attempts, after.updated_at) == (
            before.state,
            before.attempts,
            before.updated_at,
        )
        assert len(outbox.audit_records()) == audited  # a refused command is not "success"
