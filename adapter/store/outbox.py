"""The durable outbox: every outbound effect is a row before anyone tries it.

The rows live in the store's database (``adapter.store.db``): an embedded SQLite file (WAL,
``synchronous=FULL`` so a committed row survives power loss, not only a crash) or PostgreSQL,
shared by several ``rtplan`` processes. Most statements are written once for both; the claim
is written per engine (``adapter.store.claims``), and the schema comes from the numbered
migrations of ``adapter.store.migrations``.

Row life cycle::

    pending ──claim──▶ in_flight ──▶ delivered   (with the peer's ids and versions)
       ▲                   │    └──▶ retrying ──(due)──▶ claimed again
       │                   └──────▶ dead        (reason without patient data; payload kept)
       └──── retry / replay (an analyst, via ``rtplan outbox``)

Ordering is per business key and destination: a row is claimed only when no earlier row of the
same key is still pending, retrying or in flight, so writes for one key are serialised (FHIR
conditional create is not atomic on common servers, HAPI #3141). Different keys go in parallel.
A key can be *held* (e.g. a 412 "several matches"): nothing more is sent for it until an
analyst retries.

A row may wait for another (``after_id``): it is claimed only once that row is delivered, and
it gives up with it if that row dies. This is how an HL7 order waits for the review's FHIR
transaction. A deliverer may also return follow-up rows, which are stored in the same
transaction that marks its row delivered (an ACK and the Task update it causes are one step).

A claimed row carries a lease and its owner (host:pid). After a crash any row whose lease ran
out is claimable again; on SQLite (one host) so is a row whose owner's pid is gone. On
PostgreSQL the instances may run on several hosts, so only the lease counts. A process that
finishes a row after its lease ran out and another instance took it over records nothing (the
new owner's outcome stands). Delivery is therefore at-least-once, and the receivers
de-duplicate (conditional FHIR writes, MSH-10); see docs/operations.md "Choosing the store".
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from adapter.errors import ConfigError
from adapter.private import private_dir, touch_private
from adapter.store import audit, claims, identity, payloads
from adapter.store import orders as order_records
from adapter.store import studies as study_records
from adapter.store.audit import AuditRecord
from adapter.store.db import Database, DbRow, Dialect, open_database
from adapter.store.identity import HeldRow, IdentityHold, IngestedStudy, IngestWrite, Resolution
from adapter.store.labels import LabelStore
from adapter.store.migrations import migrate
from adapter.store.notes import NoteStore
from adapter.store.orders import OrderAnswer, OrderRecord, QueuedOrder
from adapter.store.reviews import ReviewVersions
from adapter.store.studies import StudyRecord
from adapter.store.timers import SteadyClock, Timers

log = logging.getLogger(__name__)
JSON = dict[str, Any]
Clock = Callable[[], float]

OPEN_STATES = ("pending", "retrying", "in_flight")


class State(StrEnum):
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    RETRYING = "retrying"
    DELIVERED = "delivered"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    destination: str
    target: str
    key: str
    kind: str
    label: str
    payload: JSON
    state: State
    attempts: int
    next_attempt_at: float
    last_error: str
    result: JSON | None
    created_at: float
    updated_at: float
    after_id: int | None = None  # the row this one waits for (see the module docstring)


@dataclass(frozen=True, slots=True)
class NewRow:
    """A row to store: for :meth:`Outbox.enqueue` or as a follow-up of a delivery."""

    destination: str
    target: str
    key: str
    kind: str
    label: str
    payload: JSON
    after_id: int | None = None


@dataclass(frozen=True, slots=True)
class Hold:
    destination: str
    target: str
    key: str
    reason: str
    since: float


# A row may be finished by its owner, or by anyone when it is not in flight (an analyst
# marking a waiting row). One taken over by another instance after its lease ran out is not.
_STILL_OURS = "(state <> 'in_flight' OR owner = ?)"


def _lost_lease(row_id: int) -> None:
    log.warning(
        "row %d: its lease ran out and another instance took it over; this outcome is not "
        "recorded (the receivers de-duplicate the repeated delivery)",
        row_id,
    )


def _owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Outbox:
    """A durable, ordered outbox in the store's database. Safe for several processes."""

    def __init__(
        self, store: Path | str, *, clock: Clock = time.time, check_same_thread: bool = True
    ) -> None:
        """``store``: a SQLite file path, ``sqlite:///PATH`` or a ``postgresql://`` URL."""
        if not str(store).startswith(("postgresql://", "postgres://")):
            path = Path(str(store).removeprefix("sqlite:///"))
            # The file holds patient data: 0600 in a 0700 folder, never opened through a
            # symlink (SQLite gives its -wal and -shm files the database file's mode).
            private_dir(path.parent)
            touch_private(path)
            store = path
        self.path = store if isinstance(store, Path) else None  # the SQLite file, if any
        self.location: Path | str = store
        """What opens this store again (``Outbox(outbox.location)``); may hold a password."""
        self._clock = clock
        self._owner = _owner()
        self._timers: Timers | None = None
        self._reviews: ReviewVersions | None = None
        self._db = open_database(store, check_same_thread=check_same_thread)
        try:
            migrate(self._db)
        except self._db.driver_errors as exc:  # not an outbox: one line, no traceback
            self._db.close()
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ConfigError(self._db.name, f"not an outbox database ({first})") from None
        except BaseException:
            self._db.close()
            raise

    @property
    def clock(self) -> Clock:
        """The store's clock (epoch seconds): due times and leases are measured on it."""
        return self._clock

    @property
    def name(self) -> str:
        """The file path or the URL without its password (safe to print)."""
        return self._db.name

    @property
    def dialect(self) -> Dialect:
        return self._db.dialect

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self) -> contextlib.AbstractContextManager[Database]:
        """One exclusive write transaction (SQLite's write lock; PostgreSQL's append lock), so
        two processes cannot interleave the rows, events and audit records they append.
        Inside :meth:`transaction` it joins the open transaction."""
        return self._db.write()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Database]:
        """Several writes (rows, timers, review versions) that commit or roll back together:
        every :meth:`enqueue` inside joins this one transaction."""
        with self._write() as db:
            yield db

    def reviews(self) -> ReviewVersions:
        """The latest accepted version of each review, in the same database."""
        if self._reviews is None:
            self._reviews = ReviewVersions(self._db)
        return self._reviews

    def notes(self) -> NoteStore:
        """The review note's versions and document messages, in the same database."""
        return NoteStore(self._db)

    def _event(
        self,
        db: Database,
        row_id: int,
        event: str,
        detail: str = "",
        row: Mapping[str, Any] | DbRow | None = None,
    ) -> None:
        """Record a row event (and audit it, see ``_AUDITED``). ``row``: the row's
        destination, key, kind, label and result when the caller has them at hand (one
        statement less per delivery); read from the table otherwise."""
        now = self._clock()
        db.execute(
            "INSERT INTO events (row_id, at, event, detail) VALUES (?, ?, ?, ?)",
            (row_id, now, event, detail),
        )
        if event in _AUDITED:  # the audit record is part of the same transaction
            raw = row
            if raw is None:
                raw = db.execute(
                    "SELECT destination, key, kind, label, result FROM outbox WHERE id=?",
                    (row_id,),
                ).fetchone()
            assert raw is not None
            name, outcome, what = _audit_terms(raw, event)
            audit.append(
                db,
                now,
                name,
                outcome=outcome,
                study_uid=audit.study_of_key(raw["key"]),
                row_id=row_id,
                detail=f"{what}: {detail}" if detail else what,
            )

    def audit(
        self, event: str, *, outcome: str, actor: str, study_uid: str = "", detail: str = ""
    ) -> None:
        """Append an audit record for something outside the outbox (an operator command,
        an escalation); see ``adapter.store.audit``."""
        with self._write() as db:
            audit.append(
                db,
                self._clock(),
                event,
                outcome=outcome,
                actor=actor,
                study_uid=study_uid,
                detail=detail,
            )

    def audit_records(self, study_uid: str | None = None) -> list[AuditRecord]:
        return audit.records(self._db, study_uid)

    def ingest_outcomes(self) -> dict[str, tuple[str, float]]:
        """Each study's latest ingest outcome (``mapped``, ``held-incomplete`` ...) and when."""
        raws = self._db.execute(
            "SELECT study_uid, outcome, at FROM audit WHERE id IN "
            "(SELECT MAX(id) FROM audit WHERE event='ingest' GROUP BY study_uid)"
        ).fetchall()
        return {str(r["study_uid"]): (str(r["outcome"]), float(r["at"])) for r in raws}

    def verify_audit(self) -> int | None:
        """The first audit record whose hash chain is broken, None when intact."""
        return audit.verify(self._db)

    # -- writing -------------------------------------------------------------------------

    def enqueue(
        self,
        *,
        destination: str,
        target: str,
        key: str,
        kind: str,
        label: str,
        payload: JSON,
        after_id: int | None = None,
    ) -> int:
        """Store one outbound effect; return its row id.

        An identical payload for the same key and target that is still pending or retrying is
        not stored twice (ingesting a folder again does not double the work); its id is
        returned instead. With ``after_id`` the row waits until that row is delivered.
        """
        new = NewRow(destination, target, key, kind, label, payload, after_id)
        with self._write() as db:
            return self._insert(db, new)

    def enqueue_many(
        self, rows: Sequence[NewRow], studies: Sequence[StudyRecord] = ()
    ) -> list[int]:
        """Store several rows in one transaction (one disk sync for a whole ingest), with the
        records of the studies they belong to (see ``adapter.store.studies``)."""
        with self._write() as db:
            now = self._clock()
            for record in studies:
                study_records.save(db, record, now)
            return [self._insert(db, new) for new in rows]

    @contextlib.contextmanager
    def batch(self) -> Iterator[Batch]:
        """One transaction for rows that belong together (a review's FHIR rows, its HL7 order
        and the order's T1 timer): all are stored, or none is when the block raises."""
        with self._write() as db:
            yield Batch(self, db)

    def record_ingest(self, studies: Sequence[IngestedStudy]) -> IngestWrite:
        """Store an ingest in one transaction: each study's record and rows, or, when its
        patient disagrees (with itself or with the recorded one), an identity hold instead."""
        with self._write() as db:
            return identity.record_ingest(
                db, self._clock(), studies, lambda held: self._insert(db, _new_row(held))
            )

    def identity_holds(self, *, open_only: bool = False) -> list[IdentityHold]:
        return identity.holds(self._db, open_only=open_only)

    def resolve_identity(
        self, hold_id: int, resolution: Resolution, *, by: str, note: str
    ) -> list[int]:
        """Close an identity hold (audited with ``by``); return the ids of released rows."""
        with self._write() as db:
            return identity.resolve(
                db,
                self._clock(),
                hold_id,
                resolution,
                by=by,
                note=note,
                insert=lambda held: self._insert(db, _new_row(held)),
            )

    def _insert(self, db: Database, new: NewRow) -> int:
        # Through the kind's codec: a payload its deliverer cannot read is refused here
        # (PayloadError names the kind and field), and the whole transaction with it.
        payload = payloads.encode(new.kind, new.payload)
        # allow_nan=False: NaN is not JSON, and a peer would reject it later anyway.
        text = json.dumps(
            payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False
        )
        digest = hashlib.sha256(text.encode()).hexdigest()
        now = self._clock()
        found = db.execute(
            "SELECT id FROM outbox WHERE destination=? AND target=? AND key=? "
            "AND payload_hash=? AND state IN ('pending', 'retrying') ORDER BY id LIMIT 1",
            (new.destination, new.target, new.key, digest),
        ).fetchone()
        if found is not None:
            return int(found["id"])
        row_id = db.insert(
            "INSERT INTO outbox (destination, target, key, kind, label, payload, "
            "payload_hash, state, next_attempt_at, created_at, updated_at, after_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 'pending', ?, ?, ?, ?)",
            (
                new.destination,
                new.target,
                new.key,
                new.kind,
                new.label,
                text,
                digest,
                now,
                now,
                now,
                new.after_id,
            ),
        )
        detail = f"after row {new.after_id}" if new.after_id else ""
        as_stored = {
            "destination": new.destination,
            "key": new.key,
            "kind": new.kind,
            "label": new.label,
            "result": None,
        }
        self._event(db, row_id, "enqueued", detail, as_stored)
        return row_id

    def claim(
        self,
        limit: int,
        *,
        lease_seconds: float = 300.0,
        targets: Collection[tuple[str, str]] | None = None,
    ) -> list[Row]:
        """Take up to ``limit`` due rows, at most one per key, oldest first; only rows for
        ``targets`` (``(destination, target)`` pairs) when given. Rows whose lease ran out (and,
        on SQLite, rows of a dead process on this host) are taken over first."""
        if limit <= 0 or (targets is not None and not targets):
            return []  # nothing can be delivered (and INDEXED BY refuses a constant-false WHERE)
        now = self._clock()
        # A shared write on PostgreSQL: claims of several instances run together and skip
        # each other's locked rows (SKIP LOCKED); on SQLite it is the one write lock.
        with self._db.write(exclusive=False) as db:
            # Orphans first: giving them up is audited, which takes the append lock, and no
            # row lock may be held while waiting for it (another writer holding the lock may
            # be finishing one of those rows).
            found = claims.orphans(db)
            if found:
                with self._write():
                    self._abandon_orphans(db, now, found)
            for row_id in claims.recover(db, now, self._owner):
                self._event(db, row_id, "recovered")
            # The claim writes the rows' "claimed" events itself, in one statement.
            raws = claims.claim(db, now, lease_seconds, self._owner, limit, targets)
        return [_row(raw) for raw in raws]

    def _abandon_orphans(self, db: Database, now: float, found: list[tuple[int, int]]) -> None:
        """Rows waiting for a row that gave up give up too (an order whose FHIR transaction
        was rejected must not be sent); say which row they waited for."""
        for row_id, after_id in found:
            reason = f"row {after_id} it waited for gave up"
            db.execute(
                "UPDATE outbox SET state='dead', last_error=?, updated_at=? WHERE id=?",
                (reason, now, row_id),
            )
            self._event(db, row_id, "dead", reason)

    def mark_delivered(
        self, row_id: int, result: JSON, follow_ups: Sequence[NewRow] = ()
    ) -> list[int]:
        """Record the delivery and store its follow-up rows, all in one transaction; return the
        follow-up rows' ids."""
        return self._finish(
            row_id, "delivered", result=result, event="delivered", follow_ups=follow_ups
        )

    def mark_retry(self, row_id: int, *, delay: float, error: str) -> None:
        now = self._clock()
        with self._write() as db:
            taken = db.execute(
                "UPDATE outbox SET state='retrying', next_attempt_at=?, last_error=?, owner=NULL, "
                f"lease_until=NULL, updated_at=? WHERE id=? AND {_STILL_OURS} RETURNING id",
                (now + max(0.0, delay), error, now, row_id, self._owner),
            ).fetchone()
            if taken is None:
                _lost_lease(row_id)
                return
            self._event(db, row_id, "retry", f"in {delay:.1f}s: {error}")

    def mark_dead(self, row_id: int, reason: str, result: JSON | None = None) -> None:
        self._finish(row_id, "dead", result=result, error=reason, event="dead")

    def _finish(
        self,
        row_id: int,
        state: str,
        *,
        result: JSON | None,
        event: str,
        error: str | None = None,
        follow_ups: Sequence[NewRow] = (),
    ) -> list[int]:
        now = self._clock()
        result_text = None if result is None else json.dumps(result, ensure_ascii=False)
        with self._write() as db:
            # One statement finds what the records and the audit need: the row's terms, its
            # study (an ingest row) and whether it is an order transmission (an HL7 row).
            taken = db.execute(
                "UPDATE outbox SET state=?, result=COALESCE(?, result), "
                "last_error=COALESCE(?, last_error), owner=NULL, lease_until=NULL, "
                f"updated_at=? WHERE id=? AND {_STILL_OURS} "
                "RETURNING id, destination, key, kind, label, result, "
                "(SELECT study_uid FROM study_rows WHERE row_id = outbox.id) AS study_uid, "
                "EXISTS (SELECT 1 FROM order_transmissions WHERE row_id = outbox.id) AS sent",
                (state, result_text, error, now, row_id, self._owner),
            ).fetchone()
            if taken is None:  # another instance owns it now; its outcome stands
                _lost_lease(row_id)
                return []
            if result is not None:  # the records learn the outcome, in the same transaction
                if state == "delivered" and taken["study_uid"] is not None:
                    study_records.record_fhir_ids(
                        db, row_id, result, now, study_uid=str(taken["study_uid"])
                    )
                if taken["sent"]:
                    order_records.record_result(db, row_id, state, result, now)
            self._event(db, row_id, event, error or "", taken)
            return [self._insert(db, new) for new in follow_ups]

    def hold_key(self, row: Row, reason: str) -> None:
        with self._write() as db:
            _hold(db, row.destination, row.target, row.key, reason, self._clock())
            self._event(db, row.id, "key-held", reason)

    # -- analyst actions ----------------------------------------------------------------

    def retry(self, row_id: int) -> Row:
        """Send a dead or waiting row again now, and lift any hold on its key."""
        row = self.get(row_id)
        if row.state in (State.DELIVERED, State.IN_FLIGHT):
            raise ValueError(f"row {row_id} is {row.state.value}; only dead or waiting rows retry")
        now = self._clock()
        with self._write() as db:
            db.execute(
                "DELETE FROM key_holds WHERE destination=? AND target=? AND key=?",
                (row.destination, row.target, row.key),
            )
            db.execute(
                "UPDATE outbox SET state='pending', next_attempt_at=?, updated_at=? WHERE id=?",
                (now, now, row_id),
            )
            self._event(db, row_id, "retry-requested")
        return self.get(row_id)

    def replay(self, row_id: int, payload: JSON | None = None) -> int:
        """Enqueue a fresh copy of a row (optionally with a corrected payload); the original
        stays as history. Lifts any hold on the key. One transaction: a corrected payload
        that does not fit the row's kind (:class:`~adapter.store.payloads.PayloadError`)
        changes nothing."""
        row = self.get(row_id)
        new = NewRow(
            row.destination,
            row.target,
            row.key,
            row.kind,
            row.label,
            row.payload if payload is None else payload,
        )
        with self._write() as db:
            db.execute(
                "DELETE FROM key_holds WHERE destination=? AND target=? AND key=?",
                (row.destination, row.target, row.key),
            )
            self._event(db, row_id, "replayed")
            return self._insert(db, new)

    def record_inbound(
        self,
        *,
        sender: str,
        control_id: str,
        kind: str,
        status: str,
        detail: str,
        message: bytes,
        rows: Sequence[NewRow] = (),
        answer: OrderAnswer | None = None,
    ) -> bool:
        """Store an inbound message and the rows it causes in one transaction, before any ACK,
        with what it says about an order (``answer``: the order record moves on with it).

        Returns False (and stores nothing) when this sender's control id was seen before: a
        resend, to be acknowledged again but not processed twice.
        """
        with self._write() as db:
            seen = db.execute(
                "SELECT 1 FROM inbound WHERE sender=? AND control_id=?", (sender, control_id)
            ).fetchone()
            if seen is not None:
                return False
            db.execute(
                "INSERT INTO inbound (sender, control_id, kind, status, detail, message, "
                "received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sender, control_id, kind, status, detail, message, self._clock()),
            )
            name = "result-received" if kind.startswith("ORU") else "message-received"
            studies = sorted({audit.study_of_key(new.key) for new in rows}) or [""]
            for study_uid in studies:
                audit.append(
                    db,
                    self._clock(),
                    name,
                    outcome=status,
                    study_uid=study_uid,
                    detail=f"{kind} from {sender} control id {control_id}",
                )
            for new in rows:
                self._insert(db, new)
            if answer is not None:
                now = self._clock()
                if answer.control_id and answer.ack:
                    order_records.record_ack(db, answer.control_id, answer.ack, now)
                if answer.state:
                    order_records.record_answer(db, answer.placer, answer.state, answer.filler, now)
        return True

    def inbound_for_order(self, placer: str) -> list[tuple[str, str]]:
        """(message type, status) of each stored inbound message about an order (results,
        order responses), oldest first."""
        raws = self._db.execute(
            "SELECT kind, status FROM inbound WHERE detail=? ORDER BY id", (f"order {placer}",)
        ).fetchall()
        return [(str(r["kind"]), str(r["status"])) for r in raws]

    def inbound_message(self, sender: str, control_id: str) -> bytes | None:
        """The message stored for this sender's control id, or None (a resend must match it)."""
        raw = self._db.execute(
            "SELECT message FROM inbound WHERE sender=? AND control_id=?", (sender, control_id)
        ).fetchone()
        return None if raw is None else bytes(raw[0])

    def inbound_count(self) -> int:
        return int(self._db.scalar("SELECT COUNT(*) FROM inbound"))

    # -- the order records (adapter.store.orders) --------------------------------------------

    def order(self, placer: str) -> OrderRecord | None:
        """The record of the order with this placer order number, None if never sent."""
        return order_records.get(self._db, placer)

    def order_by_control_id(self, control_id: str) -> OrderRecord | None:
        """The order one of whose transmissions had this MSH-10."""
        return order_records.by_control_id(self._db, control_id)

    def order_of_row(self, row_id: int) -> OrderRecord | None:
        """The order an HL7 row is a transmission of (None for other rows)."""
        return order_records.of_row(self._db, row_id)

    def orders_for_study(self, study_uid: str) -> list[OrderRecord]:
        return order_records.for_study(self._db, study_uid)

    def last_orders(self, study_uid: str) -> dict[str, JSON]:
        """The last order sent for each of the study's ServiceRequests (see
        :func:`adapter.store.orders.last_orders`)."""
        return order_records.last_orders(self._db, study_uid)

    def record_transmission(self, row_id: int, placer: str, control: str, control_id: str) -> None:
        """A new transmission of an order (an analyst's replay under a new MSH-10)."""
        with self._write() as db:
            order_records.record_transmission(
                db, row_id, placer, control, control_id, self._clock()
            )

    def timers(self, clock: Callable[[], float] | None = None) -> Timers:
        """The escalation timers kept in the same database (one per handle). ``clock``: a
        handle on its own steady clock instead (tests of wall-clock jumps and restarts)."""
        if clock is not None:
            return Timers(self._db, clock)
        if self._timers is None:
            self._timers = Timers(self._db, SteadyClock(self._clock))
        return self._timers

    def labels(self) -> LabelStore:
        """The PACS label records kept in the same database file (issue 12)."""
        return LabelStore(self._db, self._clock)

    # -- reading --------------------------------------------------------------------------

    def get(self, row_id: int) -> Row:
        raw = self._db.execute("SELECT * FROM outbox WHERE id=?", (row_id,)).fetchone()
        if raw is None:
            raise KeyError(row_id)
        return _row(raw)

    def rows(self, *, state: State | None = None, limit: int = 1000) -> list[Row]:
        if state is None:
            query, args = "SELECT * FROM outbox ORDER BY id LIMIT ?", (limit,)
        else:
            query = "SELECT * FROM outbox WHERE state=? ORDER BY id LIMIT ?"
            args = (state.value, limit)  # type: ignore[assignment]
        return [_row(raw) for raw in self._db.execute(query, args).fetchall()]

    def rows_after(self, after_id: int, limit: int) -> list[Row]:
        """Rows with ids above ``after_id``, oldest first (to page through every row)."""
        raws = self._db.execute(
            "SELECT * FROM outbox WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
        ).fetchall()
        return [_row(raw) for raw in raws]

    def rows_for_key(
        self, key: str, *, kind: str | None = None, label_prefixes: Sequence[str] = ()
    ) -> list[Row]:
        """Every row of one business key (any destination, any state), oldest first; only
        ``kind`` and only labels starting with one of ``label_prefixes`` when given (a note job
        reads its own version's rows, not the study's whole history).

        Read-only; used to recognise a study the adapter has mapped before (review input).
        """
        query = "SELECT * FROM outbox WHERE key=?"
        args: tuple[str | int, ...] = (key,)
        if kind is not None:
            query += " AND kind=?"
            args += (kind,)
        if label_prefixes:  # substr, not LIKE: a label's own % or _ is no wildcard
            query += " AND (" + " OR ".join(["substr(label, 1, ?) = ?"] * len(label_prefixes))
            query += ")"
            for prefix in label_prefixes:
                args += (len(prefix), prefix)
        raws = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [_row(raw) for raw in raws]

    def study(self, study_uid: str) -> StudyRecord | None:
        """The stored record of a study (its patient and order), None if never ingested."""
        return study_records.load(self._db, study_uid)

    def holds(self) -> list[Hold]:
        raws = self._db.execute("SELECT * FROM key_holds ORDER BY since").fetchall()
        return [
            Hold(r["destination"], r["target"], r["key"], r["reason"], r["since"]) for r in raws
        ]

    def events(self, row_id: int) -> list[tuple[float, str, str]]:
        raws = self._db.execute(
            "SELECT at, event, detail FROM events WHERE row_id=? ORDER BY id", (row_id,)
        ).fetchall()
        return [(r["at"], r["event"], r["detail"]) for r in raws]

    def counts(self) -> dict[str, int]:
        raws = self._db.execute("SELECT state, COUNT(*) AS n FROM outbox GROUP BY state")
        counts = {s.value: 0 for s in State}
        counts.update({r["state"]: r["n"] for r in raws})
        return counts

    def open_targets(self) -> list[tuple[str, str]]:
        raws = self._db.execute(
            "SELECT DISTINCT destination, target FROM outbox "
            "WHERE state IN ('pending', 'retrying', 'in_flight')"
        ).fetchall()
        return [(r["destination"], r["target"]) for r in raws]

    def open_rows(
        self, ids: list[int] | None = None, targets: Collection[tuple[str, str]] | None = None
    ) -> int:
        """Rows not yet delivered or dead (optionally among ``ids``), excluding held keys."""
        where, target_args = _target_filter(targets)
        query = (
            "SELECT COUNT(*) FROM outbox o WHERE o.state IN ('pending', 'retrying', 'in_flight') "
            "AND NOT EXISTS (SELECT 1 FROM key_holds h WHERE h.destination=o.destination "
            f"AND h.target=o.target AND h.key=o.key) AND {where}"
        )
        args: tuple[Any, ...] = tuple(target_args)
        if ids is not None:
            query += f" AND o.id IN ({','.join('?' * len(ids))})" if ids else " AND 1=0"
            args += tuple(ids)
        return int(self._db.scalar(query, args))

    def seconds_until_due(self, targets: Collection[tuple[str, str]] | None = None) -> float | None:
        """Seconds until the next open row is due (0 if one is due now), None if none is open."""
        where, args = _target_filter(targets)
        raw = self._db.scalar(
            "SELECT MIN(next_attempt_at) FROM outbox o WHERE o.state IN ('pending', 'retrying') "
            "AND NOT EXISTS (SELECT 1 FROM key_holds h WHERE h.destination=o.destination "
            f"AND h.target=o.target AND h.key=o.key) AND {where}",
            args,
        )
        if raw is None:
            in_flight = self._db.scalar("SELECT COUNT(*) FROM outbox WHERE state='in_flight'")
            return 1.0 if in_flight else None
        return max(0.0, float(raw) - self._clock())


class Batch:
    """Rows and timers stored in the transaction of :meth:`Outbox.batch`."""

    def __init__(self, outbox: Outbox, db: Database) -> None:
        self._outbox = outbox
        self._db = db

    def enqueue(self, new: NewRow) -> int:
        """Store one row (see :meth:`Outbox.enqueue`); return its id."""
        return self._outbox._insert(self._db, new)

    def hold(self, destination: str, target: str, key: str, reason: str) -> None:
        """Hold a key (nothing more is sent for it until an analyst retries)."""
        _hold(self._db, destination, target, key, reason, self._outbox.clock())

    def record_order(self, row_id: int, queued: QueuedOrder) -> None:
        """Record (or update) the order the HL7 row ``row_id`` sends, in the same transaction."""
        order_records.record_queued(self._db, row_id, queued, self._outbox.clock())

    def arm(self, key: str, kind: str, seconds: float, detail: str = "") -> int:
        """Start an escalation timer in the same transaction."""
        return self._outbox.timers().arm_in(self._db, key, kind, seconds, detail)


def _hold(db: Database, destination: str, target: str, key: str, reason: str, now: float) -> None:
    db.execute(
        "INSERT INTO key_holds (destination, target, key, reason, since) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (destination, target, key) DO UPDATE SET reason=excluded.reason, "
        "since=excluded.since",
        (destination, target, key, reason, now),
    )


# Row events that touch patient data at a peer, or an operator's decision: each is audited.
_AUDITED = frozenset({"enqueued", "delivered", "dead", "key-held", "replayed", "retry-requested"})


def _audit_terms(raw: Mapping[str, Any] | DbRow, event: str) -> tuple[str, str, str]:
    """(audit event, outcome, what) for a row event, in the words of the issue's audit list."""
    destination, kind = raw["destination"], raw["kind"]
    what = f"{destination} {kind} {raw['label']}"
    if event == "enqueued":
        return "queued", "success", what
    if event == "replayed":
        return "replay", "success", what
    if event == "retry-requested":
        return "retry", "success", what
    if event == "key-held":
        return "delivery-held", "held", what
    if destination == "hl7":
        name = "order-sent" if kind == "hl7-order" else "order-cancel-sent"
        result = json.loads(raw["result"]) if raw["result"] else {}
        ack = str(result.get("ack") or "")
        if event == "delivered":
            return name, f"ACK {ack}" if ack else "written", what
        return name, f"NACK {ack}" if ack else "failed", what
    if destination == "note":  # a review note job (adapter/review/note_job.py)
        return "note-build", "success" if event == "delivered" else "failed", what
    name = "fhir-write" if destination == "fhir" else "file-write"
    return name, "success" if event == "delivered" else "failed", what


def _new_row(held: HeldRow) -> NewRow:
    return NewRow(held.destination, held.target, held.key, held.kind, held.label, held.payload)


_target_filter = claims.target_filter


def _row(raw: DbRow, **override: Any) -> Row:
    values = {
        "id": raw["id"],
        "destination": raw["destination"],
        "target": raw["target"],
        "key": raw["key"],
        "kind": raw["kind"],
        "label": raw["label"],
        "payload": json.loads(raw["payload"]),
        "state": State(raw["state"]),
        "attempts": raw["attempts"],
        "next_attempt_at": raw["next_attempt_at"],
        "last_error": raw["last_error"] or "",
        "result": json.loads(raw["result"]) if raw["result"] else None,
        "created_at": raw["created_at"],
        "updated_at": raw["updated_at"],
        "after_id": raw["after_id"],
    }
    values.update(override)
    return Row(**values)
