"""One record per radiology order the adapter sent: what the workflow knows about it.

An order is named by its placer order number (ORC-2). Its record is written in the same
transaction as the HL7 outbox row that sends it (:meth:`adapter.store.outbox.Batch.record_order`)
and kept up to date as the answers come back, so the workflow never reads an HL7 payload to
learn a fact:

- ``receiver``: the receiver profile the order went to (a result from another RIS is refused);
- ``request_placer``: the ServiceRequest (placer number) the order belongs to (a replacement
  order under ``<placer>-<version>`` belongs to the request it replaces);
- ``order``: the last new or changed order sent (``OrderRequest.to_json()``), which an amendment
  compares with and a cancel repeats (number, priority, text);
- ``fhir``: the references a result, an order response or an escalation writes with (subject,
  ImagingStudy, ServiceRequest, the radiology Task as opened, the FHIR destinations);
- ``filler``: the RIS's own number for the order (ORC-3 of its last response or result), which
  a change or cancel repeats;
- ``state``: ``queued`` -> ``sent`` (written to a file, or committed by the RIS) ->
  ``acknowledged`` (AA) -> ``resulted`` (ORU), or ``rejected`` (AE/AR) / ``cancel-queued`` ->
  ``cancelled``;
- each *transmission*: its outbox row, MSH-10, ORC-1, and the ACK (code, ERR code, time).

Plain SQL with ``?`` parameters only (no JSON functions): the JSON columns are read whole.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from adapter.store.db import Database

JSON = dict[str, Any]

# The tables (``orders``, ``order_transmissions``) are made by migration 5
# (``adapter.store.migrations``).
NEW, CHANGE, CANCEL = "NW", "XO", "CA"


@dataclass(frozen=True, slots=True)
class Transmission:
    """One message sent for an order: a resend keeps it, a replay is a new one."""

    row_id: int
    control_id: str  # MSH-10
    control: str  # ORC-1: NW / XO / CA
    ack_code: str = ""  # MSA-1 once known (AA, AE, AR, CA, ...)
    ack_error: str = ""  # the ERR code of a rejection
    ack_at: float | None = None
    created_at: float = 0.0


@dataclass(frozen=True, slots=True)
class OrderRecord:
    placer: str
    study_uid: str
    request_placer: str
    receiver: str
    state: str
    last_order: JSON | None  # the last NW/XO order as sent; None when only a cancel was sent
    order_row_id: int | None  # the outbox row of the last new order (its on-ACK rows)
    fhir: JSON
    filler: str = ""
    transmissions: tuple[Transmission, ...] = ()

    @property
    def study_key(self) -> str:
        return f"study:{self.study_uid}"


@dataclass(frozen=True, slots=True)
class QueuedOrder:
    """What :func:`record_queued` stores for one HL7 row (the caller knows it unparsed)."""

    placer: str
    study_uid: str
    request_placer: str
    receiver: str
    control: str  # NW / XO / CA
    control_id: str  # MSH-10 decided when the message was rendered
    order: JSON  # OrderRequest.to_json() as sent
    fhir: JSON | None = None  # the FHIR references (new orders only)


@dataclass(frozen=True, slots=True)
class OrderAnswer:
    """What a message on our listener says about an order (stored with the message)."""

    placer: str
    state: str = ""  # the order's new state ("" = unchanged): resulted, acknowledged, rejected
    filler: str = ""  # ORC-3, when the message gave it
    control_id: str = ""  # an application ACK: the MSH-10 of our transmission it answers
    ack: str = ""  # ... and its MSA-1


def record_queued(db: Database, row_id: int, queued: QueuedOrder, now: float) -> None:
    """Inside the transaction that stores the HL7 row ``row_id``: create or update the order's
    record and add the transmission."""
    stored = get(db, queued.placer)
    sent = queued.control in (NEW, CHANGE)
    state = "queued" if sent else "cancel-queued"
    if stored is None:
        db.execute(
            "INSERT INTO orders (placer, study_uid, request_placer, receiver, state, last_order, "
            "order_row_id, fhir, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                queued.placer,
                queued.study_uid,
                queued.request_placer or queued.placer,
                queued.receiver,
                state,
                _dump(queued.order) if sent else "",
                row_id if queued.control == NEW else None,
                _dump(queued.fhir or {}),
                now,
                now,
            ),
        )
    else:
        db.execute(
            "UPDATE orders SET state=?, last_order=?, order_row_id=?, fhir=?, updated_at=? "
            "WHERE placer=?",
            (
                state,
                _dump(queued.order) if sent else _dump(stored.last_order or {}, empty=True),
                row_id if queued.control == NEW else stored.order_row_id,
                _dump(queued.fhir) if queued.fhir else _dump(stored.fhir),
                now,
                queued.placer,
            ),
        )
    record_transmission(db, row_id, queued.placer, queued.control, queued.control_id, now)


def record_transmission(
    db: Database, row_id: int, placer: str, control: str, control_id: str, now: float
) -> None:
    """A transmission (a new row: the first sending, or an analyst's replay) of an order."""
    db.execute(
        "INSERT INTO order_transmissions (row_id, placer, control_id, control, created_at) "
        "VALUES (?, ?, ?, ?, ?) ON CONFLICT (row_id) DO UPDATE SET placer=excluded.placer, "
        "control_id=excluded.control_id, control=excluded.control",
        (row_id, placer, control_id, control, now),
    )


def record_result(
    db: Database, row_id: int, state: str, result: Mapping[str, Any], now: float
) -> None:
    """The outcome of an order row's delivery (the HL7 deliverer's result: ``ack``,
    ``error_code``, or a written ``file``). Rows that are no order transmission are ignored."""
    raw = db.execute(
        "SELECT placer, control FROM order_transmissions WHERE row_id=?", (row_id,)
    ).fetchone()
    if raw is None:
        return
    placer, control = str(raw[0]), str(raw[1])
    ack = str(result.get("ack") or "")
    if ack:
        db.execute(
            "UPDATE order_transmissions SET ack_code=?, ack_error=?, ack_at=? WHERE row_id=?",
            (ack, str(result.get("error_code") or ""), now, row_id),
        )
    if state == "dead":
        new_state = "rejected" if ack else ""
    elif control == CANCEL:
        new_state = "cancelled"
    elif ack == "AA":
        new_state = "acknowledged"
    else:
        new_state = "sent"  # a file written, or committed (CA) awaiting the application ACK
    if new_state:
        set_state(db, placer, new_state, now, unless=("resulted",))


def set_state(
    db: Database,
    placer: str,
    state: str,
    now: float,
    *,
    unless: tuple[str, ...] = (),
) -> None:
    """Move an order to ``state`` (not from any state in ``unless``: a result stays a result)."""
    stored = get(db, placer)
    if stored is None or stored.state in unless:
        return
    db.execute("UPDATE orders SET state=?, updated_at=? WHERE placer=?", (state, now, placer))


def record_answer(
    db: Database, placer: str, state: str, filler: str, now: float
) -> None:
    """A result or order response on our listener: the order's state, and the RIS's own
    number for it when the message gave one."""
    set_state(db, placer, state, now, unless=("resulted",))
    if filler:
        db.execute(
            "UPDATE orders SET filler=?, updated_at=? WHERE placer=?", (filler, now, placer)
        )


def record_ack(db: Database, control_id: str, code: str, now: float) -> None:
    """An application ACK that arrived on our listener for the transmission ``control_id``."""
    db.execute(
        "UPDATE order_transmissions SET ack_code=?, ack_at=? WHERE control_id=?",
        (code, now, control_id),
    )


def get(db: Database, placer: str) -> OrderRecord | None:
    raw = db.execute(
        "SELECT placer, study_uid, request_placer, receiver, state, last_order, order_row_id, "
        "fhir, filler FROM orders WHERE placer=?",
        (placer,),
    ).fetchone()
    if raw is None:
        return None
    sent = db.execute(
        "SELECT row_id, control_id, control, ack_code, ack_error, ack_at, created_at "
        "FROM order_transmissions WHERE placer=? ORDER BY row_id",
        (placer,),
    ).fetchall()
    return OrderRecord(
        placer=str(raw[0]),
        study_uid=str(raw[1]),
        request_placer=str(raw[2]),
        receiver=str(raw[3]),
        state=str(raw[4]),
        last_order=json.loads(raw[5]) if raw[5] else None,
        order_row_id=None if raw[6] is None else int(raw[6]),
        fhir=json.loads(raw[7]) if raw[7] else {},
        filler=str(raw[8]),
        transmissions=tuple(
            Transmission(
                int(t[0]),
                str(t[1]),
                str(t[2]),
                str(t[3]),
                str(t[4]),
                None if t[5] is None else float(t[5]),
                float(t[6]),
            )
            for t in sent
        ),
    )


def by_control_id(db: Database, control_id: str) -> OrderRecord | None:
    """The order one of whose transmissions had this MSH-10 (the newest, if reused)."""
    raw = db.execute(
        "SELECT placer FROM order_transmissions WHERE control_id=? ORDER BY row_id DESC",
        (control_id,),
    ).fetchone()
    return None if raw is None else get(db, str(raw[0]))


def of_row(db: Database, row_id: int) -> OrderRecord | None:
    """The order the outbox row ``row_id`` is a transmission of, None for other rows."""
    raw = db.execute(
        "SELECT placer FROM order_transmissions WHERE row_id=?", (row_id,)
    ).fetchone()
    return None if raw is None else get(db, str(raw[0]))


def for_study(db: Database, study_uid: str) -> list[OrderRecord]:
    raws = db.execute(
        "SELECT placer FROM orders WHERE study_uid=? ORDER BY created_at, placer", (study_uid,)
    ).fetchall()
    return [r for r in (get(db, str(raw[0])) for raw in raws) if r is not None]


def last_orders(db: Database, study_uid: str) -> dict[str, JSON]:
    """The last order (new or change) sent for each ServiceRequest of the study, by the
    request's placer number (a replacement order is filed under the request it replaces)."""
    found: dict[str, tuple[int, JSON]] = {}
    for record in for_study(db, study_uid):
        if record.last_order is None:
            continue
        sent = [t.row_id for t in record.transmissions if t.control in (NEW, CHANGE)]
        when = max(sent, default=0)
        previous = found.get(record.request_placer)
        if previous is None or when > previous[0]:
            found[record.request_placer] = (when, record.last_order)
    return {placer: order for placer, (_, order) in found.items()}


def _dump(value: Mapping[str, Any], *, empty: bool = False) -> str:
    if empty and not value:
        return ""
    return json.dumps(value, ensure_ascii=False, sort_keys=True)
