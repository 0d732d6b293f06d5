"""The ACK discipline as a pure function: what an answer to one of our messages means.

The rules follow Mirth's ``HL7v2ResponseValidator`` (``reliability.md`` §1.1, rows 7-10 of §6)
and are stricter than the Google MLLP adapter, which treats any bytes as "delivered":

===========================  ==============  ===============================================
answer                       outcome         what the caller does
===========================  ==============  ===============================================
AA, MSA-2 = our MSH-10       ``delivered``   mark delivered
CA, commit-only profile      ``delivered``   mark delivered (the profile agreed CA suffices)
CA, otherwise                ``committed``   keep open until the application ACK (AA); T1
AE / AR / CE / CR            ``rejected``    no blind retry: dead letter + escalation
MSA-2 is another id          ``invalid``     resend the same bytes, bounded; alert
empty, garbage, no MSA,      ``invalid``     resend the same bytes, bounded
unknown MSA-1
===========================  ==============  ===============================================

A reject with an *empty* MSA-2 is still ``rejected``: a receiver that cannot parse our message
cannot echo its control id, and resending the same bytes would only be refused again.

``reason`` never contains patient data (codes and control ids only). ``text`` (MSA-3) and
``error_code`` (ERR-3.1, or ERR-1.4 before v2.5) are the receiver's own words for the dead
letter; they are kept separate so logging ``reason`` is always safe.

Parsing is :func:`adapter.hl7.ack.parse_ack`'s job (it never raises; garbage, empty and
MSA-less answers come back as ``Ack(valid=False, problem=...)``); this module only judges.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from adapter.hl7.ack import Ack, parse_ack

__all__ = ["AckOutcome", "AckVerdict", "judge_ack"]

ACCEPT = frozenset({"AA"})
COMMIT_ACCEPT = frozenset({"CA"})
REJECT = frozenset({"AE", "AR", "CE", "CR"})


class AckOutcome(StrEnum):
    DELIVERED = "delivered"
    REJECTED = "rejected"
    INVALID = "invalid"
    COMMITTED = "committed"


@dataclass(frozen=True, slots=True)
class AckVerdict:
    outcome: AckOutcome
    code: str  # MSA-1 as received ('' when there was none)
    reason: str  # safe to log: codes, control ids and segment names only
    text: str = ""  # MSA-3, for the dead letter
    error_code: str = ""  # first ERR code (HL7 table 0357)

    @property
    def delivered(self) -> bool:
        return self.outcome is AckOutcome.DELIVERED

    @property
    def resend(self) -> bool:
        """True when resending the same bytes is the right reaction (bounded by the caller)."""
        return self.outcome is AckOutcome.INVALID


def judge_ack(
    sent_control_id: str, ack: Ack | bytes | None, *, commit_only: bool = False
) -> AckVerdict:
    """Decide what ``ack`` (raw payload or parsed) means for the message ``sent_control_id``.

    Args:
        sent_control_id: MSH-10 of the message we sent.
        ack: the ACK payload (between the MLLP framing bytes), a parsed :class:`Ack`, or None
            (no frame at all).
        commit_only: the receiver profile agreed that a commit ACK (CA) means delivered.
    """
    if ack is None:
        return AckVerdict(AckOutcome.INVALID, "", "no ACK")
    parsed = parse_ack(ack) if isinstance(ack, bytes) else ack
    code = parsed.code.upper()
    extra = {
        "text": parsed.text,
        "error_code": parsed.errors[0].code if parsed.errors else "",
    }
    if not parsed.valid:
        if code in REJECT and not parsed.control_id:
            # The receiver could not read our MSH-10; the same bytes would be refused again.
            return AckVerdict(
                AckOutcome.REJECTED, code, f"{code} without MSA-2 for {sent_control_id}", **extra
            )
        return AckVerdict(AckOutcome.INVALID, code, parsed.problem or "unreadable ACK")
    if code not in ACCEPT | COMMIT_ACCEPT | REJECT:
        return AckVerdict(AckOutcome.INVALID, "", "MSA-1 is not an acknowledgment code")
    if parsed.control_id != sent_control_id:
        return AckVerdict(
            AckOutcome.INVALID,
            code,
            f"MSA-2 {_safe(parsed.control_id)!r} does not match MSH-10 {sent_control_id!r}",
            **extra,
        )
    if code in ACCEPT:
        return AckVerdict(AckOutcome.DELIVERED, code, f"AA for {sent_control_id}", **extra)
    if code in COMMIT_ACCEPT:
        if commit_only:
            return AckVerdict(
                AckOutcome.DELIVERED, code, f"CA for {sent_control_id} (commit-only)", **extra
            )
        return AckVerdict(
            AckOutcome.COMMITTED, code, f"CA for {sent_control_id}; awaiting AA", **extra
        )
    return AckVerdict(AckOutcome.REJECTED, code, f"{code} for {sent_control_id}", **extra)


def _safe(value: str, limit: int = 40) -> str:
    """An id-like value from the peer, cut short and printable, for a log-safe reason."""
    return "".join(c if c.isprintable() else "?" for c in value[:limit])
