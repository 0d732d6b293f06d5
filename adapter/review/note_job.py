"""The review note as its own job: built after the review is accepted, not inside the request.

Rendering a note version (the PDF by WeasyPrint, MDM/ORU by hl7apy) costs about a second of
CPU. ``POST /reviews`` must answer within 100 ms (issue 11), so the API stores the review's own
rows (FHIR, HL7 order, timers) together with one **note job** row (destination ``note``, kind
``review-note-job``) in the same transaction; the delivery worker then runs the job, which
renders the note and stores the note's rows. The CLI still builds the note inline
(:func:`adapter.review.service.store_version` without ``note_job``).

What the job row holds: the accepted review version exactly as validated, its content hash and
the study context it was mapped with, so the note always shows exactly that version (nothing is
re-read that a later version could have changed).

Rules (docs/operations.md, "The review note, after the answer"):

* The review's own rows never wait for its note: they are other destinations; a failed note
  build is the job row retrying, then dead (visible in ``GET /reviews/{id}`` and
  ``/outbox``; ``POST /outbox/{id}/retry`` runs it again).
* A note of an older version is never stored after a newer version is accepted: the job checks
  the accepted version in the same write transaction that stores the note's rows (the store's
  exclusive write lock on both backends), and a job whose version was overtaken finishes as
  ``superseded`` without rows. Jobs of one study run one at a time in row order (the outbox
  serialises a key per destination), so version *n*'s note rows precede version *n+1*'s.
* With ``diagnostic-report`` among ``note.outputs`` the review's Bundle goes out without
  ``presentedForm``; the note's transaction then writes the same DiagnosticReport again with
  the note as ``presentedForm`` (a new version of the resource, as in the review row plus the
  form), before the DocumentReference. Only the newest version's report is rewritten: see the
  rule above.
* Without ``diagnostic-report`` the review's own Bundle is shaped by the note (the
  DocumentReference takes the report's place, or the references to the report are dropped), so
  there the note stays inline (:func:`deferrable`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter.config import Settings
from adapter.mapping.narrative import with_narratives
from adapter.mapping.review_bundle import REVIEW_SYSTEM, StudyContext
from adapter.mapping.review_input import ReviewInput
from adapter.private import log_key
from adapter.review.note.facts import review_document_number
from adapter.review.note.fhir import with_presented_form
from adapter.review.note.service import KIND_DOCUMENT, KIND_NOTE, NotePlan, note_bundle
from adapter.review.note_job_payload import (
    KIND_NOTE_JOB,
    NOTE_JOB,
    NOTE_JOB_TARGET,
    NoteJobPayload,
)
from adapter.store.outbox import NewRow, Row

if TYPE_CHECKING:
    from adapter.tables import Tables

JSON = dict[str, Any]
KIND_REVIEW = "fhir-review-transaction"  # = adapter.review.service.KIND_REVIEW (no cycle)
SUPERSEDED = "superseded"
BUILT = "built"


def note_outputs(settings: Settings, *, out_dir: Path | None) -> frozenset[str]:
    """The note outputs of a submission (``note.outputs``, ``auto`` resolved)."""
    return settings.note.selected(out_dir=out_dir is not None, mllp=settings.hl7.mllp)


def deferrable(settings: Settings, *, out_dir: bool) -> bool:
    """Whether the review's own Bundle is complete without the note: when it carries the
    DiagnosticReport (``note.outputs`` has ``diagnostic-report``; ``auto`` has)."""
    outputs = settings.note.selected(out_dir=out_dir, mllp=settings.hl7.mllp)
    return "diagnostic-report" in outputs


def job_label(review_id: str, version: int) -> str:
    """``NoteJob-<hash of the review id>-v<n>``: no identifier an analyst should not need."""
    return f"NoteJob-{log_key(review_id)}-v{version}"


def job_row(
    review: ReviewInput, digest: str, ctx: StudyContext, key: str, outputs: frozenset[str]
) -> NewRow:
    """The job row stored with the review version (same key as the review's rows).
    ``outputs``: the note outputs chosen when the version was accepted (``note.outputs``), so
    a worker with other settings still builds what the review's own rows were built for."""
    payload = NoteJobPayload(
        review=review.model_dump(mode="json"),
        content_hash=digest,
        outputs=tuple(outputs),
        context={
            "study_uid": ctx.study_uid,
            "patient": ctx.patient,
            "patient_identifier": ctx.patient_identifier,
            "accession": ctx.accession,
            "review_task": ctx.review_task,
            "previous_placers": list(ctx.previous_placers),
            "request_opened": dict(ctx.request_opened),
        },
    ).to_json()
    label = job_label(review.review_id, review.version)
    return NewRow(NOTE_JOB, NOTE_JOB_TARGET, key, KIND_NOTE_JOB, label, payload)


def note_label_prefixes(review_id: str, version: int) -> tuple[str, str]:
    """Label prefixes that cover this version's note rows (see :func:`is_note_row`): the FHIR
    transaction's whole label, and the start of every MDM/ORU label of the review."""
    return f"Note-{log_key(review_id)}-v{version}", f"Note-{review_document_number(review_id)}"


def is_note_row(row: Row, review_id: str, version: int) -> bool:
    """Whether ``row`` is one of this version's note rows, by its label (the labels
    :func:`note_fhir_rows` and ``note_rows`` give: ``Note-<hash>-v<n>`` for the FHIR
    transaction, ``Note-<document number>-v<n>-<event>`` for MDM/ORU)."""
    transaction, documents = note_label_prefixes(review_id, version)
    if row.kind == KIND_NOTE:
        return row.label == transaction
    if row.kind == KIND_DOCUMENT:
        return row.label.startswith(documents) and f"-v{version}-" in row.label
    return False


@dataclass(frozen=True, slots=True)
class NoteJob:
    """A job row's content, read back."""

    review: ReviewInput
    content_hash: str
    ctx: StudyContext
    outputs: frozenset[str]


class BadJobError(ValueError):
    """The job row does not hold what :func:`job_row` writes (one line, no patient data)."""


def read_job(payload: JSON) -> NoteJob:
    """Raises:
    BadJobError: the payload is not a note job, or its review no longer matches its hash."""
    from adapter.review.versions import content_hash  # the version's identity

    try:
        review = ReviewInput.model_validate(payload["review"])
        raw = payload["context"]
        ctx = StudyContext(
            study_uid=str(raw["study_uid"]),
            patient=dict(raw["patient"]),
            patient_identifier=raw["patient_identifier"],
            accession=str(raw["accession"]),
            review_task=raw["review_task"],
            previous_placers=tuple(raw["previous_placers"]),
            request_opened=dict(raw["request_opened"]),
        )
        digest = str(payload["content_hash"])
        outputs = frozenset(str(o) for o in payload["outputs"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BadJobError(f"not a review note job ({type(exc).__name__})") from None
    if content_hash(review) != digest:
        raise BadJobError("the job's review does not match its content hash")
    return NoteJob(review, digest, ctx, outputs)


def report_entry(review_payload: JSON, plan: NotePlan) -> JSON | None:
    """The review row's DiagnosticReport entry with the note as ``presentedForm``."""
    with_form = with_presented_form(review_payload, plan.rendered)
    for entry in with_form.get("entry", []):
        resource = entry.get("resource", {})
        if resource.get("resourceType") == "DiagnosticReport" and any(
            i.get("system") == REVIEW_SYSTEM and i.get("value") == plan.review.review_id
            for i in resource.get("identifier", [])
        ):
            return copy.deepcopy(entry)  # type: ignore[no-any-return]
    return None


def note_fhir_rows(
    plan: NotePlan,
    tables: Tables,
    review_payload: JSON | None,
    destinations: Sequence[tuple[str, str]],
    *,
    key: str,
    label: str,
) -> list[NewRow]:
    """The note's FHIR transaction (one row per destination): the DiagnosticReport again with
    ``presentedForm`` (when that output is chosen and the review row has one), then the
    DocumentReference versions (when that output is chosen)."""
    entries: list[JSON] = []
    if "diagnostic-report" in plan.outputs and review_payload is not None:
        entry = report_entry(review_payload, plan)
        if entry is not None:
            entries.append(entry)
    documents = note_bundle(plan, tables)
    if documents is not None:
        entries.extend(documents["entry"])
    if not entries:
        return []
    bundle = with_narratives({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    note_label = label.replace("Review-", "Note-", 1)
    return [NewRow(d, t, key, KIND_NOTE, note_label, bundle) for d, t in destinations]


__all__ = [
    "BUILT",
    "KIND_NOTE_JOB",
    "NOTE_JOB",
    "NOTE_JOB_TARGET",
    "SUPERSEDED",
    "BadJobError",
    "NoteJob",
    "deferrable",
    "is_note_row",
    "job_label",
    "job_row",
    "note_fhir_rows",
    "note_label_prefixes",
    "note_outputs",
    "read_job",
    "report_entry",
]
