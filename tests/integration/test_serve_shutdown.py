"""``rtplan serve`` stopped by SIGTERM with a delivery in progress (issue 8, issue 11).

The outbox worker runs on the service's one event loop. Stopped, it claims nothing more and
finishes the rows it holds; a delivery still running after the grace period is cancelled and
its row, still leased, is taken up again after the lease: handed back, never lost, never
delivered twice (the FHIR peer holds one ImagingStudy either way).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest

from adapter.config import FhirSettings, ServeSettings, Settings
from adapter.jobs.deliver import enqueue, targets
from adapter.jobs.ingest import read_and_map
from adapter.service import serve as serve_module
from adapter.service.serve import serve
from adapter.store.location import store_location
from adapter.store.outbox import Outbox, State
from adapter.tables import load_tables
from tests.peers.fault_fhir import FaultServer, commit_then_hang, delay
from tests.support import FIXTURES, ROOT

STUDY = FIXTURES / "dicom" / "planning-ct"

pytestmark = pytest.mark.store  # every test here reaches the store: both backends


def _settings(tmp_path: Path, fhir_url: str, *, lease: float = 300.0) -> Settings:
    settings = Settings(
        fhir=FhirSettings(base_url=fhir_url, version="R4", create_patient=True, read_timeout=120),
        serve=ServeSettings(mllp_listener=False, delivery=True),
    )
    outbox = replace(settings.outbox, path=str(tmp_path / "o.sqlite"), lease_seconds=lease)
    return replace(settings, outbox=outbox)


def _enqueue_study(settings: Settings, tmp_path: Path) -> int:
    tables = load_tables(settings.mappings_dir)
    result = asyncio.run(read_and_map([STUDY], settings, tables, fhir=None))
    with Outbox(store_location(settings)) as outbox:
        (row_id,) = enqueue(outbox, result, targets(settings, None))
    return row_id


async def _until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.05)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def _posted(peer: FaultServer) -> Callable[[], bool]:
    return lambda: any(r.method == "POST" for r in peer.requests)


def _row(settings: Settings, row_id: int) -> tuple[State, int, list[str]]:
    with Outbox(store_location(settings)) as outbox:
        row = outbox.get(row_id)
        return row.state, row.attempts, [event for _, event, _ in outbox.events(row_id)]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_stop_signal_lets_the_delivery_in_progress_finish(
    stop_signal: signal.Signals, tmp_path: Path, fault_fhir: FaultServer
) -> None:
    settings = _settings(tmp_path, fault_fhir.base_url)
    row_id = _enqueue_study(settings, tmp_path)
    fault_fhir.script(delay(1.0, method="POST"))  # the Bundle is answered a second later

    async def run() -> None:
        service = asyncio.create_task(serve(settings, None))
        await _until(_posted(fault_fhir), "the Bundle's POST")
        os.kill(os.getpid(), stop_signal)  # while the peer is still answering it
        await asyncio.wait_for(service, 60)

    asyncio.run(run())
    state, attempts, events = _row(settings, row_id)
    assert (state, attempts) == (State.DELIVERED, 1)
    assert events[-1] == "delivered"
    assert fault_fhir.count("ImagingStudy") == 1


def test_a_delivery_outlasting_the_grace_period_is_handed_back_and_taken_up_after_its_lease(
    tmp_path: Path, fault_fhir: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serve_module, "SHUTDOWN_GRACE_SECONDS", 0.2)
    settings = _settings(tmp_path, fault_fhir.base_url, lease=5.0)
    row_id = _enqueue_study(settings, tmp_path)
    # The peer commits the Bundle and never answers: the adapter cannot know it arrived.
    fault_fhir.script(commit_then_hang(None, method="POST"))

    async def first_run() -> None:
        service = asyncio.create_task(serve(settings, None))
        await _until(_posted(fault_fhir), "the Bundle's POST")
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(service, 60)  # the hung delivery does not hold the stop

    asyncio.run(first_run())
    state, attempts, _ = _row(settings, row_id)
    assert (state, attempts) == (State.IN_FLIGHT, 1)  # still leased: nothing decided, nothing lost

    async def next_start() -> None:
        service = asyncio.create_task(serve(settings, None))
        await _until(lambda: _row(settings, row_id)[0] is State.DELIVERED, "the row delivered")
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(service, 60)

    asyncio.run(next_start())
    state, attempts, events = _row(settings, row_id)
    assert (state, attempts) == (State.DELIVERED, 2)
    assert "recovered" in events  # taken over once the lease ran out
    assert fault_fhir.count("ImagingStudy") == 1  # the repeat updated the same resource


def test_the_documented_grace_period_is_the_code_s() -> None:
    grace = serve_module.SHUTDOWN_GRACE_SECONDS
    for doc in ("operations.md", "architecture.md"):
        text = (ROOT / "docs" / doc).read_text(encoding="utf-8")
        assert f"{grace:.0f} s" in text, doc
