"""The MLLP client against two independent real peers: python-hl7's asyncio receiver and the
Node @medplum/hl7 Hl7Server. 20 messages in sequence on one connection, each ACK matched on
MSA-2, and the peer's own record of MSH-10s equals what was sent (no loss, no duplicates)."""

from __future__ import annotations

import pytest

from adapter.hl7.ack import parse_ack
from adapter.hl7.ack_judge import judge_ack
from adapter.hl7.client import MllpClient
from tests.integration.mllp_support import order, run
from tests.peers.hl7_receiver import Hl7Receiver
from tests.peers.mllp_fixture import MedplumHl7

pytestmark = pytest.mark.peer
IDS = [f"RTP-{n:06d}" for n in range(1, 21)]


async def send_twenty(port: int) -> tuple[list[str], list[str], int]:
    outcomes, echoed = [], []
    async with MllpClient("127.0.0.1", port, connect_timeout=5, ack_timeout=5) as client:
        for n, cid in enumerate(IDS, start=1):
            raw = await client.send(order(n))
            outcomes.append(judge_ack(cid, raw).outcome.value)
            echoed.append(parse_ack(raw).control_id)
        return outcomes, echoed, client.stats.connects


def test_python_hl7_receiver_twenty_in_sequence(hl7_receiver: Hl7Receiver) -> None:
    outcomes, echoed, connects = run(send_twenty(hl7_receiver.port))
    assert outcomes == ["delivered"] * 20 and echoed == IDS and connects == 1
    assert hl7_receiver.control_ids == IDS


def test_python_hl7_receiver_rejects_are_values(hl7_receiver_factory: object) -> None:
    receiver = hl7_receiver_factory(ack_code="AE")  # type: ignore[operator]

    async def go() -> str:
        async with MllpClient("127.0.0.1", receiver.port, ack_timeout=5) as client:
            return judge_ack(IDS[0], await client.send(order(1))).outcome.value

    assert run(go()) == "rejected" and receiver.control_ids == IDS[:1]


def test_medplum_hl7_twenty_in_sequence(medplum_hl7: MedplumHl7) -> None:
    medplum_hl7.reset()
    outcomes, echoed, connects = run(send_twenty(medplum_hl7.port))
    assert outcomes == ["delivered"] * 20 and echoed == IDS and connects == 1
    assert medplum_hl7.control_ids() == IDS
