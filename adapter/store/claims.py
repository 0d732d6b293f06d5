"""Claiming outbox rows, written per engine: the one place where the two backends differ most.

A row is claimable when it is pending or retrying and due, no earlier row of its key and
destination is still open (pending, retrying or in flight), its key is not held, and the row it
waits for (``after_id``), if any, is delivered. A claim takes the oldest claimable rows, marks
them in flight with a lease and the claiming process as owner.

**SQLite** serialises writers (``BEGIN IMMEDIATE``), so the query and the update see one state.
``INDEXED BY`` keeps SQLite's planner on the partial index of open rows.

**PostgreSQL** lets several instances claim at once. The candidate rows are locked with
``FOR UPDATE SKIP LOCKED``: two claims never wait for each other and never take the same row
(a row another claim has just taken is re-checked after its lock, and is no longer pending).
Per-key order holds under concurrency because of two facts:

1. the "no earlier open row of the key" test reads a committed snapshot, and a row only becomes
   claimable once the earlier rows of its key are *closed* (delivered or dead), which can only
   happen after they were claimed, in order;
2. every transaction that appends rows takes the append lock (``adapter.store.db``), so ids
   are handed out and committed in the same order: a claim that sees a row of a key also sees
   every earlier row of that key. (Without it, a row with a lower id could commit after a
   higher one had already been claimed.)

The cost of a claim must not grow with the backlog, whatever the planner knows: a backlog
enqueued a moment ago has no statistics yet (autovacuum analyses a table only after a while),
and a plan chosen without them once scanned every open row of the destination for every
candidate (0.2-0.6 s per claim at 400 rows). So the PostgreSQL claim walks each destination's
claimable rows in id order on the partial index ``outbox_ready`` (migration 7) and stops at
the limit, and its ``NOT EXISTS`` tests are fenced with ``OFFSET 0`` so that they stay
per-row index probes (``outbox_key_open``, migration 8; ``key_holds``' key) instead of being
turned into joins.

Leases: a row in flight whose lease ran out is taken over (``recovered``, then claimable). On
PostgreSQL only the lease counts, since the owner may run on another host; on SQLite a row whose
owner's pid is gone on this host is taken over at once too.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Collection
from typing import Any

from adapter.store.db import Database, DbRow, Dialect

_RECOVERED = "recovered after the delivering process stopped"

_CLAIMABLE = """
    o.state IN ('pending', 'retrying') AND o.next_attempt_at <= ?
    AND NOT EXISTS (
        SELECT 1 FROM outbox e{open_index}
        WHERE e.destination = o.destination AND e.target = o.target
          AND e.key = o.key AND e.id < o.id
          AND e.state IN ('pending', 'retrying', 'in_flight'){fence})
    AND NOT EXISTS (
        SELECT 1 FROM key_holds h
        WHERE h.destination = o.destination AND h.target = o.target AND h.key = o.key{fence})
    AND (o.after_id IS NULL OR EXISTS (
        SELECT 1 FROM outbox p WHERE p.id = o.after_id AND p.state = 'delivered'{fence}))
"""
# OFFSET 0 keeps PostgreSQL from turning a (NOT) EXISTS into a join (see the module docstring).
# INDEXED BY outbox_key_open (migration 8): the probe seeks the key's open rows only, never
# steps over its closed history (SQLite would otherwise pick the full outbox_key).
_CLAIMABLE_SQLITE = _CLAIMABLE.format(fence="", open_index=" INDEXED BY outbox_key_open")
_CLAIMABLE_PG = _CLAIMABLE.format(fence=" OFFSET 0", open_index="")


def target_filter(targets: Collection[tuple[str, str]] | None) -> tuple[str, list[str]]:
    """A WHERE fragment limiting rows ``o`` to ``(destination, target)`` pairs (always true if
    None)."""
    if targets is None:
        return "1=1", []
    if not targets:
        return "1=0", []
    pairs = " OR ".join("(o.destination = ? AND o.target = ?)" for _ in targets)
    return f"({pairs})", [value for pair in targets for value in pair]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover(db: Database, now: float, owner: str) -> list[int]:
    """Make rows of stopped owners claimable again; return their ids."""
    if db.dialect is Dialect.POSTGRESQL:
        raws = db.execute(
            "UPDATE outbox SET state='retrying', next_attempt_at=?, owner=NULL, "
            "lease_until=NULL, last_error=?, updated_at=? WHERE state='in_flight' AND id IN ("
            "SELECT id FROM outbox WHERE state='in_flight' "
            "AND (lease_until IS NULL OR lease_until < ?) FOR UPDATE SKIP LOCKED) RETURNING id",
            (now, _RECOVERED, now, now),
        ).fetchall()
        return sorted(int(r[0]) for r in raws)
    host = socket.gethostname()
    recovered = []
    for raw in db.execute("SELECT id, owner, lease_until FROM outbox WHERE state='in_flight'"):
        owner_host, _, pid = (raw["owner"] or "").rpartition(":")
        expired = raw["lease_until"] is None or raw["lease_until"] < now
        dead_owner = owner_host == host and pid.isdigit() and not _pid_alive(int(pid))
        if expired or (dead_owner and raw["owner"] != owner):
            recovered.append(int(raw["id"]))
    for row_id in recovered:
        db.execute(
            "UPDATE outbox SET state='retrying', next_attempt_at=?, owner=NULL, "
            "lease_until=NULL, last_error=?, updated_at=? WHERE id=?",
            (now, _RECOVERED, now, row_id),
        )
    return recovered


def orphans(db: Database) -> list[tuple[int, int]]:
    """(row, the row it waited for) of open rows whose awaited row is dead."""
    if db.dialect is Dialect.SQLITE:
        # INDEXED BY: only rows that wait for another row are looked at, not every pending row.
        sql = (
            "SELECT o.id, o.after_id FROM outbox o INDEXED BY outbox_waiting "
            "JOIN outbox p ON p.id = o.after_id "
            "WHERE o.after_id IS NOT NULL AND o.state IN ('pending', 'retrying') "
            "AND p.state = 'dead'"
        )
    else:
        sql = (
            "SELECT o.id, o.after_id FROM outbox o JOIN outbox p ON p.id = o.after_id "
            "WHERE o.after_id IS NOT NULL AND o.state IN ('pending', 'retrying') "
            "AND p.state = 'dead' FOR UPDATE OF o SKIP LOCKED"
        )
    return [(int(r[0]), int(r[1])) for r in db.execute(sql).fetchall()]


def claim(
    db: Database,
    now: float,
    lease_seconds: float,
    owner: str,
    limit: int,
    targets: Collection[tuple[str, str]] | None,
) -> list[DbRow]:
    """Mark up to ``limit`` claimable rows in flight for ``owner`` (only rows for ``targets``
    when given), oldest first; return them as updated, with a ``claimed`` event each."""
    if db.dialect is Dialect.POSTGRESQL:
        raws = _claim_postgresql(db, now, lease_seconds, owner, limit, targets)
    else:
        raws = _claim_sqlite(db, now, lease_seconds, owner, limit, targets)
    if raws:  # one statement for the events of the whole claim
        db.execute(
            "INSERT INTO events (row_id, at, event, detail) VALUES "
            + ", ".join("(?, ?, 'claimed', ?)" for _ in raws),
            [value for raw in raws for value in (int(raw["id"]), now, owner)],
        )
    return raws


def _claim_postgresql(
    db: Database,
    now: float,
    lease_seconds: float,
    owner: str,
    limit: int,
    targets: Collection[tuple[str, str]] | None,
) -> list[DbRow]:
    if targets is None:  # every destination: the open rows in id order (``outbox_open``)
        candidates = f"""
            SELECT o.id FROM outbox o WHERE {_CLAIMABLE_PG}
            ORDER BY o.id LIMIT ? FOR UPDATE OF o SKIP LOCKED"""
        args: list[Any] = [now, limit]
    else:  # each destination's claimable rows in id order (``outbox_ready``), then the oldest
        pairs = ", ".join("(?::text, ?::text)" for _ in targets)
        candidates = f"""
            SELECT c.id FROM (VALUES {pairs}) AS t(destination, target)
            CROSS JOIN LATERAL (
                SELECT o.id FROM outbox o
                WHERE o.destination = t.destination AND o.target = t.target
                  AND {_CLAIMABLE_PG}
                ORDER BY o.id LIMIT ? FOR UPDATE OF o SKIP LOCKED) AS c
            ORDER BY c.id LIMIT ?"""
        args = [value for pair in targets for value in pair] + [now, limit, limit]
    raws = db.execute(
        f"""
        WITH candidates AS ({candidates})
        UPDATE outbox SET state='in_flight', attempts=attempts+1, lease_until=?, owner=?,
            updated_at=?
        FROM candidates
        WHERE outbox.id = candidates.id AND outbox.state IN ('pending', 'retrying')
        RETURNING outbox.*
        """,
        (*args, now + lease_seconds, owner, now),
    ).fetchall()
    return sorted(raws, key=lambda raw: int(raw["id"]))  # RETURNING has no order


def _claim_sqlite(
    db: Database,
    now: float,
    lease_seconds: float,
    owner: str,
    limit: int,
    targets: Collection[tuple[str, str]] | None,
) -> list[DbRow]:
    where, args = target_filter(targets)
    # INDEXED BY: SQLite's planner otherwise prefers outbox_due and sorts every due row to
    # return one (6 ms at 5,000 queued rows instead of 0.01 ms).
    ids = [
        int(r[0])
        for r in db.execute(
            f"SELECT o.id FROM outbox o INDEXED BY outbox_open WHERE {_CLAIMABLE_SQLITE} "
            f"AND {where} ORDER BY o.id LIMIT ?",
            (now, *args, limit),
        ).fetchall()
    ]
    claimed = []
    for row_id in ids:
        raw = db.execute(
            "UPDATE outbox SET state='in_flight', attempts=attempts+1, lease_until=?, "
            "owner=?, updated_at=? WHERE id=? RETURNING *",
            (now + lease_seconds, owner, now, row_id),
        ).fetchone()
        assert raw is not None
        claimed.append(raw)
    return claimed
