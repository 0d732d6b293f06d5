"""Escalation timers that survive restarts: T1 (no AA from the RIS), T2 (no radiologist result).

A timer is a row in the store's database (table ``timers``): its key (the placer order
number), its kind, and
when it is due. Due times are stored as UTC epoch seconds so they survive a restart. While the
process runs, "now" is measured on the monotonic clock from the moment the process started
(:class:`SteadyClock`), so a wall-clock jump (DST, NTP step, an operator) neither fires a timer
early nor holds it back. Only a restart re-reads the wall clock.

A fired timer is never deleted: it is the escalation record that ``rtplan escalations`` lists.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from adapter.store.db import Database, Dialect


class SteadyClock:
    """Wall time read once, advanced by the monotonic clock."""

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall0 = wall()
        self._mono0 = monotonic()
        self._monotonic = monotonic

    def __call__(self) -> float:
        return self._wall0 + (self._monotonic() - self._mono0)


@dataclass(frozen=True, slots=True)
class Timer:
    id: int
    key: str
    kind: str
    due_at: float
    armed_at: float
    fired_at: float | None
    cancelled_at: float | None
    detail: str


class Timers:
    """Timers stored beside the outbox, in the same database (``Outbox.timers()``)."""

    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Database]:
        with self._db.write() as db:  # inside Outbox.transaction(): commit with its rows
            yield db

    def arm(self, key: str, kind: str, seconds: float, detail: str = "") -> int:
        """Start a timer unless one of that kind is already open for the key."""
        with self._transaction() as db:
            return self.arm_in(db, key, kind, seconds, detail)

    def arm_in(self, db: Database, key: str, kind: str, seconds: float, detail: str = "") -> int:
        """:meth:`arm` inside a transaction the caller holds (rows and timers commit together)."""
        now = self._clock()
        found = db.execute(
            "SELECT id FROM timers WHERE key=? AND kind=? AND fired_at IS NULL "
            "AND cancelled_at IS NULL",
            (key, kind),
        ).fetchone()
        if found is not None:
            return int(found[0])
        return db.insert(
            "INSERT INTO timers (key, kind, due_at, armed_at, detail) VALUES (?, ?, ?, ?, ?)",
            (key, kind, now + seconds, now, detail),
        )

    def cancel(self, key: str, kind: str) -> bool:
        """Stop the open timer (the awaited event happened); True if one was open."""
        with self._transaction() as db:
            cancelled = db.execute(
                "UPDATE timers SET cancelled_at=? WHERE key=? AND kind=? AND fired_at IS NULL "
                "AND cancelled_at IS NULL RETURNING id",
                (self._clock(), key, kind),
            ).fetchall()
        return bool(cancelled)

    def take_due(self) -> list[Timer]:
        """Mark every due timer fired and return them (each fires exactly once, also with
        several instances on PostgreSQL: a timer another instance is firing is skipped)."""
        now = self._clock()
        lock = " FOR UPDATE SKIP LOCKED" if self._db.dialect is Dialect.POSTGRESQL else ""
        with self._transaction() as db:
            rows = db.execute(
                "SELECT * FROM timers WHERE fired_at IS NULL AND cancelled_at IS NULL "
                f"AND due_at <= ? ORDER BY due_at{lock}",
                (now,),
            ).fetchall()
            for row in rows:
                db.execute("UPDATE timers SET fired_at=? WHERE id=?", (now, row[0]))
        return [_timer((*tuple(row)[:5], now, *tuple(row)[6:])) for row in rows]

    def seconds_until_next(self) -> float | None:
        raw = self._db.scalar(
            "SELECT MIN(due_at) FROM timers WHERE fired_at IS NULL AND cancelled_at IS NULL"
        )
        return None if raw is None else max(0.0, float(raw) - self._clock())

    def fired(self) -> list[Timer]:
        rows = self._db.execute(
            "SELECT * FROM timers WHERE fired_at IS NOT NULL ORDER BY fired_at"
        ).fetchall()
        return [_timer(tuple(row)) for row in rows]

    def stopped(self) -> list[Timer]:
        """Timers cancelled because the awaited event happened (ACK, result)."""
        rows = self._db.execute(
            "SELECT * FROM timers WHERE cancelled_at IS NOT NULL ORDER BY id"
        ).fetchall()
        return [_timer(tuple(row)) for row in rows]

    def open(self) -> list[Timer]:
        rows = self._db.execute(
            "SELECT * FROM timers WHERE fired_at IS NULL AND cancelled_at IS NULL ORDER BY due_at"
        ).fetchall()
        return [_timer(tuple(row)) for row in rows]


def _timer(row: tuple[object, ...]) -> Timer:
    id_, key, kind, due_at, armed_at, fired_at, cancelled_at, detail = row
    return Timer(
        id=int(id_),  # type: ignore[call-overload]
        key=str(key),
        kind=str(kind),
        due_at=float(due_at),  # type: ignore[arg-type]
        armed_at=float(armed_at),  # type: ignore[arg-type]
        fired_at=None if fired_at is None else float(fired_at),  # type: ignore[arg-type]
        cancelled_at=None if cancelled_at is None else float(cancelled_at),  # type: ignore[arg-type]
        detail=str(detail),
    )
