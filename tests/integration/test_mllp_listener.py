"""The inbound MLLP server core: many messages per connection, in order; junk and framing
errors do not kill the connection; handler failure means no ACK; clean shutdown."""

from __future__ import annotations

import asyncio

import pytest

from adapter.hl7.ack import parse_ack
from adapter.hl7.client import MllpClient, NoAnswer
from adapter.hl7.listener import MllpServer
from adapter.hl7.mllp import Framer, frame
from tests.integration.mllp_support import deliver, order, run
from tests.peers.hl7_receiver import Hl7Receiver
from tests.peers.mllp_fault import build_ack, msh10

pytestmark = pytest.mark.store  # every test here reaches the store: both backends


class Handler:
    def __init__(self, *, fail_on: str = "", silent_on: str = "", delay: float = 0.0) -> None:
        self.seen: list[str] = []
        self.fail_on = fail_on
        self.silent_on = silent_on
        self.delay = delay

    async def __call__(self, message: bytes) -> bytes | None:
        cid = msh10(message)
        self.seen.append(cid)
        if self.delay:
            await asyncio.sleep(self.delay)
        if cid == self.fail_on:
            raise RuntimeError("store failed")
        if cid == self.silent_on:
            return None
        return build_ack(message)


async def raw_exchange(port: int, data: bytes, expect: int, timeout: float = 3.0) -> list[bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    framer, acks = Framer(), []
    try:
        writer.write(data)
        async with asyncio.timeout(timeout):
            while len(acks) < expect:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                acks += framer.feed(chunk)
    finally:
        writer.close()
        await writer.wait_closed()
    return acks


def test_many_messages_on_one_connection_and_port_after_start() -> None:
    handler = Handler()

    async def go() -> tuple[int, list[str], int]:
        server = MllpServer(handler)
        assert server.port == 0
        async with server, MllpClient("127.0.0.1", server.port, ack_timeout=2) as c:
            assert server.port > 0
            histories = [(await deliver(c, order(n))).history for n in range(1, 21)]
            return c.stats.connects, [h[-1] for h in histories], server.stats.connections

    connects, results, conns = run(go())
    assert results == ["delivered"] * 20 and connects == 1 and conns == 1
    assert handler.seen == [f"RTP-{n:06d}" for n in range(1, 21)]


def test_pipelined_messages_are_answered_in_order() -> None:
    handler = Handler(delay=0.01)

    async def go() -> list[bytes]:
        async with MllpServer(handler, max_queued=4) as server:
            data = b"".join(frame(order(n)) for n in range(1, 11))
            return await raw_exchange(server.port, data, expect=10)

    acks = run(go())
    echoed = [parse_ack(a).control_id for a in acks]
    assert echoed == [f"RTP-{n:06d}" for n in range(1, 11)]


def test_junk_and_bad_frames_are_skipped_and_counted() -> None:
    handler = Handler()

    async def go() -> tuple[list[bytes], int, int]:
        async with MllpServer(handler) as server:
            data = b"junk\r\n" + frame(order(1)) + b"\x0bbroken\x1cX" + frame(order(2))
            acks = await raw_exchange(server.port, data, expect=2)
            return acks, server.stats.junk_bytes, server.stats.framing_errors

    acks, junk, errors = run(go())
    assert len(acks) == 2 and handler.seen == ["RTP-000001", "RTP-000002"]
    assert junk == 6 + 1 and errors == 1  # "junk\r\n" and the "X" after the bad FS


def test_handler_failure_closes_without_ack_and_the_sender_resends() -> None:
    handler = Handler(fail_on="RTP-000003")

    async def go() -> tuple[list[str], int]:
        async with (
            MllpServer(handler) as server,
            MllpClient("127.0.0.1", server.port, ack_timeout=2) as c,
        ):
            for n in (1, 2):
                await c.send(order(n))
            with pytest.raises(NoAnswer):
                await c.send(order(3))
            handler.fail_on = ""
            out = await deliver(c, order(3))
            return out.history, c.stats.connects

    history, connects = run(go())
    assert history == ["delivered"] and connects == 2
    assert handler.seen == ["RTP-000001", "RTP-000002", "RTP-000003", "RTP-000003"]


def test_handler_returning_none_sends_nothing() -> None:
    handler = Handler(silent_on="RTP-000001")

    async def go() -> list[str]:
        async with (
            MllpServer(handler) as server,
            MllpClient("127.0.0.1", server.port, ack_timeout=0.3) as c,
        ):
            return (await deliver(c, order(1), attempts=2)).history

    assert run(go()) == ["no_answer", "no_answer"]


def test_shutdown_lets_the_message_in_hand_get_its_ack() -> None:
    handler = Handler(delay=0.3)

    async def go() -> tuple[bytes, bool]:
        server = await MllpServer(handler).start()
        client = MllpClient("127.0.0.1", server.port, ack_timeout=3)
        sending = asyncio.create_task(client.send(order(1)))
        while not handler.seen:
            await asyncio.sleep(0.01)
        await server.aclose(grace=2.0)
        ack = await sending
        await client.aclose()
        return ack, server.stats.acks == 1

    ack, counted = run(go())
    assert b"MSA|AA|RTP-000001" in ack and counted


def test_python_hl7_sends_to_our_listener() -> None:
    """The closed-loop direction: the peer sends a result (ORU) to the adapter's listener."""
    handler = Handler()
    oru = (
        b"MSH|^~\\&|RIS|RADIOLOGY|RTPLAN|ONCOLOGY|20240301120000||ORU^R01|RIS-0001|P|2.4\r"
        b"PID|1||MRN00001^^^HOSP-MRN^MR\rOBR|1|PLC00001^RTPLAN|F1|RTPLANREVIEW\r"
        b"OBX|1|TX|RTPLANREVIEW||No further action||||||F"
    )

    async def go() -> bytes:
        async with MllpServer(handler) as server:
            with Hl7Receiver() as peer:
                return await peer.send("127.0.0.1", server.port, oru)

    ack = run(go())
    assert b"MSA|AA|RIS-0001" in ack and handler.seen == ["RIS-0001"]
