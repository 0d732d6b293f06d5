"""What the adapter does with each message that arrives on its MLLP listener.

The contract (reliability.md §1, GCP's ``mllpreceiver``): a message is stored durably, with
every outbox row it causes, in one transaction *before* the ACK is sent. If storing fails the
handler raises, the listener closes without an ACK, and the sender resends.

- Cannot be parsed: AR (with ERR naming the segment/field).
- A resend of a message already stored (same sender and MSH-10): AA again, nothing twice.
- An order response or result for an order we never sent: AE, ERR 204 (unknown key).
- ORU^R01: the radiologist's DiagnosticReport and the radiology Task completed; T2 stops.
- ORR^O02 / ORG^O20 / ORI^O24: an application acknowledgement when they carry MSA (T1 stops,
  the "received" Task update is stored), and a Task status change from ORC-1.
- A plain ACK (enhanced mode's application ACK): as above for MSA; no ACK is sent back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from adapter.hl7.ack import build_ack, parse_ack
from adapter.hl7.deliverer import REJECTED, T1, T2, on_ack_rows
from adapter.hl7.inbound import InboundMessage, InboundParseError, parse_inbound
from adapter.mapping.radiology_result import response_bundle, result_bundle
from adapter.mapping.tables import Tables
from adapter.outbox.store import NewRow, Outbox, Row

log = logging.getLogger(__name__)
JSON = dict[str, Any]
UNKNOWN_KEY = "204"  # HL7 table 0357: unknown key identifier


@dataclass
class InboundStats:
    received: int = 0
    duplicates: int = 0
    rejected: int = 0
    unknown_order: int = 0
    results: int = 0
    acknowledgements: int = 0


@dataclass
class InboundHandler:
    outbox: Outbox
    tables: Tables
    fhir_targets: list[tuple[str, str]]
    """Where FHIR updates go (the FHIR server and/or the output folder's file writer)."""
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    stats: InboundStats = field(default_factory=InboundStats)

    async def __call__(self, raw: bytes) -> bytes | None:
        self.stats.received += 1
        sender, control = _sender(raw), _control(raw)
        if raw.startswith(b"MSH") and b"\rMSA|" in raw and not _is_order_response(raw):
            self._application_ack(raw, sender, control)
            return None  # an ACK is never acknowledged
        try:
            message = parse_inbound(raw)
        except InboundParseError as exc:
            self.stats.rejected += 1
            detail = f"{exc.location}: error {exc.error_code}"
            self.outbox.record_inbound(
                sender=sender,
                control_id=control or f"unreadable-{self.stats.received}",
                kind="unreadable",
                status="rejected",
                detail=detail,
                message=raw,
            )
            log.warning("inbound %s rejected (AR): %s", control or "?", detail)
            return self._ack(
                raw, "AR", control, error_code=exc.error_code, location=_location(exc.location)
            )
        order = self.outbox.order_row(message.placer_order_number)
        if order is None:
            self.stats.unknown_order += 1
            self.outbox.record_inbound(
                sender=sender,
                control_id=control,
                kind=message.message_type,
                status="unknown-order",
                detail="no order with this placer number",
                message=raw,
            )
            log.warning("inbound %s: %s for an unknown order (AE)", control, message.message_type)
            return self._ack(raw, "AE", control, error_code=UNKNOWN_KEY, location=("ORC", 2))
        rows, status = self._effects(message, order)
        stored = self.outbox.record_inbound(
            sender=sender,
            control_id=control,
            kind=message.message_type,
            status=status,
            detail=f"order {message.placer_order_number}",
            message=raw,
            rows=rows,
        )
        if not stored:
            self.stats.duplicates += 1
            log.info("inbound %s: duplicate, acknowledged again", control)
        else:
            self._timers(message, order)
        return self._ack(raw, "AA", control)

    def _effects(self, message: InboundMessage, order: Row) -> tuple[list[NewRow], str]:
        fhir = order.payload.get("fhir") or {}
        label = f"RadiologyResult-{message.placer_order_number}-{message.control_id}"
        rows: list[NewRow] = []
        if message.message_type.startswith("ORU"):
            self.stats.results += 1
            bundle = result_bundle(message, fhir, self.tables, self.now())
            rows = self._fhir_rows(order, label, bundle)
            return rows, "result"
        if message.ack is not None and message.ack.code in ("AA", "CA"):
            rows.extend(self._acknowledged(order))
        bundle_or_none = response_bundle(message, fhir)
        if bundle_or_none is not None:
            rows.extend(self._fhir_rows(order, label, bundle_or_none))
        return rows, "order-response"

    def _fhir_rows(self, order: Row, label: str, bundle: JSON) -> list[NewRow]:
        return [
            NewRow(destination, target, order.key, "fhir-transaction", label, bundle)
            for destination, target in self.fhir_targets
        ]

    def _acknowledged(self, order: Row) -> list[NewRow]:
        self.stats.acknowledgements += 1
        return list(on_ack_rows(order))

    def _timers(self, message: InboundMessage, order: Row) -> None:
        timers = self.outbox.timers()
        placer = message.placer_order_number
        if message.message_type.startswith("ORU"):
            timers.cancel(placer, T1)
            timers.cancel(placer, T2)
        elif message.ack is not None and message.ack.code in ("AA", "CA"):
            timers.cancel(placer, T1)

    def _application_ack(self, raw: bytes, sender: str, control: str) -> None:
        """Enhanced mode: the RIS's application ACK arrives as its own message."""
        ack = parse_ack(raw)
        order = self.outbox.row_by_control_id(ack.control_id) if ack.valid else None
        if order is None:
            log.warning("inbound ACK %s for no message of ours", control or "?")
            return
        rows = self._acknowledged(order) if ack.code == "AA" else []
        rejected = ack.code in ("AE", "AR")
        stored = self.outbox.record_inbound(
            sender=sender,
            control_id=control,
            kind="ACK",
            status=f"ack-{ack.code}",
            detail=f"for {ack.control_id}",
            message=raw,
            rows=rows,
        )
        placer = str(order.payload["order"]["placer_order_number"])
        if stored and ack.code == "AA":
            self.outbox.timers().cancel(placer, T1)
        elif stored and rejected:  # the RIS's application rejected it: one escalation, T1 ends
            timers = self.outbox.timers()
            timers.cancel(placer, T1)
            timers.arm(placer, REJECTED, 0, f"application ACK {ack.code}")

    def _ack(
        self,
        raw: bytes,
        code: str,
        control: str,
        *,
        error_code: str | None = None,
        location: tuple[str, int] | None = None,
    ) -> bytes:
        return build_ack(
            raw,
            code,
            control_id=f"ACK{control}"[:20] if control else "ACK",
            now=self.now(),
            error_code=error_code,
            error_location=location,
        )


def _location(text: str) -> tuple[str, int] | None:
    """``"OBR-2"`` -> ``("OBR", 2)`` for the ERR segment."""
    segment, _, number = text.partition("-")
    return (segment, int(number)) if number.isdigit() else ((segment, 0) if segment else None)


def _fields(raw: bytes) -> list[str]:
    first = raw.split(b"\r", 1)[0].decode("latin-1")
    return first.split(first[3]) if len(first) > 3 else []


def _control(raw: bytes) -> str:
    fields = _fields(raw)
    return fields[9] if len(fields) > 9 else ""


def _sender(raw: bytes) -> str:
    fields = _fields(raw)
    return "^".join(fields[2:4]) if len(fields) > 3 else ""


def _is_order_response(raw: bytes) -> bool:
    fields = _fields(raw)
    kind = fields[8] if len(fields) > 8 else ""
    return kind.startswith(("ORR", "ORG", "ORI"))
