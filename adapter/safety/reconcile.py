"""``rtplan reconcile``: everything still open, in one place, with an exit status to alert on.

Read from the store only (the outbox rows, their timers, the identity holds); nothing is sent.
Five kinds of item (reliability.md CS5, CS7):

- **review**: a planning study whose oncologist review is not completed. Completed means the
  latest review row for the study carries the review Task as ``completed`` *and* was
  delivered; a partial review (``in-progress``) or one not yet delivered is still open. It is
  overdue once the review Task's due date (``restriction.period.end``) has passed.
- **concern**: each HL7 order, with the state of its FHIR write (the review transaction it
  waits for), the order itself, the ACK (the order row's ACK code, or T1 stopped by an
  application ACK) and the radiologist's result (an ORU^R01 stored for the order). It is
  closed once ACKed and its result received. It is overdue when its T1 (no ACK) or T2 (no
  result) timer fired or is past due while it is still open, or the RIS rejected it.
- **identity**: each open identity hold (always needs an operator: counts as overdue).
- **study**: a study whose latest ingest left it unmapped (``held-incomplete``, ``failed``) and
  that has no ImagingStudy row: nobody has a review Task for it. Listed, not overdue (the rest
  of an incomplete study may still be on its way; there is no due date without a Task).
- **dead**: each dead outbox row not superseded by a later delivered copy (a replay): always
  counts as overdue, nothing will retry it by itself.

Exit status: 1 when any item is overdue, else 0. ``--since`` limits the items to those whose
study record, row or hold was created on or after the date.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from adapter.fhir.transaction_payload import KIND_REVIEW, KIND_TRANSACTION
from adapter.hl7.order_payload import KIND_ORDER
from adapter.store.audit import study_of_key
from adapter.store.outbox import Row, State
from adapter.store.protocol import Store
from adapter.store.timers import Timer

JSON = dict[str, Any]
KIND_STUDY = KIND_TRANSACTION
T1, T2, REJECTED = "T1", "T2", "rejected"


@dataclass(frozen=True, slots=True)
class Item:
    kind: str  # review | concern | identity | dead
    study_uid: str
    state: str
    overdue: bool
    due: str = ""
    detail: JSON = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {
            "kind": self.kind,
            "study_instance_uid": self.study_uid,
            "state": self.state,
            "overdue": self.overdue,
            "due": self.due or None,
            **self.detail,
        }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _due(end: str) -> datetime | None:
    """The review's due date from the study record, None when it has none."""
    if not end:
        return None
    try:
        when = datetime.fromisoformat(str(end))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _rows(outbox: Store) -> list[Row]:
    rows: list[Row] = []
    while True:
        batch = outbox.rows_after(rows[-1].id if rows else 0, 1000)
        rows.extend(batch)
        if len(batch) < 1000:
            return rows


def _reviews(outbox: Store, rows: list[Row], now: datetime) -> list[Item]:
    studies: dict[str, Row] = {}
    reviews: dict[str, list[Row]] = {}
    for row in rows:
        uid = study_of_key(row.key)
        if row.kind == KIND_STUDY and row.label.startswith("ImagingStudy-"):
            studies.setdefault(uid, row)
        elif row.kind == KIND_REVIEW:
            reviews.setdefault(uid, []).append(row)
    items = []
    for uid in studies:
        record = outbox.study(uid)
        due = _due(record.review_due if record is not None else "")
        mine = reviews.get(uid, [])
        review = mine[-1] if mine else None
        accepted = outbox.reviews().latest_for_study(uid) if review is not None else None
        status = "requested"
        if accepted is not None:  # the review Task as the latest review left it
            status = "completed" if accepted.images_complete else "in-progress"
        if review is not None and status == "completed" and review.state is State.DELIVERED:
            continue
        if review is None:
            state = "awaiting review"
        elif status == "completed":
            state = f"review recorded, not yet written ({review.state.value})"
        else:
            state = f"review {status}"
        overdue = due is not None and due < now
        items.append(
            Item("review", uid, state, overdue, due.isoformat() if due else "", {"task": status})
        )
    return items


def _timer_state(timers: list[Timer], kind: str) -> tuple[str, float | None]:
    """The latest timer of a kind: armed/fired/stopped (and its due time), or none."""
    mine = [t for t in timers if t.kind == kind]
    if not mine:
        return "none", None
    last = mine[-1]
    if last.cancelled_at is not None:
        return "stopped", last.due_at
    if last.fired_at is not None:
        return "fired", last.due_at
    return "armed", last.due_at


def _concerns(outbox: Store, rows: list[Row], now: float) -> list[Item]:
    by_id = {row.id: row for row in rows}
    timers = outbox.timers()
    all_timers = sorted([*timers.fired(), *timers.open(), *timers.stopped()], key=lambda t: t.id)
    items = []
    for row in rows:
        if row.kind != KIND_ORDER:
            continue
        order = outbox.order_of_row(row.id)
        placer = order.placer if order is not None else ""
        mine = [t for t in all_timers if t.key == placer]
        t1, t1_due = _timer_state(mine, T1)
        t2, t2_due = _timer_state(mine, T2)
        rejected, _ = _timer_state(mine, REJECTED)
        fhir_row = by_id.get(row.after_id) if row.after_id else None
        ack = str((row.result or {}).get("ack") or "")
        inbound = outbox.inbound_for_order(placer)
        has_result = any(kind.startswith("ORU") and status == "result" for kind, status in inbound)
        # A result implies the RIS had the order, even if its ACK went astray.
        acked = (
            (row.state is State.DELIVERED and ack in ("AA", "CA")) or t1 == "stopped" or has_result
        )
        if row.state is State.DELIVERED and not ack:
            ack = "not applicable (written to a file)"
        if has_result or t2 == "stopped":
            result = "received"
        else:
            result = {"fired": "overdue", "armed": "awaiting"}.get(t2, "none")
        closed = acked and result == "received"
        if closed:
            continue
        overdue = (
            row.state is State.DEAD
            or rejected == "fired"
            or (not acked and (t1 == "fired" or (t1 == "armed" and (t1_due or 0) < now)))
            or (acked and (t2 == "fired" or (t2 == "armed" and (t2_due or 0) < now)))
        )
        due = t2_due if acked else t1_due
        items.append(
            Item(
                "concern",
                study_of_key(row.key),
                "open",
                overdue,
                _iso(due) if due else "",
                {
                    "placer_order_number": placer,
                    "fhir_write": fhir_row.state.value if fhir_row else "not recorded",
                    "order": row.state.value,
                    "ack": ack or ("none" if not acked else "application ACK"),
                    "t1": t1,
                    "result": result,
                    "t2": t2,
                    "row": row.id,
                },
            )
        )
    return items


def _dead(rows: list[Row]) -> list[Item]:
    delivered = {
        (r.destination, r.target, r.key, r.kind, r.label): r.id
        for r in rows
        if r.state is State.DELIVERED
    }
    items = []
    for row in rows:
        if row.state is not State.DEAD:
            continue
        later = delivered.get((row.destination, row.target, row.key, row.kind, row.label), 0)
        if later > row.id:
            continue  # replayed and delivered since
        detail = {"row": row.id, "destination": row.destination, "label": row.label}
        items.append(Item("dead", study_of_key(row.key), row.last_error, True, "", detail))
    return items


def reconcile(outbox: Store, *, now: float, since: date | None = None) -> list[Item]:
    """Every open item in the store, oldest study first within each kind."""
    cutoff = datetime.combine(since, datetime.min.time(), UTC).timestamp() if since else None
    rows = [r for r in _rows(outbox) if cutoff is None or r.created_at >= cutoff]
    items: list[Item] = []
    items += _reviews(outbox, rows, datetime.fromtimestamp(now, UTC))
    items += _concerns(outbox, rows, now)
    for hold in outbox.identity_holds(open_only=True):
        if cutoff is not None and hold.held_at < cutoff:
            continue
        detail = {"hold": hold.id, "reason": hold.reason, "held_since": hold.since}
        items.append(Item("identity", hold.study_uid, "held", True, "", detail))
    items += _unmapped(outbox, rows, cutoff)
    items += _dead(rows)
    return items


# Ingest outcomes that leave a study without an ImagingStudy and review Task (CS5: a study that
# could not be assessed is listed, never silent). Identity holds are listed as such.
_NOT_ASSESSED = ("held-incomplete", "failed")


def _unmapped(outbox: Store, rows: list[Row], cutoff: float | None) -> list[Item]:
    mapped = {study_of_key(r.key) for r in rows if r.kind == KIND_STUDY}
    items = []
    for uid, (outcome, at) in sorted(outbox.ingest_outcomes().items(), key=lambda i: i[1][1]):
        if outcome not in _NOT_ASSESSED or uid in mapped or (cutoff and at < cutoff):
            continue
        state = f"not mapped ({outcome}): no review Task exists"
        items.append(Item("study", uid, state, False, "", {"last_ingest": _iso(at)}))
    return items


def lines(items: Iterable[Item]) -> list[str]:
    """One line per item for a terminal: ids, states and reasons, no patient data."""
    out = []
    for item in items:
        flag = "OVERDUE" if item.overdue else "open   "
        due = f" due {item.due}" if item.due else ""
        extra = " ".join(f"{k}={v}" for k, v in item.detail.items())
        out.append(f"{flag} {item.kind:<8} study {item.study_uid}: {item.state}{due} {extra}")
    return out
