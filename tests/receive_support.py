"""Run the C-STORE receiver (``adapter.receive``) on a background event loop for a test."""

from __future__ import annotations

import asyncio
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from adapter.config import Settings
from adapter.receive.service import ReceiveService
from adapter.store.location import open_outbox
from adapter.tables import load_tables
from tests.peers.launch import free_port


def receiver_settings(base: Settings, *, quiet: float = 1.0, **dicom: object) -> Settings:
    port = free_port()
    values = {"listen_port": port, "quiet_seconds": quiet, **dicom}
    return replace(base, dicom=replace(base.dicom, **values))  # type: ignore[arg-type]


@contextmanager
def running_receiver(settings: Settings, out_dir: Path | None) -> Iterator[ReceiveService]:
    """The receiver with its processor, on its own loop and thread; stopped cleanly after."""
    ready = threading.Event()
    holder: dict[str, object] = {}
    loop = asyncio.new_event_loop()

    async def main() -> None:
        with open_outbox(settings, out_dir) as outbox:
            service = ReceiveService(settings, load_tables(settings.mappings_dir), outbox, out_dir)
            holder["service"] = service
            stop = asyncio.Event()
            holder["stop"] = stop
            try:
                await service.start()
            finally:
                ready.set()
            await stop.wait()
            await service.aclose()

    def target() -> None:
        try:
            loop.run_until_complete(main())
        except BaseException as exc:  # reported to the test below
            holder["error"] = exc
            ready.set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    assert ready.wait(30), "receiver did not start"
    if "error" in holder:
        raise AssertionError(f"receiver failed: {holder['error']!r}")
    service = holder["service"]
    assert isinstance(service, ReceiveService)
    try:
        yield service
    finally:
        stop = holder["stop"]
        assert isinstance(stop, asyncio.Event)
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        loop.close()
        if "error" in holder:
            raise AssertionError(f"receiver failed: {holder['error']!r}")


def wait_for(condition: Callable[[], bool], timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or condition}")


def data_set_offset(raw: bytes) -> int:
    """Where a Part 10 file's data set starts: after the preamble, DICM and group 0002."""
    group_length: int = struct.unpack_from("<I", raw, 132 + 8)[0]
    return 132 + 12 + group_length
