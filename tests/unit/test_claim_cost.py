"""What a claim costs does not depend on the planner's statistics (issue 8, two instances).

A backlog enqueued a moment ago has no statistics on PostgreSQL (autovacuum analyses a table
only after a while). Without them the planner once turned the claim's "no earlier open row of
the key" test into an anti-join that scanned every open row of the destination for every
candidate: 0.2-0.6 s per claim at 400 queued rows, the whole backlog's drain quadratic. These
tests look at the plan PostgreSQL chooses for the claim on such a table (no timing): the
candidates come from the per-destination index in id order and stop at the limit, and each
``NOT EXISTS`` stays a per-row index probe. Claims across several destinations keep the oldest
rows first and every ordering rule, on both backends.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from adapter.store import claims
from adapter.store.db import open_database
from adapter.store.outbox import Outbox, State
from tests.support import tx

_SERIAL = itertools.count()
FHIR = ("fhir", "http://server/fhir")
FILES = ("files", "/srv/out")
BACKLOG = 300


def put(outbox: Outbox, target: tuple[str, str], key: str, after_id: int | None = None) -> int:
    return outbox.enqueue(
        destination=target[0],
        target=target[1],
        key=key,
        kind="fhir-transaction",
        label=key,
        payload=tx(key=key, n=next(_SERIAL)),  # distinct: an equal payload is not stored twice
        after_id=after_id,
    )


def claim_plan(
    url: Path | str,
    targets: list[tuple[str, str]] | None,
    *,
    explain: str = "EXPLAIN (ANALYZE, COSTS OFF) ",
    statement: str = "UPDATE outbox",
    column: int = 0,
) -> str:
    """The plan of the claim's ``statement`` as ``claims.claim`` sends it (rolled back):
    PostgreSQL's EXPLAIN ANALYZE by default; SQLite's ``EXPLAIN QUERY PLAN`` (``column`` 3)."""
    db = open_database(url)
    sent: list[tuple[str, Any]] = []
    execute = db.execute

    def capture(sql: str, params: Any = ()) -> Any:
        sent.append((sql, params))
        return execute(sql, params)

    try:
        with db.write(exclusive=False):
            db.execute = capture  # type: ignore[method-assign]
            claims.claim(db, 2e9, 300.0, "probe", 8, targets)
            db.execute = execute  # type: ignore[method-assign]
            sql, params = next((s, p) for s, p in sent if statement in s)
            plan = db.execute(explain + sql, params).fetchall()
            raise _Rollback
    except _Rollback:
        pass
    finally:
        db.close()
    return "\n".join(str(row[column]) for row in plan)


class _Rollback(Exception):
    pass


def test_a_fresh_backlog_is_claimed_from_the_index_in_id_order(pg_url: str) -> None:
    with Outbox(pg_url) as outbox:
        for k in range(BACKLOG):
            put(outbox, FHIR, f"study:{k}")
        analysed = outbox._db.scalar(
            "SELECT COALESCE(last_analyze, last_autoanalyze) FROM pg_stat_user_tables "
            "WHERE relname = 'outbox'"
        )
        assert analysed is None  # the case that went wrong: no statistics yet
    for targets in ([FHIR], [FHIR, FILES]):
        plan = claim_plan(pg_url, targets)
        assert "Index Scan using outbox_ready on outbox o" in plan, plan
        assert "Anti Join" not in plan, plan  # each NOT EXISTS is a probe, not a join
        assert (
            "Index Cond: ((destination = o.destination) AND (target = o.target) AND "
            "(key = o.key) AND (id < o.id))" in plan
        ), plan
        scanned = [line for line in plan.splitlines() if "outbox_ready" in line]
        # The walk stops at the limit: 8 rows (and the second target's none), not 300.
        assert all(f"rows={BACKLOG}" not in line for line in scanned), plan


def test_claims_across_destinations_take_the_oldest_claimable_rows(
    store_url: Path | str,
) -> None:
    with Outbox(store_url) as outbox:
        first = put(outbox, FHIR, "study:a")
        blocked = put(outbox, FHIR, "study:a")  # behind the first row of its key
        files = put(outbox, FILES, "study:a")  # another destination: not behind it
        waiting = put(outbox, FILES, "study:b", after_id=first)  # waits for the first row
        later = put(outbox, FHIR, "study:c")
        taken = outbox.claim(3, targets=[FHIR, FILES])
        assert [row.id for row in taken] == [first, files, later]
        assert {row.state for row in taken} == {State.IN_FLIGHT}
        assert outbox.claim(3, targets=[FHIR, FILES]) == []  # blocked and waiting stay
        outbox.mark_delivered(first, {})
        again = outbox.claim(3, targets=[FILES, FHIR])
        assert [row.id for row in again] == [blocked, waiting]
        only_files = outbox.claim(3, targets=[FILES])
        assert only_files == []
        claimed = [event for _, event, _ in outbox.events(blocked) if event == "claimed"]
        assert len(claimed) == 1


def _history(outbox: Outbox, key: str, delivered: int) -> None:
    """``delivered`` closed rows of one key: a study with a long history."""
    for _ in range(delivered):
        row_id = put(outbox, FHIR, key)
        (taken,) = outbox.claim(1, targets=[FHIR])
        assert taken.id == row_id
        outbox.mark_delivered(row_id, {})


@pytest.mark.sqlite_only(reason="SQLite's own plan (the PostgreSQL one is the next test)")
def test_the_key_probe_seeks_open_rows_not_the_keys_history_on_sqlite(tmp_path: Path) -> None:
    """Migration 8: a key with a long delivered history costs a claim nothing more (the
    probe used to step over every closed row of the key, holding SQLite's write lock)."""
    path = tmp_path / "outbox.sqlite"
    with Outbox(path) as outbox:
        _history(outbox, "study:a", 50)
        put(outbox, FHIR, "study:a")
        put(outbox, FHIR, "study:a")  # behind the one before: the probe finds it
    plan = claim_plan(path, [FHIR], explain="EXPLAIN QUERY PLAN ", statement="NOT EXISTS", column=3)
    assert "SEARCH e USING INDEX outbox_key_open" in plan, plan
    assert "INDEX outbox_key " not in plan, plan


def test_the_key_probe_seeks_open_rows_not_the_keys_history_on_postgresql(pg_url: str) -> None:
    with Outbox(pg_url) as outbox:
        _history(outbox, "study:a", 50)
        for k in range(BACKLOG):
            put(outbox, FHIR, "study:a" if k % 2 else f"study:{k}")
    plan = claim_plan(pg_url, [FHIR])
    assert "outbox_key_open on outbox e" in plan, plan
    assert "Anti Join" not in plan, plan


def test_rows_for_key_reads_only_the_labels_asked_for(store_url: Path | str) -> None:
    """A note job reads its own version's rows; a label's own ``%`` or ``_`` is no wildcard."""
    with Outbox(store_url) as outbox:
        for label in ("Review-ab-v1", "Review-ab-v10", "Note-a_%-v1", "Note-aX%-v1", "Other"):
            outbox.enqueue(
                destination="fhir", target="http://server/fhir", key="study:z",
                kind="fhir-transaction", label=label, payload=tx(key=label, n=next(_SERIAL)),
            )  # fmt: skip
        found = outbox.rows_for_key("study:z", label_prefixes=("Review-ab-v1", "Note-a_%"))
        assert [r.label for r in found] == ["Review-ab-v1", "Review-ab-v10", "Note-a_%-v1"]
        assert len(outbox.rows_for_key("study:z")) == 5
        assert outbox.rows_for_key("study:z", kind="fhir-transaction", label_prefixes=("Oth",))
