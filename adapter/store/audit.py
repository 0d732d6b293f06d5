"""The audit trail: an append-only, hash-chained record of every event touching patient data.

Each record says what happened (``event``), how it ended (``outcome``), who did it
(``actor``: ``rtplan`` for the adapter itself, the operator for a command), to which study
(``study_uid``) and outbox row. ``detail`` names kinds, codes and fields, never patient values
(those stay in the study record and the payloads). Records are written in the same
transaction as the change they describe, so the trail cannot miss a committed change nor
record one that was rolled back.

Append-only is enforced by the database (triggers refuse UPDATE and DELETE), and each record
carries the SHA-256 of its predecessor's hash and its own fields, so an edit made by going
around the adapter (editing the database directly) is found by :func:`verify`
(``rtplan audit --verify``). This follows the
local-record half of reliability.md CS6; IHE BALP AuditEvents can be derived from these rows.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from adapter.store.db import Database, DbRow

SYSTEM = "rtplan"
GENESIS = "0" * 64


@dataclass(frozen=True, slots=True)
class AuditRecord:
    id: int
    at: float
    event: str
    outcome: str
    actor: str
    study_uid: str
    row_id: int | None
    detail: str

    @property
    def when(self) -> str:
        return datetime.fromtimestamp(self.at, UTC).isoformat(timespec="seconds")

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "at": self.when,
            "event": self.event,
            "outcome": self.outcome,
            "actor": self.actor,
            "study_instance_uid": self.study_uid,
            "row": self.row_id,
            "detail": self.detail,
        }


def _digest(prev: str, fields: tuple[object, ...]) -> str:
    text = json.dumps([prev, *fields], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def append(
    db: Database,
    at: float,
    event: str,
    *,
    outcome: str = "success",
    actor: str = SYSTEM,
    study_uid: str = "",
    row_id: int | None = None,
    detail: str = "",
) -> None:
    """Add one record; call inside the write transaction of the change it describes."""
    last = db.execute("SELECT hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    prev = str(last[0]) if last is not None else GENESIS
    fields = (at, event, outcome, actor, study_uid, row_id, detail)
    db.execute(
        "INSERT INTO audit (at, event, outcome, actor, study_uid, row_id, detail, prev_hash, "
        "hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (*fields, prev, _digest(prev, fields)),
    )


def study_of_key(key: str) -> str:
    """The Study Instance UID of an outbox business key (``study:<uid>``), else ``""``."""
    return key.removeprefix("study:") if key.startswith("study:") else ""


def _record(raw: DbRow) -> AuditRecord:
    return AuditRecord(
        id=int(raw["id"]),
        at=float(raw["at"]),
        event=str(raw["event"]),
        outcome=str(raw["outcome"]),
        actor=str(raw["actor"]),
        study_uid=str(raw["study_uid"]),
        row_id=None if raw["row_id"] is None else int(raw["row_id"]),
        detail=str(raw["detail"]),
    )


def records(db: Database, study_uid: str | None = None) -> list[AuditRecord]:
    """Every record (or one study's), oldest first."""
    if study_uid is None:
        raws = db.execute("SELECT * FROM audit ORDER BY id").fetchall()
    else:
        raws = db.execute(
            "SELECT * FROM audit WHERE study_uid=? ORDER BY id", (study_uid,)
        ).fetchall()
    return [_record(raw) for raw in raws]


def verify(db: Database) -> int | None:
    """The id of the first record whose chain is broken, None when the trail is intact."""
    prev = GENESIS
    for raw in db.execute("SELECT * FROM audit ORDER BY id"):
        fields = (
            raw["at"],
            raw["event"],
            raw["outcome"],
            raw["actor"],
            raw["study_uid"],
            raw["row_id"],
            raw["detail"],
        )
        if raw["prev_hash"] != prev or raw["hash"] != _digest(prev, fields):
            return int(raw["id"])
        prev = str(raw["hash"])
    return None
