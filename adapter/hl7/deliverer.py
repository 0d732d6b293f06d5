"""Deliver ``hl7-order`` / ``hl7-cancel`` outbox rows: to a RIS over MLLP, or as ``.hl7`` files.

The row's payload holds the :class:`OrderRequest`, the receiver profile's name and what to do
once the RIS has the order (``on_ack``: FHIR rows such as "radiology Task received"). The
message is built once, when the row is stored (:func:`prerender`), with a fresh random MSH-10
(:func:`new_control_id`): MSH-10 names a transmission, the placer order number names the order.
Every attempt sends those stored bytes, so a resend is byte for byte the same message (same
MSH-10, same MSH-7) and the receiver can recognise it; a replay is a new transmission.

ACK discipline (reliability.md §1.5, rows 5-10):

- AA (or CA with a commit-only profile): delivered; T1 stops, T2 starts; ``on_ack`` rows are
  stored in the same transaction.
- CA otherwise: delivered to the receiver's store; T1 keeps running until the application
  ACK arrives on our listener.
- AE / AR / CE / CR: dead, no blind resend; an escalation is recorded. The reason carries
  MSA-1, the ERR code and the control id, not MSA-3 text (it may echo the message).
- wrong MSA-2, garbage, no ACK, timeout, dropped connection: resend the same message, a
  bounded number of times (the profile's ``connection.max_resends``, applied by the outbox
  worker's retry policy for this receiver: ``adapter/jobs/retry_policies.py``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapter.errors import ConfigError, NoAnswer, NotSent
from adapter.hl7.ack_judge import AckOutcome, judge_ack
from adapter.hl7.client import MllpClient
from adapter.hl7.document_payload import DocumentPayload
from adapter.hl7.messages import MessageBuildError, build_order
from adapter.hl7.model import OrderRequest
from adapter.hl7.order_payload import KIND_CANCEL, KIND_CHANGE, KIND_ORDER, OrderPayload
from adapter.hl7.profiles import ReceiverProfile
from adapter.outbox.offload import INLINE, StoreCalls
from adapter.outbox.worker import Attempt, Verdict
from adapter.private import private_dir, replace_private
from adapter.store import payloads
from adapter.store.outbox import NewRow, Row
from adapter.store.protocol import EscalationTimers

log = logging.getLogger(__name__)
JSON = dict[str, Any]
HL7 = "hl7"
T1, T2, REJECTED = "T1", "T2", "rejected"


def new_control_id() -> str:
    """MSH-10 for a new transmission: ``RT`` + 18 random hex digits (20 characters, the v2.3.1
    limit). Random, not derived from the order, so two adapters (or a replay) never send two
    different transmissions under one id; resends of one transmission keep it (it is stored
    in the row)."""
    return "RT" + secrets.token_hex(9).upper()


def prerender(payload: OrderPayload, *, profile: ReceiverProfile, now: datetime) -> OrderPayload:
    """Build the message once, when the row is stored (hl7apy needs ~10 ms per message):
    every attempt then sends these exact bytes.

    Raises:
        MessageBuildError: the order cannot be encoded (names the segment and field).
    """
    control = new_control_id()
    order = OrderRequest.from_json(payload.order)
    message = build_order(order, profile, control_id=control, now=now)
    return payload.rendered(control, message)


def payload_of(row: Row) -> OrderPayload:
    """The typed payload of an HL7 order row (``adapter.hl7.order_payload``).

    Raises:
        PayloadError: the payload does not fit the row's kind (names the field).
    """
    return payloads.read_as(OrderPayload, row.kind, row.payload)


def document_of(row: Row) -> DocumentPayload:
    """The typed payload of a note document row (``adapter.hl7.document_payload``)."""
    return payloads.read_as(DocumentPayload, row.kind, row.payload)


def new_transmission(row: Row, profile: ReceiverProfile, now: datetime) -> OrderPayload:
    """The payload for sending a row's order again as a new transmission (``outbox replay``):
    a new MSH-10 and MSH-7, the same order (same placer number).

    Raises:
        MessageBuildError: the order cannot be built for the receiver (any more).
    """
    return prerender(payload_of(row).unrendered(), profile=profile, now=now)


ORDER_KINDS = (KIND_ORDER, KIND_CHANGE, KIND_CANCEL)


def control_id_for(row: Row) -> str:
    """MSH-10 of a row: the random one decided at enqueue. Rows stored before MSH-10 was stored
    with them fall back to one derived from the row id. Either way every resend keeps it."""
    if row.kind not in ORDER_KINDS:  # a note document (``hl7-document``, adapter.review.note)
        return document_of(row).control_id
    return payload_of(row).control_id or f"RTP{row.id:09d}"


def message_time(row: Row) -> datetime:
    return datetime.fromtimestamp(row.created_at, UTC)


def render(row: Row, profile: ReceiverProfile) -> bytes:
    """The message for a row, exactly as it is (re)sent.

    Raises:
        MessageBuildError: the order cannot be encoded (names the segment and field).
    """
    if row.kind not in ORDER_KINDS:  # a note document: rendered when it was stored
        return document_of(row).message
    payload = payload_of(row)
    if payload.message:
        return payload.message
    order = OrderRequest.from_json(payload.order)
    return build_order(order, profile, control_id=control_id_for(row), now=message_time(row))


def on_ack_rows(row: Row) -> tuple[NewRow, ...]:
    return payload_of(row).on_ack


def placer_of(row: Row) -> str:
    return payload_of(row).placer


class Hl7Deliverer:
    """Send order rows to one receiver over MLLP."""

    def __init__(
        self,
        profile: ReceiverProfile,
        client: MllpClient,
        *,
        timers: EscalationTimers | None = None,
        calls: StoreCalls = INLINE,
    ) -> None:
        self.profile = profile
        self.client = client
        self.timers = timers
        self.calls = calls  # the timers' store calls (``rtplan serve``: off the event loop)

    async def deliver(self, row: Row) -> Attempt:
        control = control_id_for(row)
        try:
            message = render(row, self.profile)
        except MessageBuildError as exc:
            return Attempt(Verdict.DEAD, f"cannot build the message: {exc.location}")
        try:
            ack = await self.client.send(message)
        except NotSent as exc:
            return Attempt(Verdict.RETRY, f"{control}: {exc}")
        except NoAnswer as exc:
            return Attempt(Verdict.RETRY, f"{control}: {exc}; resending the same message")
        verdict = judge_ack(control, ack, commit_only=self.profile.ack.commit_only)
        result = {"control_id": control, "ack": verdict.code, "error_code": verdict.error_code}
        placer = placer_of(row)
        if verdict.outcome is AckOutcome.DELIVERED:
            await self.calls.run(self._acknowledged, row, placer)
            return Attempt(Verdict.DELIVERED, result=result, follow_ups=on_ack_rows(row))
        if verdict.outcome is AckOutcome.COMMITTED:
            return Attempt(Verdict.DELIVERED, result={**result, "awaiting": "application ACK"})
        if verdict.outcome is AckOutcome.REJECTED:
            reason = f"{verdict.reason}" + (
                f" (ERR {verdict.error_code})" if verdict.error_code else ""
            )
            if self.timers is not None:  # the rejection ends T1: one escalation, not two
                await self.calls.run(self._rejected, self.timers, placer, reason)
            log.warning("order %s: %s", placer, reason)
            return Attempt(Verdict.DEAD, f"rejected by the receiver: {reason}", result=result)
        return Attempt(Verdict.RETRY, f"{verdict.reason}; resending the same message")

    @staticmethod
    def _rejected(timers: EscalationTimers, placer: str, reason: str) -> None:
        timers.cancel(placer, T1)
        timers.arm(placer, REJECTED, 0, reason)

    def _acknowledged(self, row: Row, placer: str) -> None:
        if self.timers is None:
            return
        self.timers.cancel(placer, T1)
        if row.kind == KIND_ORDER:
            seconds = self.profile.escalation.t2_no_result.total_seconds()
            self.timers.arm(placer, T2, seconds, "no radiologist result")
        elif row.kind == KIND_CANCEL:  # a change (XO) leaves T2 running: the read is still due
            self.timers.cancel(placer, T2)


class Hl7FileDeliverer:
    """The embedded default: each message as ``<dir>/hl7/<label>.hl7`` (like an engine's file
    writer). Nothing acknowledges a file, so ``on_ack`` rows are not created and no timer runs."""

    def __init__(self, out_dir: Path, profile: ReceiverProfile) -> None:
        self.folder = out_dir / "hl7"
        self.profile = profile

    async def deliver(self, row: Row) -> Attempt:
        try:
            message = render(row, self.profile)
        except MessageBuildError as exc:
            return Attempt(Verdict.DEAD, f"cannot build the message: {exc.location}")
        target = self.folder / f"{row.label}.hl7"
        try:  # the message holds PID: 0600, atomic, never through a symlink
            await asyncio.to_thread(_write_private, self.folder, target, message)
        except ConfigError as exc:
            return Attempt(Verdict.DEAD, f"refused to write the message file: {exc}")
        except OSError as exc:
            return Attempt(Verdict.RETRY, f"cannot write the message file: {exc.strerror}")
        return Attempt(
            Verdict.DELIVERED, result={"file": str(target), "control_id": control_id_for(row)}
        )


__all__ = [
    "HL7",
    "KIND_CANCEL",
    "KIND_CHANGE",
    "KIND_ORDER",
    "REJECTED",
    "T1",
    "T2",
    "Hl7Deliverer",
    "Hl7FileDeliverer",
    "OrderPayload",
    "control_id_for",
    "new_control_id",
    "new_transmission",
    "on_ack_rows",
    "payload_of",
    "placer_of",
    "prerender",
    "render",
]


def _write_private(folder: Path, target: Path, message: bytes) -> None:
    """Create the private folder and write the file (fsynced: off the event loop)."""
    private_dir(folder)
    replace_private(target, message)
