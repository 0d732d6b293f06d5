"""Fill the review note's records of a store written before them: migration 6's last step.

Before migration 6 the note read its header (study start, description, modalities) from the
study's stored ingest Bundles, the previous version's DocumentReference from the stored note
and review Bundles, and what each document receiver had from the stored ``hl7-document``
rows. A store written then has those payloads but not the records, so this module reads them
once, in the migration that adds the columns and tables (and only then):

- each mapped study record gets ``study_started``, ``study_description`` and
  ``study_modalities`` from its ingest Bundles (the newest non-empty value, as the note read
  them);
- each note version whose DocumentReference a Bundle wrote gets a ``note_versions`` record
  (its state from ``docStatus`` and the description the adapter wrote; the outputs as far as
  the rows show them);
- each ``hl7-document`` row gets its ``note_messages`` record.

Nothing else reads stored payloads for facts. Plain SQL; the JSON is parsed in Python.
"""

from __future__ import annotations

import json
from typing import Any

from adapter.store import notes
from adapter.store.db import Database

JSON = dict[str, Any]
# = adapter.mapping.review_bundle.REVIEW_SYSTEM and adapter.review.note.fhir.NOTE_SYSTEM
REVIEW_SYSTEM = "urn:rtplan:review"
NOTE_KINDS = ("fhir-note-transaction", "fhir-review-transaction")


def fill(db: Database) -> None:
    study_headers(db)
    note_versions(db)
    note_messages(db)


def study_headers(db: Database) -> int:
    """The note header of mapped study records that have none; return how many were filled."""
    filled = 0
    uids = [
        str(r[0])
        for r in db.execute(
            "SELECT study_uid FROM studies WHERE patient_system <> '' AND study_modalities='[]' "
            "AND study_started='' AND study_description=''"
        ).fetchall()
    ]
    for uid in uids:
        raws = db.execute(
            "SELECT payload FROM outbox WHERE key=? AND kind='fhir-transaction' ORDER BY id",
            (f"study:{uid}",),
        ).fetchall()
        started = description = ""
        modalities: list[str] = []
        for (text,) in raws:
            study = _imaging_study(json.loads(text), uid)
            if study is None:
                continue
            started = str(study.get("started") or started)
            description = str(study.get("description") or description)
            modalities = [str(m.get("code")) for m in study.get("modality", []) if m.get("code")]
        if not (started or description or modalities):
            continue
        db.execute(
            "UPDATE studies SET study_started=?, study_description=?, study_modalities=? "
            "WHERE study_uid=?",
            (started, description, json.dumps(modalities), uid),
        )
        filled += 1
    return filled


def _imaging_study(bundle: JSON, uid: str) -> JSON | None:
    for entry in bundle.get("entry", []):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if (
            isinstance(resource, dict)
            and resource.get("resourceType") == "ImagingStudy"
            and any(i.get("value") == f"urn:oid:{uid}" for i in resource.get("identifier", []))
        ):
            return resource
    return None


def note_versions(db: Database) -> int:
    """A ``note_versions`` record for each DocumentReference version the stored Bundles wrote;
    return how many."""
    raws = db.execute(
        "SELECT key, kind, payload FROM outbox "
        f"WHERE kind IN ({', '.join('?' * len(NOTE_KINDS))}) ORDER BY id",
        NOTE_KINDS,
    ).fetchall()
    found: dict[tuple[str, int], notes.NoteVersion] = {}
    for key, kind, text in raws:
        for entry in json.loads(text).get("entry", []):
            resource = entry.get("resource") if isinstance(entry, dict) else None
            if not isinstance(resource, dict) or resource.get("status") != "current":
                continue  # a superseded copy is the earlier version, already found
            version = _version(resource, str(key).removeprefix("study:"), str(kind))
            if version is not None:
                found.setdefault((version.review_id, version.version), version)
    with_successor = {v.replaces: v.document_number for v in found.values() if v.replaces}
    for version in found.values():
        db.execute(
            "INSERT INTO note_versions (review_id, version, study_uid, document_number, state, "
            "outputs, replaces, superseded_by, document_reference, recorded_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0) ON CONFLICT (review_id, version) DO NOTHING",
            (
                version.review_id,
                version.version,
                version.study_uid,
                version.document_number,
                version.state,
                ",".join(version.outputs),
                version.replaces,
                with_successor.get(version.document_number, ""),
                json.dumps(version.document_reference, ensure_ascii=False),
            ),
        )
    return len(found)


def _version(resource: JSON, study_uid: str, kind: str) -> notes.NoteVersion | None:
    if resource.get("resourceType") != "DocumentReference":
        return None
    identifiers = resource.get("identifier", [])
    review_id = next(
        (str(i.get("value")) for i in identifiers if i.get("system") == REVIEW_SYSTEM), ""
    )
    number = str((resource.get("masterIdentifier") or {}).get("value", ""))
    head, _, tail = number.rpartition("V")
    if not review_id or not head or not tail.isdigit():
        return None
    replaces = ""
    for relation in resource.get("relatesTo", []):
        target = str((relation.get("target") or {}).get("reference", ""))
        if relation.get("code") == "replaces" and "|" in target:
            replaces = target.rpartition("|")[2]
    description = str(resource.get("description", ""))
    state = {"preliminary": "incomplete", "final": "final"}.get(
        str(resource.get("docStatus")),
        "concern-withdrawn" if "concern withdrawn" in description else "amended",
    )
    written = dict(resource)
    written.pop("text", None)
    outputs: tuple[str, ...] = ("document-reference",)
    if kind == "fhir-note-transaction":  # its own row: the DiagnosticReport was written too
        outputs = ("diagnostic-report", "document-reference")
    return notes.NoteVersion(
        review_id, int(tail), study_uid, number, state, outputs, replaces, "", written
    )


def note_messages(db: Database) -> int:
    """A ``note_messages`` record for each ``hl7-document`` row; return how many."""
    raws = db.execute(
        "SELECT id, target, payload, created_at FROM outbox WHERE kind='hl7-document' ORDER BY id"
    ).fetchall()
    for row_id, target, text, created in raws:
        payload = json.loads(text)
        message = notes.NoteMessage(
            receiver=str(payload.get("profile") or target),
            review_id=str(payload.get("review_id", "")),
            version=int(payload.get("version", 0)),
            event=str(payload.get("event", "")),
            document_number=str(payload.get("document_number", "")),
            control_id=str(payload.get("control_id", "")),
        )
        notes.record_message(db, int(row_id), message, float(created))
    return len(raws)
