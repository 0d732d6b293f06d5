"""The outbox store and worker: ordering per key, dedupe, recovery, retry policy, dead letters."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import tenacity

from adapter.hl7.order_payload import OrderPayload
from adapter.outbox.worker import Attempt, RetryPolicy, Verdict, Worker
from adapter.store.outbox import Outbox, Row, State
from tests.support import tx

T = ("fhir", "http://server/fhir")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def put(outbox: Outbox, key: str, n: int = 0) -> int:
    return outbox.enqueue(
        destination=T[0], target=T[1], key=key, kind="fhir-transaction", label=key, payload=tx(n=n)
    )


class Scripted:
    """A deliverer that answers from a script per key and records the order of calls."""

    def __init__(self, script: dict[str, list[Attempt]] | None = None) -> None:
        self.script = script or {}
        self.calls: list[tuple[str, int]] = []
        self.in_flight: set[str] = set()
        self.overlap = False

    async def deliver(self, row: Row) -> Attempt:
        if row.key in self.in_flight:
            self.overlap = True
        self.in_flight.add(row.key)
        await asyncio.sleep(0.001)
        self.in_flight.discard(row.key)
        self.calls.append((row.key, row.payload.get("n")))
        answers = self.script.get(row.key, [])
        return answers.pop(0) if answers else Attempt(Verdict.DELIVERED, result={"ok": True})


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


def worker(outbox: Outbox, deliverer: Scripted, clock: Clock, **kwargs: object) -> Worker:
    policy = kwargs.pop("policy", RetryPolicy(wait=tenacity.wait_fixed(5)))

    async def sleep(seconds: float) -> None:
        clock.now += seconds
        await asyncio.sleep(0)

    return Worker(outbox, {T: deliverer}, {"fhir": policy}, sleep=sleep, clock=clock, **kwargs)  # type: ignore[arg-type]


@pytest.mark.sqlite_only(reason="the SQLite journal and sync pragmas")
def test_sqlite_is_durable_mode(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "o.sqlite")
    assert outbox._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert outbox._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


@pytest.mark.sqlite_only(reason="the POSIX locks SQLite holds on its file")
def test_opening_the_store_again_keeps_the_locks_this_process_holds(tmp_path: Path) -> None:
    """Opening the store checks the file is private without opening it: closing any
    descriptor of the file would drop this process's SQLite locks, and another process closing
    its connection would then checkpoint and remove the WAL this one still uses (the database
    was corrupted with ``rtplan serve`` and a second process on one store)."""
    path = tmp_path / "outbox.sqlite"
    path.touch(mode=0o644)
    other = (  # another process reads the store and closes its connection
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "c.execute('SELECT count(*) FROM outbox').fetchone(); c.close()"
    )
    with Outbox(path) as held:
        for n in range(3):
            held.enqueue(destination="fhir", target="t", key="k", kind="fhir-transaction",
                         label=f"r{n}", payload=tx(key="k", n=n))  # fmt: skip
        held._db.execute("BEGIN")  # a read in progress here (the API's GET, say)
        assert len(held.rows_for_key("k")) == 3
        Outbox(path).close()  # meanwhile the store is opened again in this process
        assert path.stat().st_mode & 0o777 == 0o600
        subprocess.run([sys.executable, "-c", other, str(path)], check=True)
        # Still in use here: the other process was not the last connection, the WAL stays.
        assert path.with_name("outbox.sqlite-wal").stat().st_size > 0
        assert len(held.rows_for_key("k")) == 3
        held._db.execute("COMMIT")
        assert held._db.scalar("PRAGMA integrity_check") == "ok"


def test_order_is_kept_per_key_and_keys_run_in_parallel(store_url: Path | str) -> None:
    clock = Clock()
    outbox = Outbox(store_url, clock=clock)
    for n in range(5):
        put(outbox, "a", n)
        put(outbox, "b", n)
    deliverer = Scripted({"a": [Attempt(Verdict.RETRY, "busy")]})
    report = asyncio.run(worker(outbox, deliverer, clock, concurrency=4).drain())
    assert report.delivered == 10 and report.retries == 1
    assert [n for key, n in deliverer.calls if key == "a"] == [0, 0, 1, 2, 3, 4]
    assert [n for key, n in deliverer.calls if key == "b"] == [0, 1, 2, 3, 4]
    assert not deliverer.overlap  # never two rows of one key in flight
    assert outbox.counts()["delivered"] == 10


def test_identical_pending_payload_is_not_queued_twice(store_url: Path | str) -> None:
    outbox = Outbox(store_url)
    assert put(outbox, "a", 1) == put(outbox, "a", 1)
    assert put(outbox, "a", 2) != put(outbox, "a", 1)


def test_retry_policy_gives_up_and_keeps_the_payload(store_url: Path | str) -> None:
    clock = Clock()
    outbox = Outbox(store_url, clock=clock)
    row_id = put(outbox, "a", 7)
    deliverer = Scripted({"a": [Attempt(Verdict.RETRY, "HTTP 502")] * 10})
    policy = RetryPolicy(stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_fixed(10))
    report = asyncio.run(worker(outbox, deliverer, clock, policy=policy).drain())
    assert report.dead == 1 and report.retries == 2
    row = outbox.get(row_id)
    assert row.state is State.DEAD and row.attempts == 3
    assert row.last_error == "gave up after 3 attempt(s): HTTP 502"
    assert row.payload == tx(n=7)


def test_retry_after_is_honoured_and_absurd_values_give_up(store_url: Path | str) -> None:
    clock = Clock()
    outbox = Outbox(store_url, clock=clock)
    put(outbox, "a")
    put(outbox, "b")
    deliverer = Scripted(
        {
            "a": [Attempt(Verdict.RETRY, "HTTP 503", retry_after=2.0)],
            "b": [Attempt(Verdict.RETRY, "HTTP 429", retry_after=86400.0)],
        }
    )
    start = clock.now
    report = asyncio.run(worker(outbox, deliverer, clock).drain())
    assert report.delivered == 1 and report.dead == 1
    a_events = [e for e in outbox.events(1) if e[1] in ("retry", "delivered")]
    assert a_events[0][2].startswith("in 2.0s") and a_events[1][0] - start >= 2.0
    assert "over the 120s cap" in outbox.get(2).last_error


def test_hold_stops_the_key_until_retried(store_url: Path | str) -> None:
    clock = Clock()
    outbox = Outbox(store_url, clock=clock)
    first = put(outbox, "a", 1)
    later = put(outbox, "a", 2)
    other = put(outbox, "b", 1)
    deliverer = Scripted({"a": [Attempt(Verdict.HOLD, "HTTP 412: several matches", alert="dq")]})
    report = asyncio.run(worker(outbox, deliverer, clock).drain())
    assert report.held == 1 and report.alerts
    assert outbox.get(first).state is State.DEAD
    assert outbox.get(later).state is State.PENDING  # not sent while the key is held
    assert outbox.get(other).state is State.DELIVERED
    assert [h.key for h in outbox.holds()] == ["a"]
    outbox.retry(first)
    asyncio.run(worker(outbox, deliverer, clock).drain())
    assert outbox.get(first).state is State.DELIVERED and outbox.get(later).state is State.DELIVERED
    assert outbox.holds() == []


def test_replay_with_a_corrected_payload(store_url: Path | str) -> None:
    outbox = Outbox(store_url)
    row_id = put(outbox, "a", 1)
    outbox.mark_dead(row_id, "rejected: HTTP 400")
    new_id = outbox.replay(row_id, tx(n=2))
    assert new_id != row_id and outbox.get(new_id).payload == tx(n=2)
    assert outbox.get(row_id).state is State.DEAD  # history kept


def test_a_deliverer_exception_never_loses_the_row(store_url: Path | str) -> None:
    clock = Clock()
    outbox = Outbox(store_url, clock=clock)
    put(outbox, "a")

    class Broken(Scripted):
        async def deliver(self, row: Row) -> Attempt:
            if not self.calls:
                self.calls.append((row.key, 0))
                raise RuntimeError("bug")
            return await super().deliver(row)

    report = asyncio.run(worker(outbox, Broken(), clock).drain())
    assert report.retries == 1 and report.delivered == 1


@pytest.mark.sqlite_only(reason="a dead owner's pid frees its rows on SQLite only (one host)")
def test_rows_of_a_killed_process_are_recovered(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    outbox = Outbox(path)
    row_id = put(outbox, "a")
    # Another process claims the row, then dies without finishing (kill -9).
    code = (
        "import os, sys; from pathlib import Path; from adapter.store.outbox import Outbox;"
        f"o = Outbox(Path({str(path)!r})); assert o.claim(1); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
    assert outbox.get(row_id).state is State.IN_FLIGHT
    claimed = outbox.claim(5)
    assert [r.id for r in claimed] == [row_id]
    assert claimed[0].attempts == 2
    assert ("recovered", "") in [(e[1], e[2]) for e in outbox.events(row_id)]


def test_a_live_owner_keeps_its_rows(store_url: Path | str) -> None:
    path = store_url
    first, second = Outbox(path), Outbox(path)
    put(first, "a")
    assert first.claim(1)
    assert second.claim(1) == []  # same host, owner alive, lease not expired


def test_schema_rejects_unknown_states(store_url: Path | str) -> None:
    outbox = Outbox(store_url)
    put(outbox, "a")
    with pytest.raises(outbox._db.driver_errors):
        outbox._db.execute("UPDATE outbox SET state='lost'")


def test_a_waiting_row_goes_only_after_its_prerequisite(store_url: Path | str) -> None:
    clock = Clock()
    outbox = Outbox(store_url, clock=clock)
    first = put(outbox, "fhir-side", 1)
    order = outbox.enqueue(
        destination=T[0],
        target=T[1],
        key="hl7-side",
        kind="hl7-order",
        label="order",
        payload=OrderPayload("ris", {"placer_order_number": "P2", "control": "NW"}).to_json(),
        after_id=first,
    )
    deliverer = Scripted({"fhir-side": [Attempt(Verdict.RETRY, "HTTP 503")]})
    asyncio.run(worker(outbox, deliverer, clock).drain())
    assert [key for key, _ in deliverer.calls] == ["fhir-side", "fhir-side", "hl7-side"]
    assert outbox.get(order).state is State.DELIVERED


def test_a_waiting_row_gives_up_with_its_prerequisite(store_url: Path | str) -> None:
    clock = Clock()
    outbox = Outbox(store_url, clock=clock)
    first = put(outbox, "fhir-side", 1)
    order = outbox.enqueue(
        destination=T[0],
        target=T[1],
        key="hl7-side",
        kind="hl7-order",
        label="order",
        payload=OrderPayload("ris", {"placer_order_number": "P2", "control": "NW"}).to_json(),
        after_id=first,
    )
    deliverer = Scripted({"fhir-side": [Attempt(Verdict.DEAD, "rejected: HTTP 400")]})
    report = asyncio.run(worker(outbox, deliverer, clock).drain())
    assert report.dead == 1 and deliverer.calls == [("fhir-side", 1)]
    assert outbox.get(order).state is State.DEAD
    assert outbox.get(order).last_error == f"row {first} it waited for gave up"


def test_follow_ups_are_stored_with_the_delivery(store_url: Path | str) -> None:
    from adapter.store.outbox import NewRow

    clock = Clock()
    outbox = Outbox(store_url, clock=clock)
    put(outbox, "order", 1)
    follow = NewRow(T[0], T[1], "task", "fhir-transaction", "task-update", tx(n=9))
    deliverer = Scripted({"order": [Attempt(Verdict.DELIVERED, follow_ups=(follow,))]})
    asyncio.run(worker(outbox, deliverer, clock).drain())
    assert deliverer.calls == [("order", 1), ("task", 9)]
    assert outbox.counts()["delivered"] == 2


def test_enqueue_many_is_one_transaction(store_url: Path | str) -> None:
    from adapter.store.outbox import NewRow

    outbox = Outbox(store_url)
    rows = [NewRow(T[0], T[1], f"k{i}", "fhir-transaction", f"k{i}", tx(n=i)) for i in range(3)]
    rows.append(NewRow(T[0], T[1], "bad", "fhir-transaction", "bad", tx(n=float("nan"))))
    with pytest.raises(ValueError):
        outbox.enqueue_many(rows)  # NaN is not JSON: nothing of the batch is stored
    assert outbox.counts()["pending"] == 0
    assert len(outbox.enqueue_many(rows[:3])) == 3


def test_claim_with_no_deliverable_targets_takes_nothing(store_url: Path | str) -> None:
    outbox = Outbox(store_url)
    put(outbox, "a")
    assert outbox.claim(5, targets=[]) == []
    assert [r.key for r in outbox.claim(5, targets=[T])] == ["a"]
