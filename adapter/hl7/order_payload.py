"""The payload of an HL7 order row (kinds ``hl7-order``, ``hl7-change``, ``hl7-cancel``).

Written by the review workflow (``adapter.review.orders``), read by the HL7 deliverer and by
``rtplan outbox replay``. Facts about the order (its receiver, state, transmissions) live in
the order record (``adapter.store.orders``), not here: this is what the deliverer needs to
send it, and the rows to store when the RIS acknowledges it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Self

from adapter.store import payloads
from adapter.store.outbox import NewRow

JSON = dict[str, Any]
KIND_ORDER = "hl7-order"
KIND_CANCEL = "hl7-cancel"
KIND_CHANGE = "hl7-change"


@dataclass(frozen=True, slots=True)
class OrderPayload:
    profile: str  # the receiver profile's name
    order: JSON  # ``OrderRequest.to_json()``
    on_ack: tuple[NewRow, ...] = ()  # rows to store when the RIS acknowledges (AA)
    fhir: JSON | None = None  # new orders: the FHIR references a result writes with
    request_placer: str = ""  # the ServiceRequest this order belongs to ("" = its own number)
    control_id: str = ""  # MSH-10, decided when the message was rendered
    message: bytes = b""  # the rendered message: every attempt sends these bytes

    @property
    def placer(self) -> str:
        return str(self.order["placer_order_number"])

    @property
    def control(self) -> str:
        """ORC-1: NW, XO or CA."""
        return str(self.order["control"])

    def rendered(self, control_id: str, message: bytes) -> OrderPayload:
        return replace(self, control_id=control_id, message=message)

    def unrendered(self) -> OrderPayload:
        """The same order without its MSH-10 and message (a replay renders it anew)."""
        return replace(self, control_id="", message=b"")

    def to_json(self) -> JSON:
        data: JSON = {
            "profile": self.profile,
            "order": self.order,
            "on_ack": [_row_json(row) for row in self.on_ack],
        }
        if self.fhir is not None:
            data["fhir"] = self.fhir
        if self.request_placer:
            data["request_placer"] = self.request_placer
        if self.control_id:
            data["control_id"] = self.control_id
        if self.message:
            data["message"] = base64.b64encode(self.message).decode()
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        order = data["order"]
        if not isinstance(order, dict) or "placer_order_number" not in order:
            raise ValueError("order: missing or without placer_order_number")
        fhir = data.get("fhir")
        if fhir is not None and not isinstance(fhir, dict):
            raise ValueError("fhir: not an object")
        message = data.get("message")
        try:
            rendered = base64.b64decode(message, validate=True) if message else b""
        except (binascii.Error, TypeError):
            raise ValueError("message: not base64") from None
        return cls(
            profile=str(data.get("profile", "")),
            order=dict(order),
            on_ack=_rows(data.get("on_ack", [])),
            fhir=fhir,
            request_placer=str(data.get("request_placer", "")),
            control_id=str(data.get("control_id", "")),
            message=rendered,
        )


def _rows(items: object) -> tuple[NewRow, ...]:
    if not isinstance(items, list | tuple):
        raise ValueError("on_ack: not a list")
    rows = []
    for index, item in enumerate(items):
        try:
            rows.append(NewRow(**item))
        except TypeError:
            raise ValueError(
                f"on_ack[{index}]: not a row (destination, target, key, kind, label, payload)"
            ) from None
    return tuple(rows)


def _row_json(row: NewRow) -> JSON:
    data: JSON = {
        "destination": row.destination,
        "target": row.target,
        "key": row.key,
        "kind": row.kind,
        "label": row.label,
        "payload": row.payload,
    }
    if row.after_id is not None:
        data["after_id"] = row.after_id
    return data


payloads.register(OrderPayload, KIND_ORDER, KIND_CHANGE, KIND_CANCEL)
