"""What the adapter does with each message that arrives on its MLLP listener.

The contract (reliability.md §1, GCP's ``mllpreceiver``): a message is stored durably, with
every outbox row it causes, in one transaction *before* the ACK is sent. If storing fails the
handler raises, the listener closes without an ACK, and the sender resends.

- From a sender no receiver profile trusts (MSH-3/MSH-4, and the peer address unless a client
  certificate was verified): AR; only its size and SHA-256 are recorded, nothing else happens.
- A result or response for an order that went to a *different* receiver: AR, recorded likewise.
- Cannot be parsed: AR (with ERR naming the segment/field); recorded by size and hash only.
- The same sender and MSH-10 as a stored message but different bytes: AE (ERR 205) and an
  escalation (``conflict``); the stored message stands.
- A resend of a message already stored (same sender, MSH-10 and bytes): AA again, nothing twice.
- An order response or result for an order we never sent: AE, ERR 204 (unknown key).
- ORU^R01: the radiologist's DiagnosticReport and the radiology Task completed; T2 stops.
- ORR^O02 / ORG^O20 / ORI^O24: an application acknowledgement when they carry MSA (T1 stops,
  the "received" Task update is stored), and a Task status change from ORC-1.
- A plain ACK (enhanced mode's application ACK): as above for MSA; no ACK is sent back.

Storing runs in a worker thread (one message at a time, on the handler's own database
connection), so a slow or locked database never freezes the listener's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from adapter.fhir.transaction_payload import KIND_TRANSACTION
from adapter.hl7.ack import build_ack, parse_ack
from adapter.hl7.deliverer import REJECTED, T1, T2, on_ack_rows
from adapter.hl7.inbound import InboundMessage, InboundParseError, parse_inbound
from adapter.hl7.listener import PEER, Peer
from adapter.hl7.trust import TrustPolicy
from adapter.ratelimit import RateLimitedWarning
from adapter.review.radiology_result import response_bundle, result_bundle
from adapter.store.orders import OrderAnswer, OrderRecord
from adapter.store.outbox import NewRow
from adapter.store.protocol import Store
from adapter.tables import Tables

log = logging.getLogger(__name__)
JSON = dict[str, Any]
UNKNOWN_KEY = "204"  # HL7 table 0357: unknown key identifier
DUPLICATE_KEY = "205"  # HL7 table 0357: duplicate key identifier
CONFLICT = "conflict"  # escalation kind: a control id reused with different content


@dataclass
class InboundStats:
    received: int = 0
    duplicates: int = 0
    rejected: int = 0
    unknown_order: int = 0
    results: int = 0
    acknowledgements: int = 0
    refused: int = 0
    conflicts: int = 0


@dataclass
class InboundHandler:
    outbox: Store
    tables: Tables
    fhir_targets: list[tuple[str, str]]
    """Where FHIR updates go (the FHIR server and/or the output folder's file writer)."""
    trust: TrustPolicy
    """Which senders are heard, and for which receiver profiles' orders."""
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    stored: Callable[[], None] | None = None
    """Called on the loop after each message is stored (``rtplan serve``: wakes its outbox
    worker for the Task updates and results the message caused)."""
    stats: InboundStats = field(default_factory=InboundStats)
    _lock: asyncio.Lock | None = None
    _unmatched: RateLimitedWarning = field(default_factory=lambda: RateLimitedWarning(log))
    _refusals: RateLimitedWarning = field(default_factory=lambda: RateLimitedWarning(log))

    async def __call__(self, raw: bytes) -> bytes | None:
        """Handle one message off the event loop (one at a time: one database connection)."""
        peer = PEER.get()
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            answer = await asyncio.to_thread(self.handle, raw, peer)
        if self.stored is not None:
            self.stored()
        return answer

    def handle(self, raw: bytes, peer: Peer | None = None) -> bytes | None:
        """The whole decision for one message, synchronously (see the module docstring)."""
        self.stats.received += 1
        sender, control = _sender(raw), _control(raw)
        application, facility = _sender_pair(raw)
        verdict = self.trust.check(application, facility, peer)
        if not verdict.trusted:
            return self._refuse(raw, sender, control, verdict.reason, peer)
        prior = self.outbox.inbound_message(sender, control) if control else None
        if prior is not None and prior != raw:
            return self._conflict(raw, sender, control)
        if raw.startswith(b"MSH") and b"\rMSA|" in raw and not _is_order_response(raw):
            self._application_ack(raw, sender, control, verdict.receivers)
            return None  # an ACK is never acknowledged
        try:
            message = parse_inbound(raw)
        except InboundParseError as exc:
            self.stats.rejected += 1
            detail = f"{exc.location}: error {exc.error_code}; {_fingerprint(raw)}"
            self.outbox.record_inbound(
                sender=sender,
                control_id=f"unreadable:{_digest(raw)}",
                kind="unreadable",
                status="rejected",
                detail=detail,
                message=b"",  # never stored whole: it may be huge, and it was not accepted
            )
            log.warning("inbound %s rejected (AR): %s", control or "?", detail)
            return self._ack(
                raw, "AR", control, error_code=exc.error_code, location=_location(exc.location)
            )
        order = self.outbox.order(message.placer_order_number)
        if order is not None and order.receiver not in verdict.receivers:
            return self._refuse(raw, sender, control, "order went to another receiver", peer)
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
        acknowledged = message.ack is not None and message.ack.code in ("AA", "CA")
        answer = OrderAnswer(
            order.placer,
            "resulted" if status == "result" else ("acknowledged" if acknowledged else ""),
            message.filler_order_number,
        )
        stored = self.outbox.record_inbound(
            sender=sender,
            control_id=control,
            kind=message.message_type,
            status=status,
            detail=f"order {message.placer_order_number}",
            message=raw,
            rows=rows,
            answer=answer,
        )
        if not stored:
            self.stats.duplicates += 1
            log.info("inbound %s: duplicate, acknowledged again", control)
        else:
            self._timers(message, order)
        return self._ack(raw, "AA", control)

    def _effects(self, message: InboundMessage, order: OrderRecord) -> tuple[list[NewRow], str]:
        fhir = order.fhir
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

    def _fhir_rows(self, order: OrderRecord, label: str, bundle: JSON) -> list[NewRow]:
        return [
            NewRow(destination, target, order.study_key, KIND_TRANSACTION, label, bundle)
            for destination, target in self.fhir_targets
        ]

    def _acknowledged(self, order: OrderRecord) -> list[NewRow]:
        """The rows the order's new-order row stores once the RIS has it (its payload's
        ``on_ack``: the radiology Task becomes "received")."""
        self.stats.acknowledgements += 1
        if order.order_row_id is None:
            return []
        return list(on_ack_rows(self.outbox.get(order.order_row_id)))

    def _timers(self, message: InboundMessage, order: OrderRecord) -> None:
        timers = self.outbox.timers()
        placer = message.placer_order_number
        if message.message_type.startswith("ORU"):
            timers.cancel(placer, T1)
            timers.cancel(placer, T2)
        elif message.ack is not None and message.ack.code in ("AA", "CA"):
            timers.cancel(placer, T1)

    def _refuse(
        self, raw: bytes, sender: str, control: str, reason: str, peer: Peer | None
    ) -> bytes:
        """AR for a sender we do not trust; recorded by size and hash, nothing else stored."""
        self.stats.refused += 1
        source = peer.host if peer is not None else "?"
        self.outbox.record_inbound(
            sender=sender[:200],
            control_id=f"refused:{_digest(raw)}",
            kind="refused",
            status="refused",
            detail=f"{reason}; from {source}; {_fingerprint(raw)}",
            message=b"",
        )
        self._refusals.warn(
            "inbound message refused (AR): %s; from %s; %d bytes", reason, source, len(raw)
        )
        return self._ack(raw, "AR", control, text="not accepted from this sender")

    def _conflict(self, raw: bytes, sender: str, control: str) -> bytes:
        """Same sender and MSH-10 as a stored message, different bytes: AE and an escalation.
        The stored message stands; a person decides which one is right."""
        self.stats.conflicts += 1
        placer = ""
        with contextlib.suppress(InboundParseError):
            placer = parse_inbound(raw).placer_order_number
        # The escalation first: a crash between the two steps may leave an alert without its
        # audit row, never an audit row nobody is alerted to.
        key = placer or f"control:{control}"
        self.outbox.timers().arm(key, CONFLICT, 0.0, f"control id {control} reused")
        self.outbox.record_inbound(
            sender=sender,
            control_id=f"conflict:{control}:{_digest(raw)}",
            kind="conflict",
            status="conflict",
            detail=f"MSH-10 {control} reused with different content; {_fingerprint(raw)}",
            message=b"",
        )
        log.warning("inbound %s: control id reused with different content (AE)", control)
        return self._ack(
            raw, "AE", control, error_code=DUPLICATE_KEY, location=("MSH", 10),
            text="control id already used for a different message",
        )  # fmt: skip

    def _application_ack(
        self, raw: bytes, sender: str, control: str, receivers: frozenset[str]
    ) -> None:
        """Enhanced mode: the RIS's application ACK arrives as its own message."""
        ack = parse_ack(raw)
        order = self.outbox.order_by_control_id(ack.control_id) if ack.valid else None
        if order is None or order.receiver not in receivers:
            self._unmatched.warn("inbound ACK %s for no message of ours", control or "?")
            return
        rows = self._acknowledged(order) if ack.code == "AA" else []
        rejected = ack.code in ("AE", "AR")
        state = "acknowledged" if ack.code == "AA" else ("rejected" if rejected else "")
        stored = self.outbox.record_inbound(
            sender=sender,
            control_id=control,
            kind="ACK",
            status=f"ack-{ack.code}",
            detail=f"for {ack.control_id}",
            message=raw,
            rows=rows,
            answer=OrderAnswer(order.placer, state, control_id=ack.control_id, ack=ack.code),
        )
        placer = order.placer
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
        text: str = "",
    ) -> bytes:
        return build_ack(
            raw,
            code,
            control_id=f"ACK{control}"[:20] if control else "ACK",
            now=self.now(),
            text=text,
            error_code=error_code,
            error_location=location,
        )


def _digest(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def _fingerprint(raw: bytes) -> str:
    """What is kept of a message we did not accept: its size and hash, never its content."""
    return f"{len(raw)} bytes, sha256 {_digest(raw)}"


def _sender_pair(raw: bytes) -> tuple[str, str]:
    """MSH-3.1 and MSH-4.1 (namespace ids), for the allow-list."""
    fields = _fields(raw)
    if len(fields) <= 3 or len(fields[1]) < 1:
        return "", ""
    component_sep = fields[1][0]
    return fields[2].split(component_sep)[0], fields[3].split(component_sep)[0]


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
