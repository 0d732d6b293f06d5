"""A forever worker does not spin while the only due rows are blocked behind an earlier row of
their key that waits for its retry (a FHIR outage with several rows per study): it waits its
poll interval, instead of claiming in a write transaction every 10 ms."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import tenacity

from adapter.outbox.worker import Attempt, RetryPolicy, Verdict, Worker
from adapter.store.outbox import Outbox, Row
from tests.store_backend import StoreUnderTest
from tests.support import tx

T = ("fhir", "http://server/fhir")


class Enough(Exception):
    pass


class Refusing:
    async def deliver(self, row: Row) -> Attempt:
        return Attempt(Verdict.RETRY, "peer unavailable")


@pytest.mark.store
def test_a_blocked_due_row_does_not_make_the_worker_spin(
    tmp_path: Path, store: StoreUnderTest
) -> None:
    now = [1_000_000.0]
    outbox = Outbox(store.at(tmp_path / "o.sqlite"), clock=lambda: now[0])
    for n in range(2):  # the same key: the second waits for the first
        outbox.enqueue(destination=T[0], target=T[1], key="study:1", kind="fhir-transaction",
                       label=f"row{n}", payload=tx(n=n))  # fmt: skip
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) >= 5:
            raise Enough
        await asyncio.sleep(0)

    policy = RetryPolicy(wait=tenacity.wait_fixed(3600))  # the first row retries in an hour
    worker = Worker(outbox, {T: Refusing()}, {"fhir": policy}, sleep=sleep,
                    clock=lambda: now[0], poll_interval=1.0)  # fmt: skip
    with pytest.raises(Enough):
        asyncio.run(worker.drain(forever=True))
    outbox.close()
    # The second row is due but cannot be claimed: the worker waits its poll interval.
    assert sleeps == [1.0] * 5, sleeps
