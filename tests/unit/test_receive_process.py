"""The study processor: a study whose processing fails stays in the spool and is tried again
after RETRY_SECONDS (not in a tight loop); a study is settled only once the store holds it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from adapter.config import load_settings
from adapter.receive import process as process_module
from adapter.receive.process import RETRY_SECONDS, StudyProcessor
from adapter.receive.spool import Spool, identify
from adapter.store.outbox import Outbox
from adapter.tables import load_tables
from tests.store_backend import StoreUnderTest
from tests.support import FIXTURES

FILES = sorted((FIXTURES / "dicom" / "planning-ct").glob("*.dcm"))


@pytest.mark.store
def test_a_failed_study_stays_spooled_and_is_retried_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: StoreUnderTest
) -> None:
    settings = load_settings(None, env={})
    spool = Spool(tmp_path / "spool")
    for path in FILES:
        raw = path.read_bytes()
        spool.store(raw, identify(raw))
    now = [1_000_000.0]
    real_enqueue = process_module.enqueue
    failures = {"left": 1}

    def flaky_enqueue(*args: object, **kwargs: object) -> list[int]:
        if failures["left"]:
            failures["left"] -= 1
            raise OSError("disk I/O error")  # the store cannot be written: a fault, not a peer
        return real_enqueue(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(process_module, "enqueue", flaky_enqueue)

    async def run() -> list[int]:
        with Outbox(store.at(tmp_path / "out" / "outbox.sqlite")) as outbox:
            processor = StudyProcessor(
                spool, settings, load_tables(settings.mappings_dir), outbox, tmp_path / "out",
                clock=lambda: now[0],
            )  # fmt: skip
            counts = [len(await processor.process_ready())]  # fails
            counts.append(len(await processor.process_ready()))  # too soon: not tried
            now[0] += RETRY_SECONDS + 1
            counts.append(len(await processor.process_ready()))  # tried again: done
            assert processor.counts["errors"] == 1 and processor.counts["mapped"] == 1
            return counts

    pending_before = spool.pending()
    assert asyncio.run(run()) == [0, 0, 1]
    assert len(pending_before) == 1 and spool.pending() == []
    assert len(spool.kept(pending_before[0].key)) == len(FILES)
