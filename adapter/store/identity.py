"""Identity holds: a study whose patient disagrees is kept aside, never mapped or sent.

A study's patient is fixed by the first ingest that records it (``adapter.store.studies``).
An ingest is *held* instead of stored when

- its instances name more than one patient (they are never mapped together),
- a repeated SOP Instance UID carries different content, or
- its patient (identifier and issuer, name, birth date, sex) differs from the recorded one
  (a late series, or the study re-ingested under another patient).

A hold keeps the incoming record and the outbox rows the ingest would have stored, so that an
operator's resolution can release them. It stays open (``rtplan reconcile`` lists it and exits
non-zero) until ``rtplan identity resolve`` closes it, which is audited with the operator's
name:

- ``keep``: the recorded patient stands; the held rows are discarded (correct the source and
  send again);
- ``replace``: the incoming patient is right; the study's record takes it and the held rows are
  stored for delivery. Only possible for a hold that has rows (one patient, differing from the
  record).

Reasons name DICOM keywords, never values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from adapter.store import audit
from adapter.store import studies as study_records
from adapter.store.db import Database, DbRow
from adapter.store.studies import StudyRecord

# DICOM keywords of the patient fields, in StudyRecord.identity order.
IDENTITY_KEYWORDS = (
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
)


class Resolution(StrEnum):
    KEEP = "keep"
    REPLACE = "replace"


@dataclass(frozen=True, slots=True)
class HeldRow:
    """An outbox row an ingest would have stored (a :class:`NewRow`, without ``after_id``)."""

    destination: str
    target: str
    key: str
    kind: str
    label: str
    payload: dict[str, object]


@dataclass(frozen=True, slots=True)
class IngestedStudy:
    """One study of an ingest as the store receives it: its record and the rows it causes.

    ``held`` is the ingest's own identity problem (instances disagreeing); empty when the
    study is consistent in itself, in which case the store still compares it with the record.
    """

    record: StudyRecord
    status: str
    rows: tuple[HeldRow, ...] = ()
    held: str = ""


@dataclass(frozen=True, slots=True)
class IdentityHold:
    id: int
    study_uid: str
    reason: str
    incoming: StudyRecord
    rows: tuple[HeldRow, ...]
    held_at: float
    resolved_at: float | None = None
    resolved_by: str = ""
    resolution: str = ""
    note: str = ""

    @property
    def open(self) -> bool:
        return self.resolved_at is None

    @property
    def since(self) -> str:
        return datetime.fromtimestamp(self.held_at, UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class IngestWrite:
    """What the store did with an ingest: row ids stored, and holds by Study Instance UID."""

    ids: list[int] = field(default_factory=list)
    held: dict[str, int] = field(default_factory=dict)


def differing_fields(recorded: StudyRecord, incoming: StudyRecord) -> list[str]:
    return [
        keyword
        for keyword, old, new in zip(
            IDENTITY_KEYWORDS, recorded.identity, incoming.identity, strict=True
        )
        if old != new
    ]


def drift_reason(recorded: StudyRecord, incoming: StudyRecord) -> str:
    """Why an ingest disagreeing with the record is held ("" when it agrees)."""
    fields = differing_fields(recorded, incoming)
    if not fields:
        return ""
    return (
        "patient differs from the one recorded for this study "
        f"({', '.join(fields)}); not mapped, nothing sent"
    )


def record_ingest(
    db: Database,
    now: float,
    studies: Sequence[IngestedStudy],
    insert: Callable[[HeldRow], int],
) -> IngestWrite:
    """Inside the caller's transaction: store each study's record and rows, or hold it."""
    result = IngestWrite()
    for study in studies:
        record = study.record
        stored = study_records.load(db, record.study_uid)
        reason = study.held or (drift_reason(stored, record) if stored is not None else "")
        audit.append(
            db,
            now,
            "ingest",
            outcome="held-identity" if reason else study.status,
            study_uid=record.study_uid,
            detail=reason or f"{len(study.rows)} row(s) to send",
        )
        if reason:
            result.held[record.study_uid] = _hold(db, now, study, reason)
            continue
        study_records.save(db, record, now)
        result.ids.extend(_linked(db, record.study_uid, insert(row)) for row in study.rows)
    return result


def _linked(db: Database, study_uid: str, row_id: int) -> int:
    """Remember that the row carries the study's ingest Bundle (its result brings FHIR ids)."""
    study_records.link_row(db, row_id, study_uid)
    return row_id


def _fingerprint(study: IngestedStudy, reason: str) -> str:
    text = json.dumps([reason, asdict(study.record), [asdict(r) for r in study.rows]], default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _hold(db: Database, now: float, study: IngestedStudy, reason: str) -> int:
    """Store the hold (the same ingest held twice is one open hold) and audit it."""
    uid = study.record.study_uid
    fingerprint = _fingerprint(study, reason)
    found = db.execute(
        "SELECT id FROM identity_holds WHERE study_uid=? AND fingerprint=? AND resolved_at IS NULL",
        (uid, fingerprint),
    ).fetchone()
    if found is not None:
        hold_id = int(found[0])
        audit.append(db, now, "identity-hold", outcome="still-held", study_uid=uid,
                     detail=f"hold {hold_id}: {reason}")  # fmt: skip
        return hold_id
    hold_id = db.insert(
        "INSERT INTO identity_holds (study_uid, reason, incoming, rows, fingerprint, held_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (
            uid,
            reason,
            json.dumps(study.record.to_json(), ensure_ascii=False),
            json.dumps([asdict(r) for r in study.rows], ensure_ascii=False),
            fingerprint,
            now,
        ),
    )
    audit.append(
        db, now, "identity-hold", outcome="held", study_uid=uid, detail=f"hold {hold_id}: {reason}"
    )
    return hold_id


def _from_raw(raw: DbRow) -> IdentityHold:
    return IdentityHold(
        id=int(raw["id"]),
        study_uid=str(raw["study_uid"]),
        reason=str(raw["reason"]),
        incoming=StudyRecord.from_json(json.loads(raw["incoming"])),
        rows=tuple(HeldRow(**r) for r in json.loads(raw["rows"])),
        held_at=float(raw["held_at"]),
        resolved_at=None if raw["resolved_at"] is None else float(raw["resolved_at"]),
        resolved_by=raw["resolved_by"] or "",
        resolution=raw["resolution"] or "",
        note=raw["note"] or "",
    )


def holds(db: Database, *, open_only: bool = False) -> list[IdentityHold]:
    query = "SELECT * FROM identity_holds"
    if open_only:
        query += " WHERE resolved_at IS NULL"
    return [_from_raw(raw) for raw in db.execute(query + " ORDER BY id").fetchall()]


def get(db: Database, hold_id: int) -> IdentityHold | None:
    raw = db.execute("SELECT * FROM identity_holds WHERE id=?", (hold_id,)).fetchone()
    return None if raw is None else _from_raw(raw)


class ResolveError(ValueError):
    """A resolution that cannot be applied (the message says why, without patient data)."""


def resolve(
    db: Database,
    now: float,
    hold_id: int,
    resolution: Resolution,
    *,
    by: str,
    note: str,
    insert: Callable[[HeldRow], int],
) -> list[int]:
    """Inside the caller's transaction: close a hold; return the ids of released rows."""
    hold = get(db, hold_id)
    if hold is None:
        raise ResolveError(f"no identity hold {hold_id}")
    if not hold.open:
        raise ResolveError(f"identity hold {hold_id} was already resolved ({hold.resolution})")
    released: list[int] = []
    if resolution is Resolution.REPLACE:
        if not hold.rows:
            raise ResolveError(
                f"identity hold {hold_id} has nothing to release ({hold.reason}); correct the "
                "source and ingest again, and close the hold with --keep"
            )
        stored = study_records.load(db, hold.study_uid)
        if stored is None:
            study_records.save(db, hold.incoming, now)
        else:
            study_records.replace_patient(db, hold.incoming, now)
        released = [_linked(db, hold.study_uid, insert(row)) for row in hold.rows]
    db.execute(
        "UPDATE identity_holds SET resolved_at=?, resolved_by=?, resolution=?, note=? WHERE id=?",
        (now, by, resolution.value, note, hold_id),
    )
    audit.append(
        db,
        now,
        "identity-resolve",
        outcome=resolution.value,
        actor=by,
        study_uid=hold.study_uid,
        detail=f"hold {hold_id}: {len(released)} row(s) released; {note}",
    )
    return released
