"""The PACS label state of each study, in the store's database (one small additive table).

Every label KOS the adapter builds is a row here: its SOP Instance UID, instance number, the
digest of what it says, and the encoded document. A later KOS for the same study (a late
series) supersedes the previous one: the old row is kept and notes ``superseded_by``, because a
KOS already stored by an archive cannot be taken back without a rejection note (which the
adapter must never send). Delivery itself is ordinary outbox rows (kind ``dicom-kos``, key
``pacs-label:<Study Instance UID>``); the label state is read from them:

``none``      no KOS was built for the study
``sent``      a KOS is queued or being delivered (retrying included)
``accepted``  every destination confirmed it (C-STORE success, STOW-RS 200, file written)
``failed``    a destination gave up (see ``rtplan outbox dead``)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from adapter.private import log_key
from adapter.store.db import Database, DbRow

KIND_KOS = "dicom-kos"


def label_key(study_uid: str) -> str:
    """The outbox key of a study's label rows (one in flight per study and destination)."""
    return f"pacs-label:{study_uid}"


def row_label(study_uid: str, instance_number: int) -> str:
    """The outbox label (and file name stem) of one KOS: our own hash of the study, never a UID.
    A KOS's delivery rows are found by this column, never by a field of their payload."""
    return f"KOS-{log_key(study_uid)}-{instance_number}"


class LabelState(StrEnum):
    NONE = "none"
    SENT = "sent"
    ACCEPTED = "accepted"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class LabelRecord:
    sop_instance_uid: str
    study_uid: str
    instance_number: int
    digest: str
    document: bytes
    created_at: float
    superseded_by: str | None


@dataclass(frozen=True, slots=True)
class LabelStatus:
    study_uid: str
    state: LabelState
    current: LabelRecord | None
    superseded: int  # earlier KOS instances of the study
    destinations: tuple[tuple[str, str, str], ...]  # (destination, target, row state)


class LabelStore:
    """Reads and writes ``pacs_labels`` on the outbox's own connection."""

    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def latest(self, study_uid: str) -> LabelRecord | None:
        raw = self._db.execute(
            "SELECT * FROM pacs_labels WHERE study_uid=? ORDER BY instance_number DESC LIMIT 1",
            (study_uid,),
        ).fetchone()
        return None if raw is None else _record(raw)

    def record(
        self,
        *,
        study_uid: str,
        sop_instance_uid: str,
        instance_number: int,
        digest: str,
        document: bytes,
    ) -> LabelRecord:
        """Store a new KOS; the study's previous one (if any) is marked superseded by it."""
        now = self._clock()
        with self._db.write() as db:
            db.execute(
                "UPDATE pacs_labels SET superseded_by=?, superseded_at=? "
                "WHERE study_uid=? AND superseded_by IS NULL",
                (sop_instance_uid, now, study_uid),
            )
            db.execute(
                "INSERT INTO pacs_labels (sop_instance_uid, study_uid, instance_number, digest, "
                "document, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (sop_instance_uid, study_uid, instance_number, digest, document, now),
            )
        record = self.latest(study_uid)
        assert record is not None
        return record

    def history(self, study_uid: str) -> list[LabelRecord]:
        raws = self._db.execute(
            "SELECT * FROM pacs_labels WHERE study_uid=? ORDER BY instance_number", (study_uid,)
        ).fetchall()
        return [_record(r) for r in raws]

    def has_row(self, record: LabelRecord, destination: str, target: str) -> bool:
        """True when this KOS already has an outbox row (any state) for the destination."""
        raw = self._db.execute(
            "SELECT 1 FROM outbox WHERE key=? AND kind=? AND destination=? AND target=? "
            "AND label=? LIMIT 1",
            (
                label_key(record.study_uid),
                KIND_KOS,
                destination,
                target,
                row_label(record.study_uid, record.instance_number),
            ),
        ).fetchone()
        return raw is not None

    def status(self, study_uid: str) -> LabelStatus:
        records = self.history(study_uid)
        if not records:
            return LabelStatus(study_uid, LabelState.NONE, None, 0, ())
        current = records[-1]
        raws = self._db.execute(
            "SELECT destination, target, state FROM outbox WHERE key=? AND kind=? AND label=? "
            "ORDER BY id",
            (label_key(study_uid), KIND_KOS, row_label(study_uid, current.instance_number)),
        ).fetchall()
        # The newest row per destination decides (a replay after a dead letter counts).
        latest: dict[tuple[str, str], str] = {}
        for raw in raws:
            latest[(raw["destination"], raw["target"])] = raw["state"]
        states = set(latest.values())
        if not states:
            state = LabelState.SENT  # built, rows not stored yet (a crash in between)
        elif "dead" in states:
            state = LabelState.FAILED
        elif states == {"delivered"}:
            state = LabelState.ACCEPTED
        else:
            state = LabelState.SENT
        destinations = tuple((d, t, s) for (d, t), s in latest.items())
        return LabelStatus(study_uid, state, current, len(records) - 1, destinations)

    def studies(self) -> list[str]:
        raws = self._db.execute("SELECT DISTINCT study_uid FROM pacs_labels ORDER BY study_uid")
        return [r["study_uid"] for r in raws.fetchall()]


def _record(raw: DbRow) -> LabelRecord:
    return LabelRecord(
        sop_instance_uid=raw["sop_instance_uid"],
        study_uid=raw["study_uid"],
        instance_number=raw["instance_number"],
        digest=raw["digest"],
        document=bytes(raw["document"]),
        created_at=raw["created_at"],
        superseded_by=raw["superseded_by"],
    )
