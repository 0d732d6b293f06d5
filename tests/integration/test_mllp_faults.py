"""Reliability rows 1-12 at transport level: MllpClient + judge_ack against the fault peer.

Every test asserts what the receiver saw (frames and unique MSH-10s), that every resend
carried the same bytes, and that nothing waits unbounded (``run`` has a hard limit).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from adapter.hl7.ack_judge import AckOutcome
from adapter.hl7.client import MllpClient, NoAnswer, NotSent
from tests.integration.mllp_support import Outcome, deliver, order, run
from tests.peers import mllp_fault as fault
from tests.peers.launch import free_port
from tests.peers.mllp_fault import MllpFaultPeer

FAST = {"connect_timeout": 1.0, "ack_timeout": 0.5}
MSG = order(1)
ID = "RTP-000001"
ACK_MSH = b"MSH|^~\\&|RIS|RADIOLOGY|RTPLAN|ONCOLOGY|20240301101501||ACK^O01|A1|P|2.4"


def client(peer: MllpFaultPeer, **kw: float) -> MllpClient:
    return MllpClient("127.0.0.1", peer.port, **{**FAST, **kw})


def one_unique(peer: MllpFaultPeer, frames: int) -> None:
    assert peer.wait_for(frames, 2.0)
    assert peer.control_ids == [ID] * frames
    assert all(f == MSG for f in peer.frames)  # resends are byte-identical


def test_row1_refused_then_listener_appears(
    mllp_fault_factory: Callable[..., MllpFaultPeer],
) -> None:
    peer = mllp_fault_factory(delay=1.2)

    async def go() -> Outcome:
        async with client(peer) as c:
            return await deliver(c, MSG, attempts=20, pause=0.2)

    started = time.monotonic()
    out = run(go())
    assert out.history[0] == "not_sent" and out.history[-1] == "delivered"
    assert set(out.history[:-1]) == {"not_sent"}
    assert time.monotonic() - started >= 1.0
    one_unique(peer, 1)


def test_row1_refused_is_not_sent_and_fast() -> None:
    async def go() -> None:
        async with MllpClient("127.0.0.1", free_port(), **FAST) as c:
            with pytest.raises(NotSent) as info:
                await c.send(MSG)
            assert c.stats.not_sent == 1 and c.stats.sent == 0
            assert "ConnectionRefusedError" in str(info.value)

    run(go(), limit=3)


@pytest.mark.parametrize(
    ("action", "frames"),
    [
        (fault.drop_mid_frame(after=40), 1),  # the peer never got the whole first frame
        (fault.drop(), 2),  # got it, closed without an ACK
        (fault.partial_ack(12), 2),  # ACK cut off mid-frame
    ],
    ids=["request-cut", "closed-before-ack", "ack-cut"],
)
def test_row2_dropped_mid_frame_resends_same_msh10(
    mllp_fault: MllpFaultPeer, action: fault.Action, frames: int
) -> None:
    mllp_fault.script(action)

    async def go() -> Outcome:
        async with client(mllp_fault) as c:
            out = await deliver(c, MSG)
            assert c.stats.connects == 2 and c.stats.no_answer == 1
            return out

    out = run(go())
    assert out.history == ["no_answer", "delivered"]
    one_unique(mllp_fault, frames)
    assert mllp_fault.connections == 2


def test_row3_ack_in_one_byte_chunks(mllp_fault: MllpFaultPeer) -> None:
    mllp_fault.script(fault.chunked(size=1, seconds=0.005))

    async def go() -> Outcome:
        async with client(mllp_fault, ack_timeout=5.0) as c:
            return await deliver(c, MSG)

    assert run(go()).history == ["delivered"]
    one_unique(mllp_fault, 1)


def test_row4_junk_before_vt_is_skipped_and_counted(mllp_fault: MllpFaultPeer) -> None:
    mllp_fault.script(fault.junk(b"xx\r\n"))

    async def go() -> tuple[Outcome, int]:
        async with client(mllp_fault) as c:
            out = await deliver(c, MSG)
            return out, c.stats.junk_bytes

    out, junk = run(go())
    assert out.history == ["delivered"] and junk == 4
    one_unique(mllp_fault, 1)


def test_row4_fs_without_cr_is_never_an_ack(mllp_fault: MllpFaultPeer) -> None:
    mllp_fault.script(fault.fs_without_cr("AA"))

    async def go() -> tuple[Outcome, int]:
        async with client(mllp_fault) as c:
            out = await deliver(c, MSG)
            return out, c.stats.framing_errors

    out, errors = run(go())
    assert out.history == ["no_answer", "delivered"] and errors == 1
    one_unique(mllp_fault, 2)


def test_row5_slow_ack_times_out_then_same_msh10(mllp_fault: MllpFaultPeer) -> None:
    mllp_fault.script(fault.delay(1.2))

    async def go() -> Outcome:
        async with client(mllp_fault) as c:
            out = await deliver(c, MSG)
            # the late ACK for attempt 1 must not be read as attempt 2's: fresh connection
            assert c.stats.connects == 2
            return out

    assert run(go()).history == ["no_answer", "delivered"]
    one_unique(mllp_fault, 2)


def test_row6_black_hole_is_bounded(mllp_fault: MllpFaultPeer) -> None:
    mllp_fault.default = fault.silence()

    async def go() -> Outcome:
        async with client(mllp_fault) as c:
            return await deliver(c, MSG, attempts=3)

    started = time.monotonic()
    out = run(go(), limit=5)
    assert out.history == ["no_answer"] * 3 and out.verdict is None
    assert time.monotonic() - started < 3 * 0.5 + 1.5
    one_unique(mllp_fault, 3)


@pytest.mark.parametrize("code", ["AE", "AR", "CE", "CR"])
def test_row7_8_nack_is_rejected_once_and_connection_stays_usable(
    mllp_fault: MllpFaultPeer, code: str
) -> None:
    mllp_fault.script(fault.ack(code, text="Unknown order", error_code="103"))

    async def go() -> tuple[Outcome, Outcome, int]:
        async with client(mllp_fault) as c:
            bad = await deliver(c, MSG)
            good = await deliver(c, order(2))
            return bad, good, c.stats.connects

    bad, good, connects = run(go())
    assert bad.history == ["rejected"]  # no blind retry
    assert bad.verdict is not None
    assert bad.verdict.error_code == "103"
    assert bad.verdict.text == "Unknown order"
    assert good.history == ["delivered"] and connects == 1
    assert mllp_fault.control_ids == [ID, "RTP-000002"]


@pytest.mark.parametrize(("commit_only", "outcome"), [(False, "committed"), (True, "delivered")])
def test_row8_ca_then_nothing(mllp_fault: MllpFaultPeer, commit_only: bool, outcome: str) -> None:
    mllp_fault.script(fault.ack("CA"))

    async def go() -> Outcome:
        async with client(mllp_fault) as c:
            return await deliver(c, MSG, commit_only=commit_only)

    assert run(go()).history == [outcome]
    one_unique(mllp_fault, 1)


def test_row9_wrong_msa2_is_not_delivered_and_resent(mllp_fault: MllpFaultPeer) -> None:
    mllp_fault.script(fault.ack(control_id="RTP-999999"), fault.ack(control_id="RTP-999999"))

    async def go() -> Outcome:
        async with client(mllp_fault) as c:
            return await deliver(c, MSG)

    assert run(go()).history == ["invalid", "invalid", "delivered"]
    one_unique(mllp_fault, 3)


def test_row9_always_wrong_msa2_is_bounded(mllp_fault: MllpFaultPeer) -> None:
    mllp_fault.always(ID, fault.ack(control_id="SOMEONE-ELSE"))

    async def go() -> Outcome:
        async with client(mllp_fault) as c:
            return await deliver(c, MSG, attempts=4)

    out = run(go())
    assert out.history == ["invalid"] * 4
    assert out.verdict is not None and out.verdict.outcome is AckOutcome.INVALID
    one_unique(mllp_fault, 4)


@pytest.mark.parametrize(
    ("action", "first"),
    [
        (fault.empty_ack(), "invalid"),
        (fault.garbage(80), "invalid"),
        (fault.raw(b"\x0b" + ACK_MSH + b"\x1c\r"), "invalid"),  # no MSA
        (fault.garbage(80, framed=False), "no_answer"),  # never a frame: ACK timeout
    ],
    ids=["empty", "garbage-framed", "no-msa", "garbage-unframed"],
)
def test_row10_empty_or_garbage_ack_is_resent(
    mllp_fault: MllpFaultPeer, action: fault.Action, first: str
) -> None:
    mllp_fault.script(action)

    async def go() -> Outcome:
        async with client(mllp_fault) as c:
            return await deliver(c, MSG)

    assert run(go()).history == [first, "delivered"]
    one_unique(mllp_fault, 2)


def test_row11_tcp_reset(mllp_fault: MllpFaultPeer) -> None:
    mllp_fault.script(fault.reset())

    async def go() -> Outcome:
        async with client(mllp_fault) as c:
            with pytest.raises(NoAnswer) as info:
                await c.send(MSG)
            assert "ConnectionResetError" in str(info.value) or "EOFError" in str(info.value)
            return await deliver(c, MSG)

    assert run(go()).history == ["delivered"]
    one_unique(mllp_fault, 2)


def test_row12_poison_message_does_not_block_the_connection(mllp_fault: MllpFaultPeer) -> None:
    poison = "RTP-000666"
    mllp_fault.always(poison, fault.ack("AR", text="cannot process"))

    async def go() -> tuple[list[str], int]:
        async with client(mllp_fault) as c:
            results = [(await deliver(c, order(666))).history[-1]]
            for n in range(1, 11):
                results.append((await deliver(c, order(n))).history[-1])
            return results, c.stats.connects

    results, connects = run(go())
    assert results == ["rejected"] + ["delivered"] * 10 and connects == 1
    assert mllp_fault.control_ids == [poison] + [f"RTP-{n:06d}" for n in range(1, 11)]


def test_unsolicited_frame_forces_a_fresh_connection(mllp_fault: MllpFaultPeer) -> None:
    # The peer answers twice: the stray second ACK must not be taken as the next message's.
    two = fault.raw((b"\x0b" + ACK_MSH + b"\rMSA|AA|RTP-000001\x1c\r") * 2)
    mllp_fault.script(two)

    async def go() -> tuple[Outcome, Outcome, int]:
        async with client(mllp_fault) as c:
            first = await deliver(c, MSG)
            second = await deliver(c, order(2))
            return first, second, c.stats.stale_reconnects

    first, second, stale = run(go())
    assert first.history == ["delivered"] and second.history == ["delivered"]
    assert stale == 1


def test_caller_cancelling_mid_exchange_drops_the_connection(mllp_fault: MllpFaultPeer) -> None:
    # The outbox (or a shutdown) may cancel a send; the late ACK must not answer the next one.
    mllp_fault.script(fault.delay(0.4))

    async def go() -> tuple[Outcome, int]:
        async with client(mllp_fault, ack_timeout=2.0) as c:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(c.send(MSG), 0.1)
            out = await deliver(c, order(2))
            return out, c.stats.connects

    out, connects = run(go())
    assert out.history == ["delivered"] and connects == 2
