"""The review note's versions and the HL7 document messages sent for them (issue 8).

Before these records the note workflow learnt its history from the stored payloads: the
previous version's DocumentReference from the stored note and review Bundles, and what each
MDM/ORU receiver already had from the stored ``hl7-document`` rows. Now it asks here.

- ``note_versions``: one per review version that had a note: its document number
  (``RN…V<n>``, the DocumentReference's masterIdentifier), the note state, the outputs it went
  to, the document number of the version it replaces and, once a later version supersedes it,
  that version's number; and the DocumentReference as written (``""`` when the version had no
  ``document-reference`` output), which a later version rewrites ``superseded``.
- ``note_messages``: one per ``hl7-document`` outbox row: receiver profile, review id and
  version, event (T02, T10, T08, T11, R01), TXA-12/OBR-3 document number and MSH-10.

Both are written in the transaction that stores the note's rows
(:meth:`adapter.store.outbox.Outbox.transaction`), so a row never exists without its record.
They hold patient data (the DocumentReference carries the rendered note): the store is a
private file or database, and nothing here is logged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from adapter.store.db import Database, DbRow

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class NoteVersion:
    """One note version as the adapter stored it."""

    review_id: str
    version: int
    study_uid: str
    document_number: str  # RN<16 hex>V<version>: masterIdentifier, TXA-12 of a new document
    state: str  # final / incomplete / amended / concern-withdrawn
    outputs: tuple[str, ...] = ()  # the note outputs this version went to
    replaces: str = ""  # the document number of the version it replaces, "" for none
    superseded_by: str = ""  # the document number of the version that replaced it
    document_reference: JSON | None = None  # as written; None without that output


@dataclass(frozen=True, slots=True)
class NoteMessage:
    """One HL7 document message (MDM or ORU^R01) stored for a receiver."""

    receiver: str  # the receiver profile's name
    review_id: str
    version: int
    event: str  # T02 / T10 / T08 / T11 / R01
    document_number: str  # TXA-12 (MDM) or OBR-3 (ORU)
    control_id: str  # MSH-10, kept by resends


class NoteStore:
    """Read and write ``note_versions`` and ``note_messages`` on the outbox's connection."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def record(
        self, version: NoteVersion, messages: Sequence[tuple[int, NoteMessage]] = ()
    ) -> None:
        """Store a note version and the messages (outbox row id, message) it sends; mark the
        version it replaces superseded. Call it inside ``Outbox.transaction()`` with the rows."""
        if not self._db.in_transaction:
            raise RuntimeError("record() must run inside Outbox.transaction()")
        now = time.time()
        reference = version.document_reference
        self._db.execute(
            "INSERT INTO note_versions (review_id, version, study_uid, document_number, state, "
            "outputs, replaces, superseded_by, document_reference, recorded_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (review_id, version) DO UPDATE SET study_uid=excluded.study_uid, "
            "document_number=excluded.document_number, state=excluded.state, "
            "outputs=excluded.outputs, replaces=excluded.replaces, "
            "document_reference=excluded.document_reference, recorded_at=excluded.recorded_at",
            (
                version.review_id,
                version.version,
                version.study_uid,
                version.document_number,
                version.state,
                ",".join(version.outputs),
                version.replaces,
                version.superseded_by,
                "" if reference is None else json.dumps(reference, ensure_ascii=False),
                now,
            ),
        )
        if version.replaces:
            self._db.execute(
                "UPDATE note_versions SET superseded_by=? WHERE review_id=? AND document_number=?",
                (version.document_number, version.review_id, version.replaces),
            )
        for row_id, message in messages:
            record_message(self._db, row_id, message, now)

    def versions(self, review_id: str) -> list[NoteVersion]:
        """Every stored version of a review's note, oldest first."""
        raws = self._db.execute(
            f"SELECT {_VERSION_COLUMNS} FROM note_versions WHERE review_id=? ORDER BY version",
            (review_id,),
        ).fetchall()
        return [_version(raw) for raw in raws]

    def previous_document(self, review_id: str, version: int) -> NoteVersion | None:
        """The newest version before ``version`` whose DocumentReference was written (the one
        a new version replaces), None when there is none."""
        raw = self._db.execute(
            f"SELECT {_VERSION_COLUMNS} FROM note_versions WHERE review_id=? AND version < ? "
            "AND document_reference <> '' ORDER BY version DESC LIMIT 1",
            (review_id, version),
        ).fetchone()
        return None if raw is None else _version(raw)

    def messages(self, review_id: str, receiver: str | None = None) -> list[NoteMessage]:
        """The document messages stored for a review (for one receiver), oldest first."""
        query = (
            "SELECT receiver, review_id, version, event, document_number, control_id "
            "FROM note_messages WHERE review_id=?"
        )
        args: tuple[str, ...] = (review_id,)
        if receiver is not None:
            query += " AND receiver=?"
            args += (receiver,)
        raws = self._db.execute(query + " ORDER BY row_id", args).fetchall()
        return [
            NoteMessage(str(r[0]), str(r[1]), int(r[2]), str(r[3]), str(r[4]), str(r[5]))
            for r in raws
        ]


def record_message(db: Database, row_id: int, message: NoteMessage, now: float) -> None:
    """Store the record of the ``hl7-document`` row ``row_id`` (a replay of a row is a new
    row and a new record)."""
    db.execute(
        "INSERT INTO note_messages (row_id, receiver, review_id, version, event, "
        "document_number, control_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (row_id) DO NOTHING",
        (
            row_id,
            message.receiver,
            message.review_id,
            message.version,
            message.event,
            message.document_number,
            message.control_id,
            now,
        ),
    )


_VERSION_COLUMNS = (
    "review_id, version, study_uid, document_number, state, outputs, replaces, superseded_by, "
    "document_reference"
)


def _version(raw: DbRow) -> NoteVersion:
    reference = str(raw[8])
    return NoteVersion(
        review_id=str(raw[0]),
        version=int(raw[1]),
        study_uid=str(raw[2]),
        document_number=str(raw[3]),
        state=str(raw[4]),
        outputs=tuple(o for o in str(raw[5]).split(",") if o),
        replaces=str(raw[6]),
        superseded_by=str(raw[7]),
        document_reference=json.loads(reference) if reference else None,
    )
