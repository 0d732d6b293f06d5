"""The outbox worker as one task of ``rtplan serve``'s event loop (issue 8).

- Its store calls run on the connection's own thread (:class:`StoreThread`): a SQLite
  connection made there refuses any call from the loop's thread, so a drain that works proves
  no call was made on the loop.
- ``wake`` cuts the poll short when another part of the process stored rows.
- ``stop``: nothing more is claimed, the rows held are finished, the rest stay pending.
- Cancelled mid-delivery: the row stays leased (in flight), to be taken up after its lease.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from adapter.outbox.offload import StoreThread
from adapter.outbox.worker import Attempt, Verdict, Worker
from adapter.store.outbox import Outbox, Row, State
from tests.store_backend import StoreUnderTest
from tests.support import tx

T = ("fhir", "http://server/fhir")


def _enqueue(outbox: Outbox, n: int) -> list[int]:
    return [
        outbox.enqueue(
            destination=T[0],
            target=T[1],
            key=f"study:{i}",
            kind="fhir-transaction",
            label=f"row{i}",
            payload=tx(n=i),
        )
        for i in range(n)
    ]


class Recording:
    """Delivers every row; remembers on which thread each delivery ran."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        self.threads: set[str] = set()

    async def deliver(self, row: Row) -> Attempt:
        self.rows.append(row.id)
        self.threads.add(threading.current_thread().name)
        return Attempt(Verdict.DELIVERED, result={"n": row.id})


class Gated:
    """Holds every delivery until ``gate`` opens; ``started`` is set by the first one."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.started = asyncio.Event()
        self.rows: list[int] = []

    async def deliver(self, row: Row) -> Attempt:
        self.rows.append(row.id)
        self.started.set()
        await self.gate.wait()
        return Attempt(Verdict.DELIVERED, result={})


@pytest.mark.sqlite_only(reason="sqlite3 refuses a connection used from another thread")
def test_store_calls_run_on_the_store_thread_and_deliveries_on_the_loop(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path) as setup:
        ids = _enqueue(setup, 6)
    deliverer = Recording()

    async def run() -> None:
        store = StoreThread("test-store")
        outbox = await store.run(Outbox, path)  # made on the store thread: only usable there
        try:
            with pytest.raises(sqlite3.ProgrammingError):
                outbox.counts()  # from the loop's thread: refused by sqlite3
            worker = Worker(outbox, {T: deliverer}, calls=store, concurrency=2)
            report = await worker.drain(ids=ids)
            assert report.delivered == 6
        finally:
            await store.run(outbox.close)
            await store.aclose()

    asyncio.run(run())
    assert sorted(deliverer.rows) == ids
    assert deliverer.threads == {threading.main_thread().name}  # the loop's own thread
    with Outbox(path) as outbox:
        assert outbox.counts()["delivered"] == 6


@pytest.mark.store
def test_wake_claims_rows_stored_while_the_worker_waits(
    tmp_path: Path, store: StoreUnderTest
) -> None:
    path = tmp_path / "o.sqlite"
    deliverer = Recording()

    async def run() -> list[int]:
        wake, stop = asyncio.Event(), asyncio.Event()
        with Outbox(store.at(path)) as outbox:
            # A poll interval of an hour: only the wake can bring the row in.
            worker = Worker(outbox, {T: deliverer}, poll_interval=3600.0, wake=wake)
            task = asyncio.create_task(worker.drain(forever=True, stop=stop))
            await asyncio.sleep(0.1)  # the worker found nothing and waits
            ids = _enqueue(outbox, 1)  # another part of the process stores a row...
            wake.set()  # ...and says so
            async with asyncio.timeout(30):
                while not deliverer.rows:
                    await asyncio.sleep(0.01)
            stop.set()
            await asyncio.wait_for(task, 30)
            return ids

    ids = asyncio.run(run())
    assert deliverer.rows == ids


@pytest.mark.store
def test_a_stopped_worker_finishes_the_rows_it_holds_and_claims_no_more(
    tmp_path: Path, store: StoreUnderTest
) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(store.at(path)) as setup:
        ids = _enqueue(setup, 5)
    deliverer = Gated()

    async def run() -> None:
        stop = asyncio.Event()
        with Outbox(store.at(path)) as outbox:
            # concurrency 1 claims two ahead: one in delivery, one waiting locally.
            worker = Worker(outbox, {T: deliverer}, concurrency=1)
            task = asyncio.create_task(worker.drain(forever=True, stop=stop))
            await asyncio.wait_for(deliverer.started.wait(), 30)
            stop.set()
            deliverer.gate.set()
            report = await asyncio.wait_for(task, 30)
            assert report.delivered == 2

    asyncio.run(run())
    with Outbox(store.at(path)) as outbox:
        states = [outbox.get(i).state for i in ids]
    assert states == [State.DELIVERED] * 2 + [State.PENDING] * 3
    assert deliverer.rows == ids[:2]


@pytest.mark.store
def test_a_cancelled_worker_leaves_the_row_in_delivery_leased(
    tmp_path: Path, store: StoreUnderTest
) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(store.at(path)) as setup:
        (row_id,) = _enqueue(setup, 1)
    deliverer = Gated()  # never opened: the delivery hangs

    async def run() -> None:
        with Outbox(store.at(path)) as outbox:
            worker = Worker(outbox, {T: deliverer}, concurrency=1, lease_seconds=60)
            task = asyncio.create_task(worker.drain(forever=True))
            await asyncio.wait_for(deliverer.started.wait(), 30)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(run())
    with Outbox(store.at(path)) as outbox:
        row = outbox.get(row_id)
        assert (row.state, row.attempts) == (State.IN_FLIGHT, 1)
    # After the lease, a worker takes it over (here: a clock past the lease).
    with Outbox(store.at(path), clock=lambda: row.created_at + 3600) as later:
        assert [r.id for r in later.claim(1)] == [row_id]
