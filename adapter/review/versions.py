"""Review versions are ordered: only a newer version changes the record.

=============================  =============================================================
stored (latest accepted)       submitted version
=============================  =============================================================
none                           accepted
lower                          accepted (an amendment or withdrawal)
equal, same content            nothing to do (a resend): exit 0, nothing enqueued
equal, different content       refused: :class:`StaleReviewError` (exit 2), nothing enqueued
higher                         refused: :class:`StaleReviewError` (exit 2), nothing enqueued
=============================  =============================================================

The content hash is taken over the validated review (key order and whitespace of the JSON
file do not matter).
"""

from __future__ import annotations

import hashlib
from enum import StrEnum
from types import MappingProxyType

from adapter.mapping.review_input import ReviewError, ReviewInput
from adapter.store.reviews import AcceptedReview, RequestRecord, ReviewState


class StaleReviewError(ReviewError):
    """A version that is not newer than the one already accepted for this review."""


class Decision(StrEnum):
    ACCEPT = "accept"
    UNCHANGED = "unchanged"


def content_hash(review: ReviewInput) -> str:
    return hashlib.sha256(review.model_dump_json().encode()).hexdigest()


def decide(stored: AcceptedReview | None, review: ReviewInput, digest: str) -> Decision:
    """Accept a newer version, recognise a resend, refuse anything else.

    Raises:
        StaleReviewError: the version is older, or equal with other content.
    """
    if stored is None or review.version > stored.version:
        return Decision.ACCEPT
    if review.version == stored.version and digest == stored.content_hash:
        return Decision.UNCHANGED
    if review.version == stored.version:
        problem = (
            f"version {review.version} was already accepted with different content; "
            "submit the amendment with a higher version"
        )
    else:
        problem = (
            f"version {review.version} is older than version {stored.version} already "
            "accepted for this review; nothing was sent"
        )
    raise StaleReviewError([("/version", problem)])


def review_state(review: ReviewInput) -> ReviewState:
    if review.concern_withdrawn:
        return "withdrawn"
    if not review.all_images_reviewed:
        return "partial"
    return "final" if review.version == 1 else "amended"


def accepted_record(
    review: ReviewInput,
    digest: str,
    stored: AcceptedReview | None,
    *,
    placer: str,
    findings: tuple[str, ...],
    revoked: tuple[str, ...],
) -> AcceptedReview:
    """The record after this version: earlier requests kept, ``placer`` (the request this
    version asks for, "" for none) active, ``revoked`` revoked."""
    requests = dict(stored.requests) if stored is not None else {}
    when = review.reviewed_at.isoformat(timespec="seconds")
    for old in revoked:
        before = requests.get(old)
        requests[old] = RequestRecord(
            before.findings if before else (),
            "revoked",
            review.version,
            before.opened_at if before else "",
        )
    if placer:
        before = requests.get(placer)
        opened = before.opened_at if before and before.status == "active" else when
        requests[placer] = RequestRecord(findings, "active", review.version, opened)
    return AcceptedReview(
        review.review_id,
        review.study_instance_uid,
        review.version,
        digest,
        review_state(review),
        MappingProxyType(requests),
        images_complete=review.all_images_reviewed,
    )
