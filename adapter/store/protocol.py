"""The store the workflow is typed against: typed records and a generic outbox (issue 8).

Workflow code (ingest, review submission, the MLLP listener's handlers, escalations,
``rtplan reconcile``, the HTTP API, the CLI) names :class:`Store`, not a class: what it may ask
the store is written down here, with the typed records it gets back. The delivery worker needs
only the queue (:class:`RowQueue`); the HL7 deliverer only the timers (:class:`EscalationTimers`).

One implementation today, :class:`adapter.store.outbox.Outbox`, on either backend
(``adapter.store.db``: SQLite or PostgreSQL); ``mypy --strict`` proves it satisfies these
protocols (the checks at the end of this module). The records:

- studies: :class:`~adapter.store.studies.StudyRecord` (``study``, written by
  ``record_ingest`` / ``enqueue_many``);
- reviews: :class:`~adapter.store.reviews.AcceptedReview` (``reviews()``), and the review
  note's versions and document messages (``notes()``: :class:`~adapter.store.notes.NoteVersion`,
  :class:`~adapter.store.notes.NoteMessage`);
- orders and their transmissions: :class:`~adapter.store.orders.OrderRecord`;
- timers and the escalations they record: :class:`~adapter.store.timers.Timer` (``timers()``);
- the inbound-message log (``record_inbound``, de-duplicated by sender and MSH-10);
- identity holds, PACS label records, the audit trail;
- the outbox rows: :class:`~adapter.store.outbox.Row`, each payload of its kind's codec
  (``adapter.store.payloads``).

A record is written in the same transaction as the rows it causes (``batch()``,
``transaction()``, ``record_ingest``, ``record_inbound``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from adapter.store.audit import AuditRecord
from adapter.store.db import Dialect
from adapter.store.identity import IdentityHold, IngestedStudy, IngestWrite, Resolution
from adapter.store.labels import LabelRecord, LabelStatus
from adapter.store.notes import NoteMessage, NoteVersion
from adapter.store.orders import OrderAnswer, OrderRecord, QueuedOrder
from adapter.store.outbox import Hold, NewRow, Row, State
from adapter.store.reviews import AcceptedReview
from adapter.store.studies import StudyRecord
from adapter.store.timers import Timer

JSON = dict[str, Any]
Clock = Callable[[], float]


class EscalationTimers(Protocol):
    """Escalation timers (T1, T2, rejected, identity, conflict); a fired one is the record of
    its escalation (``adapter.store.timers``)."""

    def arm(self, key: str, kind: str, seconds: float, detail: str = "") -> int: ...

    def cancel(self, key: str, kind: str) -> bool: ...

    def take_due(self) -> list[Timer]: ...

    def seconds_until_next(self) -> float | None: ...

    def fired(self) -> list[Timer]: ...

    def stopped(self) -> list[Timer]: ...

    def open(self) -> list[Timer]: ...


class ReviewRecords(Protocol):
    """The latest accepted version of each review (``adapter.store.reviews``)."""

    def get(self, review_id: str) -> AcceptedReview | None: ...

    def latest_for_study(self, study_uid: str) -> AcceptedReview | None: ...

    def accept(self, record: AcceptedReview) -> None: ...


class LabelRecords(Protocol):
    """The PACS label KOS of each study (``adapter.store.labels``)."""

    def latest(self, study_uid: str) -> LabelRecord | None: ...

    def record(
        self,
        *,
        study_uid: str,
        sop_instance_uid: str,
        instance_number: int,
        digest: str,
        document: bytes,
    ) -> LabelRecord: ...

    def history(self, study_uid: str) -> list[LabelRecord]: ...

    def has_row(self, record: LabelRecord, destination: str, target: str) -> bool: ...

    def status(self, study_uid: str) -> LabelStatus: ...

    def studies(self) -> list[str]: ...


class NoteRecords(Protocol):
    """The review note's versions and the document messages each sent
    (``adapter.store.notes``)."""

    def record(
        self, version: NoteVersion, messages: Sequence[tuple[int, NoteMessage]] = ()
    ) -> None: ...

    def versions(self, review_id: str) -> list[NoteVersion]: ...

    def previous_document(self, review_id: str, version: int) -> NoteVersion | None: ...

    def messages(self, review_id: str, receiver: str | None = None) -> list[NoteMessage]: ...


class RowBatch(Protocol):
    """Rows, holds, order records and timers stored in one transaction (``Store.batch()``)."""

    def enqueue(self, new: NewRow) -> int: ...

    def hold(self, destination: str, target: str, key: str, reason: str) -> None: ...

    def record_order(self, row_id: int, queued: QueuedOrder) -> None: ...

    def arm(self, key: str, kind: str, seconds: float, detail: str = "") -> int: ...


class RowQueue(Protocol):
    """The generic outbox as the delivery worker drives it: claim, then finish each row."""

    @property
    def clock(self) -> Clock: ...

    def claim(
        self,
        limit: int,
        *,
        lease_seconds: float = 300.0,
        targets: Collection[tuple[str, str]] | None = None,
    ) -> list[Row]: ...

    def mark_delivered(
        self, row_id: int, result: JSON, follow_ups: Sequence[NewRow] = ()
    ) -> list[int]: ...

    def mark_retry(self, row_id: int, *, delay: float, error: str) -> None: ...

    def mark_dead(self, row_id: int, reason: str, result: JSON | None = None) -> None: ...

    def hold_key(self, row: Row, reason: str) -> None: ...

    def open_rows(
        self, ids: list[int] | None = None, targets: Collection[tuple[str, str]] | None = None
    ) -> int: ...

    def seconds_until_due(
        self, targets: Collection[tuple[str, str]] | None = None
    ) -> float | None: ...


class Store(RowQueue, Protocol):
    """Everything the workflow may ask the store: the outbox and the records beside it."""

    @property
    def name(self) -> str: ...

    @property
    def dialect(self) -> Dialect: ...

    @property
    def location(self) -> Path | str: ...

    def close(self) -> None: ...

    # -- transactions: records and the rows they cause, together ----------------------------

    def transaction(self) -> AbstractContextManager[object]: ...

    def batch(self) -> AbstractContextManager[RowBatch]: ...

    # -- outbox rows -------------------------------------------------------------------------

    def enqueue(
        self,
        *,
        destination: str,
        target: str,
        key: str,
        kind: str,
        label: str,
        payload: JSON,
        after_id: int | None = None,
    ) -> int: ...

    def enqueue_many(
        self, rows: Sequence[NewRow], studies: Sequence[StudyRecord] = ()
    ) -> list[int]: ...

    def retry(self, row_id: int) -> Row: ...

    def replay(self, row_id: int, payload: JSON | None = None) -> int: ...

    def get(self, row_id: int) -> Row: ...

    def rows(self, *, state: State | None = None, limit: int = 1000) -> list[Row]: ...

    def rows_after(self, after_id: int, limit: int) -> list[Row]: ...

    def rows_for_key(
        self, key: str, *, kind: str | None = None, label_prefixes: Sequence[str] = ()
    ) -> list[Row]: ...

    def holds(self) -> list[Hold]: ...

    def events(self, row_id: int) -> list[tuple[float, str, str]]: ...

    def counts(self) -> dict[str, int]: ...

    def open_targets(self) -> list[tuple[str, str]]: ...

    # -- studies and identity -----------------------------------------------------------------

    def study(self, study_uid: str) -> StudyRecord | None: ...

    def record_ingest(self, studies: Sequence[IngestedStudy]) -> IngestWrite: ...

    def identity_holds(self, *, open_only: bool = False) -> list[IdentityHold]: ...

    def resolve_identity(
        self, hold_id: int, resolution: Resolution, *, by: str, note: str
    ) -> list[int]: ...

    # -- reviews, orders, timers, labels ------------------------------------------------------

    def reviews(self) -> ReviewRecords: ...

    def notes(self) -> NoteRecords: ...

    def order(self, placer: str) -> OrderRecord | None: ...

    def order_by_control_id(self, control_id: str) -> OrderRecord | None: ...

    def order_of_row(self, row_id: int) -> OrderRecord | None: ...

    def orders_for_study(self, study_uid: str) -> list[OrderRecord]: ...

    def last_orders(self, study_uid: str) -> dict[str, JSON]: ...

    def record_transmission(
        self, row_id: int, placer: str, control: str, control_id: str
    ) -> None: ...

    def timers(self, clock: Clock | None = None) -> EscalationTimers: ...

    def labels(self) -> LabelRecords: ...

    # -- the inbound-message log --------------------------------------------------------------

    def record_inbound(
        self,
        *,
        sender: str,
        control_id: str,
        kind: str,
        status: str,
        detail: str,
        message: bytes,
        rows: Sequence[NewRow] = (),
        answer: OrderAnswer | None = None,
    ) -> bool: ...

    def inbound_for_order(self, placer: str) -> list[tuple[str, str]]: ...

    def inbound_message(self, sender: str, control_id: str) -> bytes | None: ...

    def inbound_count(self) -> int: ...

    # -- the audit trail ----------------------------------------------------------------------

    def audit(
        self, event: str, *, outcome: str, actor: str, study_uid: str = "", detail: str = ""
    ) -> None: ...

    def audit_records(self, study_uid: str | None = None) -> list[AuditRecord]: ...

    def ingest_outcomes(self) -> dict[str, tuple[str, float]]: ...

    def verify_audit(self) -> int | None: ...


if TYPE_CHECKING:  # mypy --strict proves the implementation satisfies the protocols
    from adapter.store.labels import LabelStore
    from adapter.store.notes import NoteStore
    from adapter.store.outbox import Batch, Outbox
    from adapter.store.reviews import ReviewVersions
    from adapter.store.timers import Timers

    def _outbox_is_a_store(outbox: Outbox) -> Store:
        return outbox

    def _batch_is_a_row_batch(batch: Batch) -> RowBatch:
        return batch

    def _timers_are_escalation_timers(timers: Timers) -> EscalationTimers:
        return timers

    def _review_versions_are_review_records(reviews: ReviewVersions) -> ReviewRecords:
        return reviews

    def _label_store_is_label_records(labels: LabelStore) -> LabelRecords:
        return labels

    def _note_store_is_note_records(notes: NoteStore) -> NoteRecords:
        return notes
