"""Deliver outbox rows: bounded concurrency, one retry mechanism, always a stop.

A :class:`Deliverer` turns one row into one :class:`Attempt` (delivered / retry / dead / hold).
It never raises for a peer's answer: a rejection is a value. An exception from a deliverer is
a bug or "no answer at all" and is treated as a retry, so a row is never lost to it; except a
payload that does not fit its kind's codec (``adapter.store.payloads.PayloadError``, a row
edited by hand): no retry mends that, so the row is dead, the reason naming kind and field.

The retry policy is a pair of tenacity values (``stop`` and ``wait``) per destination, or per
``(destination, target)`` where targets differ (each HL7 receiver profile has its own
``connection.max_resends``). The worker evaluates them against the row's own history (attempts,
age since enqueue), so the policy holds across restarts; ``Retry-After`` from a server
overrides the wait, up to a cap. This is the one retry mechanism: deliverers never loop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import tenacity
from tenacity.stop import StopBaseT
from tenacity.wait import WaitBaseT

from adapter.outbox.offload import INLINE, StoreCalls
from adapter.store.outbox import NewRow, Row
from adapter.store.payloads import PayloadError
from adapter.store.protocol import RowQueue

log = logging.getLogger(__name__)
JSON = dict[str, Any]
Sleep = Callable[[float], Awaitable[None]]


class Verdict(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"
    HOLD = "hold"  # dead, and nothing more for this key until an analyst retries


@dataclass(frozen=True, slots=True)
class Attempt:
    verdict: Verdict
    reason: str = ""  # never patient data: codes, statuses, element paths
    retry_after: float | None = None  # seconds the peer asked us to wait
    result: JSON | None = None
    alert: str = ""  # a data-quality alert raised alongside the verdict
    follow_ups: tuple[NewRow, ...] = ()  # stored with the delivery, in one transaction


class Deliverer(Protocol):
    async def deliver(self, row: Row) -> Attempt: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """When to try again and when to give up, as tenacity strategies."""

    stop: StopBaseT = field(
        default_factory=lambda: tenacity.stop_after_attempt(10) | tenacity.stop_after_delay(3600)
    )
    wait: WaitBaseT = field(
        default_factory=lambda: tenacity.wait_exponential_jitter(multiplier=1, max=300, jitter=1)
    )
    max_retry_after: float = 120.0
    """A Retry-After longer than this is not waited for: the row gives up and escalates."""

    @classmethod
    def backoff(
        cls,
        *,
        max_attempts: int,
        max_seconds: float,
        initial_wait: float,
        max_wait: float,
        max_retry_after: float = 120.0,
    ) -> RetryPolicy:
        """At most ``max_attempts`` attempts (the first included) within ``max_seconds`` of the
        row's enqueueing; between them ``initial_wait * 2^(n-1)`` plus up to one
        ``initial_wait`` of jitter, capped at ``max_wait``."""
        return cls(
            stop=tenacity.stop_after_attempt(max_attempts) | tenacity.stop_after_delay(max_seconds),
            wait=tenacity.wait_exponential_jitter(
                multiplier=initial_wait, max=max_wait, jitter=initial_wait
            ),
            max_retry_after=max_retry_after,
        )


@dataclass
class DrainReport:
    delivered: int = 0
    dead: int = 0
    held: int = 0
    retries: int = 0
    alerts: list[str] = field(default_factory=list)


def _state(row: Row, now: float) -> tenacity.RetryCallState:
    """A tenacity call state rebuilt from the row, so the policy survives restarts."""
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = row.attempts
    state.start_time = 0.0
    state.outcome_timestamp = max(0.0, now - row.created_at)
    return state


class Worker:
    """Drains the outbox (a :class:`~adapter.store.protocol.RowQueue`) through deliverers
    keyed by ``(destination, target)``.

    Every store call goes through ``calls``: inline for a command, the connection's own thread
    in ``rtplan serve`` (:class:`adapter.outbox.offload.StoreThread`), so the one event loop
    never waits for the database. ``wake`` cuts a poll short when another part of the process
    has just stored rows (the HTTP API, the C-STORE receiver, the escalation check).
    """

    def __init__(
        self,
        outbox: RowQueue,
        deliverers: Mapping[tuple[str, str], Deliverer],
        policies: Mapping[str, RetryPolicy] | None = None,
        *,
        target_policies: Mapping[tuple[str, str], RetryPolicy] | None = None,
        concurrency: int = 4,
        lease_seconds: float = 300.0,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] | None = None,
        poll_interval: float = 1.0,
        calls: StoreCalls = INLINE,
        wake: asyncio.Event | None = None,
    ) -> None:
        self.outbox = outbox
        self.deliverers = deliverers
        self.policies = policies or {}
        self.target_policies = target_policies or {}
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self._sleep = sleep
        self._clock = clock or outbox.clock
        self.poll_interval = poll_interval
        self._targets = list(deliverers)
        self._watch: set[int] | None = None
        self._calls = calls
        self._wake = wake

    async def drain(
        self,
        *,
        ids: list[int] | None = None,
        forever: bool = False,
        stop: asyncio.Event | None = None,
    ) -> DrainReport:
        """Deliver until every open row (or every row in ``ids``) is delivered, dead or held.

        With ``forever`` it keeps polling for new rows (the service mode) until ``stop`` is set:
        then it claims nothing more, finishes the rows it holds and returns. Cancelled, it
        cancels the deliveries in progress; their rows stay leased and are taken up again
        after the lease (or at the next start, see ``adapter.store.claims.recover``).
        """
        report = DrainReport()
        # The rows to wait for grow with the follow-ups of their deliveries (an ACK's Task
        # update belongs to the same piece of work).
        self._watch = None if ids is None else set(ids)
        active: set[asyncio.Task[None]] = set()
        ready: list[Row] = []
        store = self._calls
        try:
            while True:
                stopping = stop is not None and stop.is_set()
                # Claim a little ahead (up to `concurrency` rows waiting locally), so that one
                # transaction serves several rows; a claimed row is leased, so none is lost.
                want = 2 * self.concurrency - len(active) - len(ready)
                if not stopping and want > 0 and len(ready) < self.concurrency:
                    ready.extend(
                        await store.run(
                            self.outbox.claim,
                            want,
                            lease_seconds=self.lease_seconds,
                            targets=self._targets,
                        )
                    )
                while ready and len(active) < self.concurrency:
                    active.add(asyncio.create_task(self._run(ready.pop(0), report)))
                if active:
                    done, active = await asyncio.wait(active, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        task.result()  # _run handles everything; re-raise only real bugs
                    continue
                if stopping:
                    return report  # every row claimed here is finished
                watched = None if self._watch is None else sorted(self._watch)
                open_rows = self.outbox.open_rows
                if not forever and await store.run(open_rows, watched, self._targets) == 0:
                    return report
                due = await store.run(self.outbox.seconds_until_due, self._targets)
                if due == 0:
                    # Due, yet the claim above took nothing: it is blocked behind an earlier row
                    # of its key (waiting for its retry) or a hold. Polling every 10 ms would
                    # only repeat that write transaction; the poll interval is soon enough.
                    due = None
                poll = self.poll_interval
                await self._pause(poll if due is None else min(max(due, 0.01), poll), stop)
        finally:
            for task in active:  # cancelled (or a bug): the rows stay leased, never lost
                task.cancel()
            if active:
                await asyncio.gather(*active, return_exceptions=True)

    async def _pause(self, seconds: float, stop: asyncio.Event | None) -> None:
        """Sleep until the next row is due, a part of the process stored rows (``wake``) or
        the service stops."""
        events = [e for e in (self._wake, stop) if e is not None]
        if not events:
            await self._sleep(seconds)
            return
        waiters = [asyncio.create_task(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self._wake is not None:
            self._wake.clear()  # new rows are claimed next; a wake during the claim stays set

    async def _run(self, row: Row, report: DrainReport) -> None:
        deliverer = self.deliverers.get((row.destination, row.target))
        if deliverer is None:
            reason = f"no deliverer configured for {row.destination}"
            await self._calls.run(self.outbox.mark_dead, row.id, reason)
            report.dead += 1
            return
        try:
            attempt = await deliverer.deliver(row)
        except PayloadError as exc:  # the payload does not fit its kind: no retry mends it
            attempt = Attempt(Verdict.DEAD, str(exc))
        except Exception as exc:  # a bug or no answer: keep the row, try again later
            log.exception("row %d: deliverer raised %s", row.id, type(exc).__name__)
            attempt = Attempt(Verdict.RETRY, f"deliverer error: {type(exc).__name__}")
        new_ids = await self._calls.run(self._record, row, attempt, report)
        if self._watch is not None and row.id in self._watch:
            self._watch.update(new_ids)  # on the loop: drain() reads the set there

    def _record(self, row: Row, attempt: Attempt, report: DrainReport) -> list[int]:
        """Store the attempt's outcome (on the store's thread: see ``calls``); return the ids
        of the follow-up rows stored with a delivery."""
        if attempt.alert:
            report.alerts.append(f"row {row.id} ({row.label}): {attempt.alert}")
            log.warning("row %d (%s): ALERT %s", row.id, row.label, attempt.alert)
        if attempt.verdict is Verdict.DELIVERED:
            new_ids = self.outbox.mark_delivered(row.id, attempt.result or {}, attempt.follow_ups)
            report.delivered += 1
            log.info("row %d (%s): delivered after %d attempt(s)", row.id, row.label, row.attempts)
            return new_ids
        if attempt.verdict is Verdict.HOLD:
            self.outbox.hold_key(row, attempt.reason)
            self.outbox.mark_dead(row.id, attempt.reason, attempt.result)
            report.held += 1
            log.warning("row %d (%s): key held: %s", row.id, row.label, attempt.reason)
            return []
        if attempt.verdict is Verdict.RETRY:
            delay, why = self._retry_delay(row, attempt)
            if delay is not None:
                self.outbox.mark_retry(row.id, delay=delay, error=attempt.reason)
                report.retries += 1
                log.info(
                    "row %d (%s): retry in %.1fs: %s", row.id, row.label, delay, attempt.reason
                )
                return []
            attempt = Attempt(Verdict.DEAD, f"{why}: {attempt.reason}", result=attempt.result)
        self.outbox.mark_dead(row.id, attempt.reason, attempt.result)
        report.dead += 1
        log.warning("row %d (%s): dead: %s", row.id, row.label, attempt.reason)
        return []

    def policy_for(self, destination: str, target: str) -> RetryPolicy:
        """The target's own policy, else its destination's, else the default."""
        found = self.target_policies.get((destination, target))
        return found or self.policies.get(destination) or RetryPolicy()

    def _retry_delay(self, row: Row, attempt: Attempt) -> tuple[float | None, str]:
        """Seconds to wait before the next try, or None and why the row gives up."""
        policy = self.policy_for(row.destination, row.target)
        state = _state(row, self._clock())
        if policy.stop(state):
            return None, f"gave up after {row.attempts} attempt(s)"
        if attempt.retry_after is not None:
            if attempt.retry_after > policy.max_retry_after:
                cap = policy.max_retry_after
                return (
                    None,
                    f"server asked to wait {attempt.retry_after:.0f}s, over the {cap:.0f}s cap",
                )
            return attempt.retry_after, ""
        return float(policy.wait(state)), ""
