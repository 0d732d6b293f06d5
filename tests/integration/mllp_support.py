"""Shared bits for the MLLP tests: fixed pre-built orders and a bounded resend loop.

The resend loop stands in for the outbox at transport level: it resends the *same bytes* on
"no answer" and on an invalid ACK, never on a rejection, and stops after ``attempts``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

from adapter.hl7.ack_judge import AckVerdict, judge_ack
from adapter.hl7.client import MllpClient, NoAnswer, NotSent, control_id

T = TypeVar("T")

ORM = (
    "MSH|^~\\&|RTPLAN|ONCOLOGY|RIS|RADIOLOGY|20240301101500+0000||ORM^O01|{id}|P|2.4|||AL|NE\r"
    "PID|1||MRN{n:05d}^^^HOSP-MRN^MR||TESTPATIENT^ALPHA||19600101|F\r"
    "PV1|1|O\r"
    "ORC|NW|PLC{n:05d}^RTPLAN||||||||||1234^ONCOLOGIST^ONE\r"
    "OBR|1|PLC{n:05d}^RTPLAN||RTPLANREVIEW^Radiologist review of RT planning scan^L|||"
    "20240301101500+0000||||||||||ACC{n:05d}|RP{n:05d}||||||||||||Possible unexpected finding\r"
    "NTE|1||Concern raised at planning review\r"
    "ZDS|1.2.826.0.1.3680043.8.498.{n}^RTPLAN^Application^DICOM"
)


def order(n: int = 1) -> bytes:
    """A fixed, hand-written ORM^O01 with MSH-10 ``RTP-{n:06d}``."""
    return ORM.format(id=f"RTP-{n:06d}", n=n).encode("ascii")


@dataclass
class Outcome:
    verdict: AckVerdict | None  # the final verdict (None: gave up without a usable ACK)
    history: list[str] = field(default_factory=list)  # one entry per attempt
    sent: list[bytes] = field(default_factory=list)  # the bytes of every attempt


async def deliver(
    client: MllpClient,
    message: bytes,
    *,
    attempts: int = 5,
    commit_only: bool = False,
    pause: float = 0.0,
) -> Outcome:
    outcome = Outcome(None)
    msh10 = control_id(message)
    for _ in range(attempts):
        outcome.sent.append(message)
        try:
            raw = await client.send(message)
        except NotSent:
            outcome.history.append("not_sent")
            await asyncio.sleep(pause)
            continue
        except NoAnswer:
            outcome.history.append("no_answer")
            continue
        verdict = judge_ack(msh10, raw, commit_only=commit_only)
        outcome.history.append(verdict.outcome.value)
        outcome.verdict = verdict
        if not verdict.resend:
            return outcome
    return outcome


def run(coro: Awaitable[T], limit: float = 20.0) -> T:
    """Run ``coro`` with a hard wall-clock bound: a hang fails the test instead of CI."""

    async def bounded() -> T:
        async with asyncio.timeout(limit):
            return await coro

    return asyncio.run(bounded())
