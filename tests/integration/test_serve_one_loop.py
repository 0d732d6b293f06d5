"""``rtplan serve``: one event loop and one FHIR client for the whole process (issue 8).

Every part of the service works in one run against the Medplum peer: the C-STORE receiver
ingests a planning study (the capabilities and the prior-imaging check, then the Bundle), the
HTTP API accepts a review with a concern (the study and the EHR's Patient are looked up, then
the review Bundle is delivered), the RIS rejects the order (AR), and the escalation check
stores a Task update that the worker delivers. Counted three ways, as for the commands
(``test_one_event_loop.py``): event loops created in the process (only the command's own
``asyncio.run``), FHIR clients constructed (one) and TCP connections the peer accepted (one:
``fhir.concurrency: 1`` gives the one client one pooled connection). The store calls ran on
the store threads, not on the loop. The run ends with SIGTERM, as an operator stops it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

from adapter.config import DicomSettings, FhirSettings, Hl7Settings, HttpSettings, Settings
from adapter.service.escalate import Metrics
from adapter.service.serve import serve
from adapter.store.outbox import Outbox
from tests.integration.test_dicom_receiver import storescu
from tests.loop_support import count_loops_and_clients
from tests.peers.launch import PeerProcess, free_port
from tests.peers.medplum_fixture import connections_accepted
from tests.peers.mllp_fault import ack as fault_ack
from tests.receive_support import wait_for
from tests.store_backend import StoreUnderTest
from tests.support import FIXTURES

pytestmark = [pytest.mark.peer, pytest.mark.store]
PLANNING = sorted((FIXTURES / "dicom" / "planning-ct").glob("*.dcm"))
TOKEN = "one-loop-token-0123456789"


class LongKeepAlive(httpx.Limits):
    """httpx closes a connection idle for 5 s; the steps of this run may be further apart
    under load. Kept open longer, one client still needs exactly one connection, and a
    second client would still open its own."""

    def __init__(self, *, keepalive_expiry: float | None = 600.0, **kwargs: Any) -> None:
        super().__init__(keepalive_expiry=keepalive_expiry, **kwargs)


def _settings(tmp_path: Path, medplum: str, mllp_port: int) -> Settings:
    (tmp_path / "tokens").write_text(f"{TOKEN}\n")
    settings = Settings(
        fhir=FhirSettings(
            base_url=medplum, version="auto", create_patient=True, concurrency=1, initial_wait=0.05
        ),
        hl7=Hl7Settings(
            mllp=True,
            host="127.0.0.1",
            port=mllp_port,
            listen_port=free_port(),
            escalation_check_seconds=0.2,
        ),
        dicom=DicomSettings(
            listen_port=free_port(), quiet_seconds=1.0, spool_dir=str(tmp_path / "spool")
        ),
        http=HttpSettings(listen_port=free_port(), tokens_file=str(tmp_path / "tokens")),
    )
    return replace(settings, outbox=replace(settings.outbox, path=str(tmp_path / "o.sqlite")))


def _review(study_uid: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / "reviews" / "concern.json").read_text())
    return {**data, "study_instance_uid": study_uid, "review_id": "REV-ONE-LOOP"}


def _drive(settings: Settings, study_uid: str, seen: dict[str, Any]) -> None:
    """The operator's side, on a plain thread (no event loop): C-STORE, API calls, SIGTERM."""
    api = httpx.Client(
        base_url=f"http://127.0.0.1:{settings.http.listen_port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
        trust_env=False,
    )

    def delivered(label: Callable[[str], bool]) -> bool:
        rows = api.get("/outbox", params={"state": "delivered"}).json()
        return any(label(row["label"]) for row in rows)

    try:
        wait_for(lambda: _answers(api), timeout=60, what="the API")
        sent = storescu(settings.dicom.listen_port, PLANNING)
        assert sent.returncode == 0, sent.stderr
        wait_for(
            lambda: delivered(lambda label: label.startswith("ImagingStudy-")),
            timeout=120,
            what="the ingested study's Bundle delivered",
        )
        posted = api.post("/reviews", json=_review(study_uid))
        assert posted.status_code == 202, posted.text
        wait_for(
            lambda: delivered(lambda label: label.startswith("Escalation-")),
            timeout=120,
            what="the rejection's escalation delivered",
        )
        seen["escalations"] = api.get("/escalations").json()
        seen["threads"] = {t.name for t in threading.enumerate()}
    except BaseException as exc:  # reported by the test after the service stopped
        seen["error"] = exc
    finally:
        api.close()
        os.kill(os.getpid(), signal.SIGTERM)  # the service's handler: a clean stop


def _answers(api: httpx.Client) -> bool:
    try:
        return api.get("/healthz").status_code == 200
    except httpx.TransportError:
        return False


def test_serve_runs_every_part_on_one_loop_with_one_fhir_client(
    tmp_path: Path,
    medplum: str,
    medplum_peer: PeerProcess,
    mllp_fault: Any,
    monkeypatch: pytest.MonkeyPatch,
    store: StoreUnderTest,
) -> None:
    mllp_fault.default = fault_ack("AR", error_code="207")  # the RIS rejects the order
    settings = _settings(tmp_path, medplum, mllp_fault.port)
    study_uid = str(dcmread(PLANNING[0], stop_before_pixels=True).StudyInstanceUID)
    monkeypatch.setattr(httpx, "Limits", LongKeepAlive)
    before = connections_accepted(medplum_peer)
    loops, clients = count_loops_and_clients(monkeypatch)
    seen: dict[str, Any] = {}
    metrics = Metrics()

    async def run() -> None:
        started = asyncio.Event()
        service = asyncio.create_task(serve(settings, None, started=started, metrics=metrics))
        await asyncio.wait([service, asyncio.create_task(started.wait())],
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        if not service.done():
            driver = threading.Thread(target=_drive, args=(settings, study_uid, seen))
            driver.start()
        await service  # returns once SIGTERM stopped every part

    asyncio.run(run())
    if "error" in seen:
        raise seen["error"]
    after = connections_accepted(medplum_peer)

    # One loop (this test's asyncio.run), one FHIR client, one TCP connection at the peer
    # (the second question to /$connections is the other one).
    assert len(loops) == 1
    assert clients == [medplum]
    assert after - before == 1 + 1
    # The store calls ran on the store threads (a thread each: worker and receiver).
    assert {"rtplan-outbox-store_0", "rtplan-receiver-store_0"} <= seen["threads"]
    # All three kinds of work reached the peer through that connection.
    assert [e["kind"] for e in seen["escalations"] if e["fired_at"]] == ["rejected"]
    assert dict(metrics.counters) == {"escalations_rejected": 1}
    assert _count(medplum, "ImagingStudy") == 1
    assert _count(medplum, "DiagnosticReport") >= 1
    tasks = httpx.get(f"{medplum}/Task", params={"_count": "100"}, timeout=30).json()
    statuses = [
        e["resource"].get("businessStatus", {}).get("text", "") for e in tasks.get("entry", [])
    ]
    assert any(s.startswith("escalated: the RIS rejected the order") for s in statuses)
    with Outbox(store.at(tmp_path / "o.sqlite")) as outbox:
        assert outbox.counts().get("in_flight", 0) == 0  # nothing left leased at the stop


def _count(base: str, kind: str) -> int:
    bundle = httpx.get(f"{base}/{kind}", params={"_summary": "count"}, timeout=30).json()
    return int(bundle.get("total", 0))
