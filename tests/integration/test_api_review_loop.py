"""The API end to end against real peers: HAPI FHIR JPA and the python-hl7 RIS (MLLP).
POST /reviews with a concern -> 202; GET /reviews/{id} then shows the FHIR ids the server gave
and the radiology order ACKed (AA) by the RIS; /metrics counts what the peers received."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from adapter.config import FhirSettings, Hl7Settings, Settings
from adapter.ingest.pipeline import run_ingest
from adapter.jobs.deliver import deliver, enqueue, targets
from adapter.store.outbox import Outbox
from adapter.tables import load_tables
from tests.api_support import TOKEN, api_settings, running_api
from tests.peers.launch import free_port
from tests.store_backend import StoreUnderTest
from tests.support import FIXTURES, make_study

pytestmark = pytest.mark.store  # every test here reaches the store: both backends

AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_post_review_with_a_concern_shows_fhir_ids_and_the_acked_order(
    hapi: str, hl7_receiver: Any, tmp_path: Path, store: StoreUnderTest
) -> None:
    folder, study_uid = make_study(tmp_path)
    settings = Settings(
        fhir=FhirSettings(base_url=hapi, version="R4", create_patient=True, initial_wait=0.05),
        hl7=Hl7Settings(mllp=True, host="127.0.0.1", port=hl7_receiver.port,
                        listen_port=free_port()),
    )  # fmt: skip
    database = tmp_path / "o.sqlite"
    settings = replace(settings, outbox=replace(settings.outbox, path=str(database)))
    result = run_ingest([folder], settings, load_tables(settings.mappings_dir))

    async def ingest() -> None:
        with Outbox(store.at(database)) as outbox:
            ids = enqueue(outbox, result, targets(settings, None))
            assert (await deliver(outbox, settings, ids=ids)).delivered == 1

    asyncio.run(ingest())
    review = json.loads((FIXTURES / "reviews" / "concern.json").read_text())
    review = {**review, "study_instance_uid": study_uid, "review_id": "REV-API-LOOP"}
    with running_api(api_settings(settings, tmp_path), None) as api:
        assert api.get("/readyz").json() == {"status": "ready"}  # store and HAPI answer
        answer = api.post("/reviews", json=review, headers=AUTH)
        assert answer.status_code == 202, answer.text
        location = answer.headers["location"]
        deadline = time.monotonic() + 120
        while True:
            state = api.get(location, headers=AUTH).json()
            states = [r["state"] for r in state["rows"] + state["orders"]]
            if state["orders"] and all(s == "delivered" for s in states):
                break
            assert time.monotonic() < deadline, f"not delivered: {states}"
            time.sleep(0.3)
        metrics = api.get("/metrics", headers=AUTH).text
        study = api.get(f"/studies/{study_uid}", headers=AUTH).json()
    # Issue 8: the store's records know the order's ACK and the ids the server gave the study.
    (order_state,) = study["orders"]
    assert order_state["state"] == "acknowledged" and order_state["receiver"]
    assert [(t["control"], t["ack"]) for t in order_state["transmissions"]] == [("NW", "AA")]
    assert study["classification"]["decision"] == "planning"
    with Outbox(store.at(database)) as outbox:
        record = outbox.study(study_uid)
    assert record is not None
    assert record.fhir_imaging_study_id and record.fhir_review_task_id and record.fhir_patient_id
    (row,) = state["rows"]
    kinds = {e.get("type") for e in row["result"]["entries"]}
    assert {"DiagnosticReport", "Task"} <= kinds
    assert all(e.get("id") for e in row["result"]["entries"] if e.get("type"))
    (order,) = [o for o in state["orders"] if o["kind"] == "hl7-order"]
    assert order["result"]["ack"] == "AA"
    assert hl7_receiver.wait_for(1)
    assert len(hl7_receiver.messages) == 1
    hl7_delivered = 'rtplan_outbox_rows{destination="hl7",state="delivered"} 1.0'
    assert hl7_delivered in metrics
    assert 'rtplan_ack_latency_seconds_bucket{le="+Inf"} 1.0' in metrics
    assert "rtplan_ack_latency_seconds_count 1.0" in metrics
