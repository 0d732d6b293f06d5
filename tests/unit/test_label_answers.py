"""Archive answers are values: each C-STORE status and STOW-RS response becomes delivered,
retry or dead as docs/pacs-label.md says. C-STORE statuses come from a pynetdicom Storage SCP
told what to answer (Orthanc cannot be made to return a chosen failure status)."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from adapter.label.delivery import CStoreDeliverer, _judge_stow
from adapter.label.kos import encode
from adapter.label.service import build_for, labelled
from adapter.store.labels import KIND_KOS
from adapter.store.outbox import Row, State
from tests.peers.launch import free_port
from tests.unit.test_label_kos import DICOM, SETTINGS, TABLES, VOCABULARY

SOP = "2.25.1234"


def kos_row() -> Row:
    from adapter.ingest.pipeline import run_ingest

    result = run_ingest([DICOM / "planning-ct"], SETTINGS, TABLES)
    (outcome,) = [s for s in result.studies if labelled(s)]
    ds, _ = build_for(outcome, SETTINGS, VOCABULARY, datetime(2026, 3, 2, tzinfo=UTC))
    return Row(
        id=1, destination="pacs", target="x", key="pacs-label:1", kind=KIND_KOS, label="KOS-1",
        payload={"sop_instance_uid": str(ds.SOPInstanceUID),
                 "study_uid": str(ds.StudyInstanceUID), "instance_number": 1,
                 "document": base64.b64encode(encode(ds)).decode()},
        state=State.IN_FLIGHT, attempts=1, next_attempt_at=0.0, last_error="", result=None,
        created_at=0.0, updated_at=0.0,
    )  # fmt: skip


@pytest.fixture
def scp() -> Iterator[Any]:
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import KeyObjectSelectionDocumentStorage

    answer = {"status": 0x0000}
    ae = AE(ae_title="TESTSCP")
    ae.add_supported_context(KeyObjectSelectionDocumentStorage)
    port = free_port()
    handlers = [(evt.EVT_C_STORE, lambda event: answer["status"])]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    try:
        yield answer, port
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("status", "verdict", "reason"),
    [
        (0x0000, "delivered", ""),
        (0xB000, "delivered", ""),
        (0xA700, "retry", "C-STORE status 0xA700 (out of resources)"),
        (0xA900, "dead", "C-STORE refused: status 0xA900"),
        (0xC000, "dead", "C-STORE refused: status 0xC000"),
    ],
)
def test_cstore_statuses(scp: Any, status: int, verdict: str, reason: str) -> None:
    answer, port = scp
    answer["status"] = status
    deliverer = CStoreDeliverer("TESTSCP", "127.0.0.1", port, calling_ae="RTPLAN",
                                allowed=VOCABULARY.allowed_titles, timeout=10)  # fmt: skip
    attempt = asyncio.run(deliverer.deliver(kos_row()))
    assert (attempt.verdict.value, attempt.reason) == (verdict, reason)
    if verdict != "retry":
        assert attempt.result == {"status": f"0x{status:04X}", "ae": "TESTSCP"}


def test_no_archive_listening_is_retried() -> None:
    deliverer = CStoreDeliverer("NOBODY", "127.0.0.1", free_port(), calling_ae="RTPLAN",
                                allowed=VOCABULARY.allowed_titles, timeout=2)  # fmt: skip
    attempt = asyncio.run(deliverer.deliver(kos_row()))
    assert (attempt.verdict.value, attempt.reason) == (
        "retry",
        "C-STORE NOBODY: no association (ConnectionRefusedError)",
    )


def sop_items(tag: str, reason: int | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"00081155": {"vr": "UI", "Value": [SOP]}}
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    return {tag: {"vr": "SQ", "Value": [item]}}


@pytest.mark.parametrize(
    ("status", "body", "headers", "verdict", "reason", "wait"),
    [
        (200, sop_items("00081199"), {}, "delivered", "", None),
        (202, sop_items("00081198", 0xA700), {}, "dead",
         "STOW-RS HTTP 202: failure reason 0xA700", None),
        (409, sop_items("00081198", 0xC000), {}, "dead",
         "STOW-RS HTTP 409: failure reason 0xC000", None),
        (200, sop_items("00081198", 0x0110), {}, "dead",
         "STOW-RS HTTP 200: failure reason 0x0110", None),
        (400, None, {}, "dead", "STOW-RS HTTP 400", None),
        (429, None, {"Retry-After": "7"}, "retry", "STOW-RS HTTP 429", 7.0),
        (503, None, {}, "retry", "STOW-RS HTTP 503", None),
    ],
)  # fmt: skip
def test_stow_rs_answers(
    status: int, body: Any, headers: dict[str, str], verdict: str, reason: str, wait: Any
) -> None:
    response = httpx.Response(status, json=body, headers=headers) if body else httpx.Response(
        status, headers=headers
    )
    attempt = _judge_stow(response, SOP)
    assert (attempt.verdict.value, attempt.reason, attempt.retry_after) == (verdict, reason, wait)
