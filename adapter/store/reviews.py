"""The latest accepted version of each review, kept in the store beside the outbox.

A review is amended by submitting it again with a higher ``version``. Which version is the
latest must be known *when its rows are stored*, not when they are delivered, so the record
lives beside the outbox and is written in the same transaction as the rows it causes
(:meth:`adapter.store.outbox.Outbox.transaction`): either both are stored or neither is, and two
submissions of one review are serialised by the store's exclusive write (SQLite's write lock,
PostgreSQL's append lock: ``adapter.store.db``).

The record also keeps the radiology requests each version opened (placer order number -> the
finding keys behind it and whether it is still active), so a withdrawal revokes exactly the
requests that exist and an amendment updates them instead of creating new ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from adapter.store.db import Database, DbRow

RequestStatus = Literal["active", "revoked"]
# What the accepted version says: final / partial (not all images reviewed) / amended /
# withdrawn (the concern was withdrawn).
ReviewState = Literal["final", "partial", "amended", "withdrawn"]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One radiology request (ServiceRequest + radiology Task) a review opened."""

    findings: tuple[str, ...]
    status: RequestStatus
    version: int  # the review version that last changed it
    opened_at: str = ""  # ISO date-time of the review version that opened it


@dataclass(frozen=True, slots=True)
class AcceptedReview:
    review_id: str
    study_uid: str
    version: int
    content_hash: str
    state: ReviewState
    requests: Mapping[str, RequestRecord] = field(default_factory=lambda: MappingProxyType({}))
    images_complete: bool = True  # all images reviewed: the review Task is completed

    @property
    def active_placers(self) -> tuple[str, ...]:
        return tuple(p for p, r in self.requests.items() if r.status == "active")

    @property
    def opened(self) -> Mapping[str, str]:
        return MappingProxyType({p: r.opened_at for p, r in self.requests.items() if r.opened_at})


class ReviewVersions:
    """Read and write the ``review_versions`` table on the outbox's connection."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def get(self, review_id: str) -> AcceptedReview | None:
        raw = self._db.execute(
            f"SELECT {_COLUMNS} FROM review_versions WHERE review_id = ?", (review_id,)
        ).fetchone()
        return None if raw is None else _accepted(raw)

    def latest_for_study(self, study_uid: str) -> AcceptedReview | None:
        """The review of the study accepted last (any review id), None when none was."""
        raw = self._db.execute(
            f"SELECT {_COLUMNS} FROM review_versions WHERE study_uid = ? "
            "ORDER BY accepted_at DESC LIMIT 1",
            (study_uid,),
        ).fetchone()
        return None if raw is None else _accepted(raw)

    def accept(self, record: AcceptedReview) -> None:
        """Store ``record`` as the latest version. Call it inside ``Outbox.transaction()``,
        with the rows the version causes, after checking the version is newer."""
        if not self._db.in_transaction:
            raise RuntimeError("accept() must run inside Outbox.transaction()")
        requests = {
            placer: {
                "findings": list(r.findings),
                "status": r.status,
                "version": r.version,
                "opened_at": r.opened_at,
            }
            for placer, r in record.requests.items()
        }
        self._db.execute(
            "INSERT INTO review_versions (review_id, study_uid, version, content_hash, state, "
            "requests, accepted_at, images_complete) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (review_id) DO UPDATE "
            "SET study_uid=excluded.study_uid, version=excluded.version, "
            "content_hash=excluded.content_hash, state=excluded.state, "
            "requests=excluded.requests, accepted_at=excluded.accepted_at, "
            "images_complete=excluded.images_complete",
            (
                record.review_id,
                record.study_uid,
                record.version,
                record.content_hash,
                record.state,
                json.dumps(requests, sort_keys=True),
                time.time(),
                1 if record.images_complete else 0,
            ),
        )


_COLUMNS = "review_id, study_uid, version, content_hash, state, requests, images_complete"


def _accepted(raw: DbRow) -> AcceptedReview:
    requests = {
        str(placer): RequestRecord(
            tuple(str(k) for k in value["findings"]),
            value["status"],
            int(value["version"]),
            str(value.get("opened_at", "")),
        )
        for placer, value in json.loads(raw[5]).items()
    }
    return AcceptedReview(
        str(raw[0]),
        str(raw[1]),
        int(raw[2]),
        str(raw[3]),
        raw[4],
        MappingProxyType(requests),
        bool(raw[6]),
    )
