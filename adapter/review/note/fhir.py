"""The review note in FHIR R4: ``DiagnosticReport.presentedForm`` and a ``DocumentReference``
per note version. Pure.

Versions (FHIR R4 DocumentReference): the newest note is ``status: current`` with
``relatesTo: [{code: replaces, target: <previous note>}]``; the previous note is rewritten with
``status: superseded`` in the same transaction. ``entered-in-error`` is never used: an amendment
or a withdrawn concern is a new version of a true document, not a mistake. ``docStatus`` is
``final`` for version 1, ``amended`` after, ``preliminary`` while not all images are reviewed.

Identity: ``masterIdentifier`` and ``identifier`` carry the version's document number
(``urn:rtplan:review-note|RN…V<n>``, written by conditional update on it, so a resend is
harmless); a second identifier names the review (``urn:rtplan:review|<review id>``), which is
the set all versions belong to.
"""

from __future__ import annotations

import base64
import copy
import hashlib
from dataclasses import dataclass
from typing import Any

from adapter.mapping.identifiers import conditional_url, full_url
from adapter.mapping.review_bundle import REVIEW_SYSTEM, StudyContext, study_reference
from adapter.review.note.facts import ReviewNote
from adapter.tables import Tables

JSON = dict[str, Any]
NOTE_SYSTEM = "urn:rtplan:review-note"
TEXT_TYPE = "text/plain; charset=utf-8"
PDF_TYPE = "application/pdf"


@dataclass(frozen=True, slots=True)
class RenderedNote:
    """One note version, rendered."""

    note: ReviewNote
    text: str
    pdf: bytes

    @property
    def text_bytes(self) -> bytes:
        return self.text.encode("utf-8")


def _attachment(data: bytes, content_type: str, note: ReviewNote, suffix: str) -> JSON:
    return {
        "contentType": content_type,
        "language": "en",
        "data": base64.b64encode(data).decode("ascii"),
        "size": len(data),
        # R4 Attachment.hash is the base64 SHA-1 of the data (a checksum, not a signature).
        "hash": base64.b64encode(hashlib.sha1(data, usedforsecurity=False).digest()).decode(),
        "title": f"{note.title}, version {note.version}{suffix}",
        "creation": note.reviewed_at,
    }


def attachments(rendered: RenderedNote) -> list[JSON]:
    """The note as two attachments: plain text (UTF-8) and PDF, from the same template."""
    note = rendered.note
    return [
        _attachment(rendered.text_bytes, TEXT_TYPE, note, " (text)"),
        _attachment(rendered.pdf, PDF_TYPE, note, " (PDF)"),
    ]


def with_presented_form(bundle: JSON, rendered: RenderedNote) -> JSON:
    """A copy of the review Bundle whose DiagnosticReport carries the note as presentedForm."""
    out = copy.deepcopy(bundle)
    for entry in out.get("entry", []):
        resource = entry.get("resource", {})
        if resource.get("resourceType") == "DiagnosticReport" and any(
            i.get("system") == REVIEW_SYSTEM and i.get("value") == rendered.note.review_id
            for i in resource.get("identifier", [])
        ):
            resource["presentedForm"] = attachments(rendered)
    return out


def note_reference(document_number: str) -> str:
    return conditional_url("DocumentReference", NOTE_SYSTEM, document_number)


def note_full_url(document_number: str) -> str:
    return full_url("DocumentReference", f"{NOTE_SYSTEM}|{document_number}")


def _doc_status(note: ReviewNote) -> str:
    if not note.all_images_reviewed:
        return "preliminary"
    return "final" if note.version == 1 else "amended"


def document_reference(
    rendered: RenderedNote,
    ctx: StudyContext,
    tables: Tables,
    *,
    report_included: bool,
    replaces: str = "",
) -> JSON:
    """The DocumentReference of one note version.

    ``replaces``: the reference (fullUrl or conditional) of the version this one replaces.
    ``report_included``: whether the review's DiagnosticReport is written too (then it is
    listed in ``context.related``).
    """
    note = rendered.note
    labels = tables.labels_table("review-note")
    related = [study_reference(ctx.study_uid)]
    if report_included:
        related.append(
            {"reference": conditional_url("DiagnosticReport", REVIEW_SYSTEM, note.review_id)}
        )
    resource: JSON = {
        "resourceType": "DocumentReference",
        "masterIdentifier": {"system": NOTE_SYSTEM, "value": note.document_number},
        "identifier": [
            {"system": NOTE_SYSTEM, "value": note.document_number},
            {"system": REVIEW_SYSTEM, "value": note.review_id},
        ],
        "status": "current",
        "docStatus": _doc_status(note),
        "type": {
            "coding": [labels.coding("document_type").as_fhir()],
            "text": "Radiotherapy planning scan review note",
        },
        "category": [{"coding": [labels.coding("document_category").as_fhir()]}],
        "subject": ctx.patient,
        "date": note.reviewed_at,
        "author": [
            {
                "type": "Practitioner",
                "identifier": {"system": note.reviewer_system, "value": note.reviewer_id},
                "display": note.reviewer_name,
            }
        ],
        "description": _description(note),
        "content": [{"attachment": a} for a in attachments(rendered)],
        "context": {"related": related},
    }
    if replaces:
        resource["relatesTo"] = [{"code": "replaces", "target": {"reference": replaces}}]
    return resource


def _description(note: ReviewNote) -> str:
    state = {
        "final": "",
        "amended": " (amended)",
        "incomplete": " (INCOMPLETE: not all images reviewed)",
        "concern-withdrawn": " (amended: concern withdrawn)",
    }[note.state]
    return f"Planning scan review note, version {note.version}{state}"


def superseded(previous: JSON) -> JSON:
    """The previous version, rewritten as superseded (nothing else changes)."""
    out = copy.deepcopy(previous)
    out.pop("id", None)
    out.pop("meta", None)
    out.pop("text", None)
    out["status"] = "superseded"
    return out


def note_entries(
    rendered: RenderedNote,
    ctx: StudyContext,
    tables: Tables,
    *,
    report_included: bool,
    previous: JSON | None,
) -> list[JSON]:
    """Transaction entries: the previous version superseded, then this version.

    The previous version is named (``relatesTo``) only when the outbox holds it: a conditional
    reference to a DocumentReference the server may not have (an earlier version submitted
    without the ``document-reference`` output) would fail the whole transaction."""
    entries: list[JSON] = []
    replaces = ""
    note = rendered.note
    # relatesTo is always the conditional reference (never this Bundle's fullUrl): a version
    # rewritten later as superseded keeps a reference that resolves in any transaction.
    if previous is not None:
        number = str(previous["masterIdentifier"]["value"])
        replaces = note_reference(number)
        entries.append(
            {
                "fullUrl": note_full_url(number),
                "resource": superseded(previous),
                "request": {"method": "PUT", "url": note_reference(number)},
            }
        )
    entries.append(
        {
            "fullUrl": note_full_url(note.document_number),
            "resource": document_reference(
                rendered, ctx, tables, report_included=report_included, replaces=replaces
            ),
            "request": {"method": "PUT", "url": note_reference(note.document_number)},
        }
    )
    return entries


def previous_note(payloads: list[JSON], review_id: str, version: int) -> JSON | None:
    """The newest earlier version's DocumentReference of this review in ``payloads`` (Bundles,
    oldest first: the FHIR server's search answer), or None. The store's own history is in its
    note records (``adapter.store.notes``), not read back from stored Bundles."""
    best: JSON | None = None
    best_version = 0
    for payload in payloads:
        for entry in payload.get("entry", []) if isinstance(payload, dict) else []:
            resource = entry.get("resource", {})
            if resource.get("resourceType") != "DocumentReference":
                continue
            if not any(
                i.get("system") == REVIEW_SYSTEM and i.get("value") == review_id
                for i in resource.get("identifier", [])
            ):
                continue
            number = str(resource.get("masterIdentifier", {}).get("value", ""))
            found = int(number.rsplit("V", 1)[-1]) if "V" in number else 0
            if found < version and found >= best_version:
                best, best_version = resource, found
    return best
