"""Deliver ``hl7-document`` rows (the review note as MDM or ORU) to an EHR over MLLP.

Same ACK discipline as the order deliverer (``deliverer.py``), without the radiology timers:

- AA (or CA with a commit-only profile): delivered. CA otherwise: delivered to the receiver's
  store (the application ACK is its business).
- AE / AR / CE / CR: dead, no blind resend; the reason carries MSA-1, the ERR code and the
  control id, never text that may echo the note.
- wrong MSA-2, garbage, no ACK, timeout, dropped connection: resend the same bytes (same
  MSH-10), bounded by the outbox retry policy.

The message was built when the row was stored (``payload["message"]``), so every attempt sends
exactly the same bytes. In the embedded default the rows go to ``Hl7FileDeliverer`` instead,
which writes those bytes as ``<out>/hl7/<label>.hl7``.
"""

from __future__ import annotations

import logging

from adapter.errors import NoAnswer, NotSent
from adapter.hl7.ack_judge import AckOutcome, judge_ack
from adapter.hl7.client import MllpClient
from adapter.hl7.document_payload import DocumentPayload
from adapter.hl7.profiles import ReceiverProfile
from adapter.outbox.worker import Attempt, Verdict
from adapter.store import payloads
from adapter.store.outbox import Row

log = logging.getLogger(__name__)


class Hl7DocumentDeliverer:
    """Send note rows to one document receiver over MLLP."""

    def __init__(self, profile: ReceiverProfile, client: MllpClient) -> None:
        self.profile = profile
        self.client = client

    async def deliver(self, row: Row) -> Attempt:
        document = payloads.read_as(DocumentPayload, row.kind, row.payload)
        control, message = document.control_id, document.message
        try:
            ack = await self.client.send(message)
        except NotSent as exc:
            return Attempt(Verdict.RETRY, f"{control}: {exc}")
        except NoAnswer as exc:
            return Attempt(Verdict.RETRY, f"{control}: {exc}; resending the same message")
        verdict = judge_ack(control, ack, commit_only=self.profile.ack.commit_only)
        result = {"control_id": control, "ack": verdict.code, "error_code": verdict.error_code}
        if verdict.outcome in (AckOutcome.DELIVERED, AckOutcome.COMMITTED):
            return Attempt(Verdict.DELIVERED, result=result)
        if verdict.outcome is AckOutcome.REJECTED:
            reason = verdict.reason + (f" (ERR {verdict.error_code})" if verdict.error_code else "")
            log.warning("note message %s: %s", control, reason)
            return Attempt(Verdict.DEAD, f"rejected by the receiver: {reason}", result=result)
        return Attempt(Verdict.RETRY, f"{verdict.reason}; resending the same message")
