"""Escalation timers: fire once, survive a restart, ignore wall-clock jumps while running."""

from __future__ import annotations

from pathlib import Path

from adapter.store.outbox import Outbox
from adapter.store.timers import SteadyClock, Timers


class Fake:
    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


def open_timers(store: Path | str, wall: Fake, mono: Fake) -> Timers:
    return Outbox(store).timers(SteadyClock(wall, mono))


def test_fires_once_when_due(store_url: Path | str) -> None:
    wall, mono = Fake(1000.0), Fake(0.0)
    timers = open_timers(store_url, wall, mono)
    timers.arm("PO1", "T1", 60, "no AA")
    assert timers.arm("PO1", "T1", 60) == timers.open()[0].id  # not armed twice
    mono.value = 59.0
    assert timers.take_due() == []
    mono.value = 61.0
    fired = timers.take_due()
    assert [(t.key, t.kind) for t in fired] == [("PO1", "T1")]
    assert timers.take_due() == []
    assert [t.key for t in timers.fired()] == ["PO1"]


def test_cancelled_timer_never_fires(store_url: Path | str) -> None:
    wall, mono = Fake(1000.0), Fake(0.0)
    timers = open_timers(store_url, wall, mono)
    timers.arm("PO1", "T1", 10)
    assert timers.cancel("PO1", "T1")
    mono.value = 100.0
    assert timers.take_due() == [] and timers.open() == []


def test_wall_clock_jump_while_running_changes_nothing(store_url: Path | str) -> None:
    wall, mono = Fake(1000.0), Fake(0.0)
    timers = open_timers(store_url, wall, mono)
    timers.arm("PO1", "T2", 3600)
    wall.value += 7200  # the wall clock jumps two hours ahead (NTP step, DST error)
    mono.value = 10.0
    assert timers.take_due() == []  # only 10 steady seconds have passed


def test_survives_a_restart_between_t1_and_t2(store_url: Path | str) -> None:
    path = store_url
    wall, mono = Fake(1000.0), Fake(0.0)
    first = open_timers(path, wall, mono)
    first.arm("PO1", "T1", 60)
    first.arm("PO1", "T2", 600)
    mono.value = 61.0
    assert [t.kind for t in first.take_due()] == ["T1"]
    # The process stops; it starts again 5 minutes (wall) later with a fresh monotonic clock.
    restarted = open_timers(path, Fake(1000.0 + 61 + 300), Fake(5.0))
    assert restarted.take_due() == []
    assert 230 < (restarted.seconds_until_next() or 0) <= 240
    later = open_timers(path, Fake(1000.0 + 601), Fake(0.0))
    assert [t.kind for t in later.take_due()] == ["T2"]
    assert [t.kind for t in later.fired()] == ["T1", "T2"]
