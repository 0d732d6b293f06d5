"""The payload of a review note job row (kind ``review-note-job``; ``adapter.review.note_job``).

Stored with the review version it belongs to, in the same transaction; read by the note job
deliverer (``adapter.jobs.note_job``), which builds the note after the API's answer. The codec
checks the shape only, so that loading it stays light (no pydantic): the review itself is
validated, and checked against ``content_hash``, when the job runs (``note_job.read_job``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from adapter.store import payloads

JSON = dict[str, Any]
KIND_NOTE_JOB = "review-note-job"
NOTE_JOB = "note"  # the job's outbox destination
NOTE_JOB_TARGET = "review-note"
CONTEXT_FIELDS = (
    "study_uid",
    "patient",
    "patient_identifier",
    "accession",
    "review_task",
    "previous_placers",
    "request_opened",
)


@dataclass(frozen=True, slots=True)
class NoteJobPayload:
    review: JSON  # the accepted review as validated (ReviewInput, JSON mode)
    content_hash: str
    outputs: tuple[str, ...]  # the note outputs chosen when the version was accepted
    context: JSON  # the study context the review's own rows were built with

    def to_json(self) -> JSON:
        return {
            "review": self.review,
            "content_hash": self.content_hash,
            "outputs": sorted(self.outputs),
            "context": self.context,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        review = data["review"]
        if not isinstance(review, Mapping) or not isinstance(review.get("review_id"), str):
            raise ValueError("review: not a review with a review_id")
        digest = data["content_hash"]
        if not isinstance(digest, str) or not digest:
            raise ValueError("content_hash: not text")
        outputs = data["outputs"]
        if not isinstance(outputs, list) or not all(isinstance(o, str) for o in outputs):
            raise ValueError("outputs: not a list of output names")
        context = data["context"]
        if not isinstance(context, Mapping):
            raise ValueError("context: not an object")
        missing = [name for name in CONTEXT_FIELDS if name not in context]
        if missing:
            raise ValueError(f"context: missing {missing[0]}")
        return cls(dict(review), digest, tuple(outputs), dict(context))


payloads.register(NoteJobPayload, KIND_NOTE_JOB)
