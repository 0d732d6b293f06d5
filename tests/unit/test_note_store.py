"""The note version and document message records (``adapter.store.notes``), on both backends."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapter.hl7.document_payload import DocumentPayload
from adapter.store.notes import NoteMessage, NoteVersion
from adapter.store.outbox import NewRow, Outbox

REFERENCE = {"resourceType": "DocumentReference", "masterIdentifier": {"value": "RNAV1"}}


def version(number: int, **changes: object) -> NoteVersion:
    values: dict[str, object] = {
        "review_id": "R1",
        "version": number,
        "study_uid": "1.2.3",
        "document_number": f"RNAV{number}",
        "state": "final" if number == 1 else "amended",
        "outputs": ("diagnostic-report", "document-reference", "mdm"),
        "document_reference": {**REFERENCE, "masterIdentifier": {"value": f"RNAV{number}"}},
    }
    values.update(changes)
    return NoteVersion(**values)  # type: ignore[arg-type]


def test_versions_and_messages_are_recorded_with_the_rows(store_url: Path | str) -> None:
    payload = DocumentPayload("document-mdm", "R1", 1, "T02", "RNA", "RTN1", b"MSH|^~\\&|\r")
    row = NewRow(
        "hl7", "document-mdm", "study:1.2.3", "hl7-document", "Note-RNA-v1-T02", payload.to_json()
    )
    message = NoteMessage("document-mdm", "R1", 1, "T02", "RNA", "RTN1")
    with Outbox(store_url) as outbox:
        notes = outbox.notes()
        with pytest.raises(RuntimeError, match=r"inside Outbox\.transaction"):
            notes.record(version(1))
        with pytest.raises(RuntimeError, match="crash"), outbox.transaction():
            (row_id,) = outbox.enqueue_many([row])
            notes.record(version(1), [(row_id, message)])
            raise RuntimeError("crash between the note's rows and the rest of the review")
        assert notes.versions("R1") == [] and notes.messages("R1") == [] and outbox.rows() == []
        with outbox.transaction():
            (row_id,) = outbox.enqueue_many([row])
            notes.record(version(1), [(row_id, message)])
        assert notes.versions("R1") == [version(1)]
        assert notes.messages("R1") == [message] == notes.messages("R1", receiver="document-mdm")
        assert notes.messages("R1", receiver="document-oru") == []


def test_a_new_version_supersedes_the_one_it_replaces(store_url: Path | str) -> None:
    with Outbox(store_url) as outbox:
        notes = outbox.notes()
        with outbox.transaction():
            notes.record(version(1))
            # Version 2 went only to MDM: no DocumentReference, nothing superseded.
            notes.record(version(2, outputs=("mdm",), document_reference=None))
        assert notes.previous_document("R1", 1) is None
        assert notes.previous_document("R1", 3) == version(1)  # the newest one written
        with outbox.transaction():
            notes.record(version(3, replaces="RNAV1"))
        first, second, third = notes.versions("R1")
        assert first.superseded_by == "RNAV3" and third.replaces == "RNAV1"
        assert second.superseded_by == "" and notes.previous_document("R1", 4) == third
        assert notes.previous_document("R2", 4) is None
