"""The closed loop end to end, against a real FHIR server (Medplum, HAPI) and the python-hl7
RIS peer: ingest -> review with a concern -> FHIR resources -> HL7 order -> AA -> radiology Task
received -> ORU^R01 from the RIS -> radiologist DiagnosticReport -> radiology Task completed.
Also: a poison order at the head of the queue does not block the next (row 12), and the
escalation timers fire, survive a restart and raise the Task's priority."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter.config import FhirSettings, Hl7Settings, Settings
from adapter.jobs.deliver import deliver, enqueue, targets
from adapter.jobs.fhir import fhir_session
from adapter.jobs.ingest import read_and_map
from adapter.jobs.review import submit_review_async
from adapter.service.escalate import Metrics, escalate_due
from adapter.service.serve import serve
from adapter.store.outbox import Outbox, State
from adapter.tables import load_tables
from tests.peers.launch import free_port
from tests.store_backend import StoreUnderTest
from tests.support import FIXTURES, make_study, synth

pytestmark = pytest.mark.store  # every test here reaches the store: both backends

PLACER_SYSTEM = "urn:rtplan:placer-order"


def review_for(study_uid: str, review_id: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / "reviews" / "concern.json").read_text())
    return {**data, "study_instance_uid": study_uid, "review_id": review_id}


def search(base: str, kind: str, **params: str) -> list[dict[str, Any]]:
    bundle = httpx.get(f"{base}/{kind}", params=params, timeout=30).json()
    return [e["resource"] for e in bundle.get("entry", [])]


def oru(placer: str, control: str, text: str) -> bytes:
    segments = [
        f"MSH|^~\\&|RIS|RADIOLOGY|RTPLAN|ONCOLOGY|20260305101500+0000||ORU^R01^ORU_R01|{control}|P|2.5.1",
        "PID|||RTP0001^^^HOSP-MRN^MR",
        f"ORC|RE|{placer}^RTPLAN|F123^RIS||CM",
        f"OBR|1|{placer}^RTPLAN|F123^RIS|RTPLANREVIEW^Radiologist review^L|||20260305100000+0000"
        + "|" * 18
        + "F",
        f"OBX|1|TX|18748-4^Diagnostic imaging study^LN||{text}||||||F",
    ]
    return ("\r".join(segments) + "\r").encode()


async def _until(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.2)


def test_closed_loop(
    fhir_url: str, hl7_receiver: Any, tmp_path: Path, store: StoreUnderTest
) -> None:
    folder, study_uid = make_study(tmp_path)
    settings = Settings(
        fhir=FhirSettings(base_url=fhir_url, version="R4", create_patient=True, initial_wait=0.05),
        hl7=Hl7Settings(
            mllp=True,
            host="127.0.0.1",
            port=hl7_receiver.port,
            listen_port=free_port(),
            escalation_check_seconds=0.2,
        ),
    )
    settings = replace(settings, outbox=replace(settings.outbox, path=str(tmp_path / "o.sqlite")))
    tables = load_tables(settings.mappings_dir)

    async def loop() -> str:
        async with fhir_session(settings) as fhir:  # prior-imaging search and delivery
            result = await read_and_map([folder], settings, tables, fhir=fhir)
            with Outbox(store.at(tmp_path / "o.sqlite")) as outbox:
                ids = enqueue(outbox, result, targets(settings, None))
                report = await deliver(outbox, settings, ids=ids, fhir=fhir)
                assert report.delivered == 1
        stop, started = asyncio.Event(), asyncio.Event()
        metrics = Metrics()
        server = asyncio.create_task(
            serve(settings, None, stop=stop, started=started, metrics=metrics)
        )
        await started.wait()
        submitted = await submit_review_async(review_for(study_uid, "REV-LOOP-1"), settings)
        placer = submitted.placer_order_number
        assert placer and submitted.delivery is not None and submitted.delivery.dead == 0
        # The RIS got exactly one order, and acknowledged it: the Task is "received".
        assert hl7_receiver.wait_for(1)
        tasks = search(fhir_url, "Task", identifier=f"urn:rtplan:radiology-task|{placer}")
        assert [t["status"] for t in tasks] == ["received"]
        assert tasks[0]["businessStatus"]["text"] == "acknowledged by RIS"
        # The radiologist's report comes back on our listener.
        report_oru = oru(placer, "ORU0001", "No metastatic disease; the liver lesions are cysts.")
        ack = await hl7_receiver.send("127.0.0.1", settings.hl7.listen_port, report_oru)
        assert b"MSA|AA|ORU0001" in ack

        def completed() -> bool:
            found = search(fhir_url, "Task", identifier=f"urn:rtplan:radiology-task|{placer}")
            return bool(found) and found[0]["status"] == "completed"

        await _until(completed)
        # A resend of the same ORU (byte for byte) is acknowledged again and processed once;
        # the same MSH-10 with other content is not a resend (AE, issue 14).
        again = await hl7_receiver.send("127.0.0.1", settings.hl7.listen_port, report_oru)
        assert b"MSA|AA|ORU0001" in again
        stop.set()
        await server
        with Outbox(store.at(tmp_path / "o.sqlite")) as outbox:
            assert outbox.inbound_count() == 1
            assert outbox.timers().open() == []  # T1 and T2 both stopped
            assert outbox.counts()["dead"] == 0
        return placer

    placer = asyncio.run(loop())
    assert len(hl7_receiver.control_ids) == 1  # one order, one MSH-10
    requests = search(fhir_url, "ServiceRequest", identifier=f"{PLACER_SYSTEM}|{placer}")
    reports = search(
        fhir_url, "DiagnosticReport", identifier=f"urn:rtplan:radiology-report|{placer}"
    )
    assert len(reports) == 1 and len(requests) == 1
    report = reports[0]
    assert report["status"] == "final" and report["category"][0]["coding"][0]["code"] == "RAD"
    assert report["conclusion"].startswith("No metastatic disease")
    assert report["basedOn"] == [{"reference": f"ServiceRequest/{requests[0]['id']}"}]


def test_unknown_order_and_garbage_are_refused(
    hl7_receiver: Any, tmp_path: Path, store: StoreUnderTest
) -> None:
    settings = Settings(hl7=Hl7Settings(listen_port=free_port(), escalation_check_seconds=0.2))
    settings = replace(settings, outbox=replace(settings.outbox, path=str(tmp_path / "o.sqlite")))

    async def go() -> None:
        stop, started = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve(settings, tmp_path, stop=stop, started=started))
        await started.wait()
        port = settings.hl7.listen_port
        unknown = await hl7_receiver.send("127.0.0.1", port, oru("RTNOSUCHORDER", "X1", "text"))
        assert b"MSA|AE|X1" in unknown and b"ERR|" in unknown and b"204" in unknown
        garbage = await hl7_receiver.send(
            "127.0.0.1", port, b"MSH|^~\\&|A|B|C|D|x||ZZZ^Z01|G1|P|2.5\r"
        )
        assert b"MSA|AR|G1" in garbage
        stop.set()
        await task

    asyncio.run(go())
    with Outbox(store.at(tmp_path / "o.sqlite")) as outbox:
        assert outbox.inbound_count() == 2  # both stored (for audit) before the answer


def test_poison_order_does_not_block_the_next(
    mllp_fault: Any, tmp_path: Path, store: StoreUnderTest
) -> None:
    """Row 12: the first order is always rejected (AR); the ten after it are delivered."""
    from adapter.hl7.deliverer import HL7, KIND_ORDER
    from adapter.hl7.model import OrderPatient, OrderRequest, PatientIdentifier
    from tests.peers.mllp_fault import ack as fault_ack

    settings = Settings(
        hl7=Hl7Settings(mllp=True, host="127.0.0.1", port=mllp_fault.port),
        fhir=FhirSettings(initial_wait=0.01, max_attempts=3),
    )
    settings = replace(settings, outbox=replace(settings.outbox, path=str(tmp_path / "o.sqlite")))
    with Outbox(store.at(tmp_path / "o.sqlite")) as outbox:
        ids = []
        for n in range(11):
            order = OrderRequest(
                "NW",
                f"RTPO{n:04d}",
                "RTPLAN",
                OrderPatient((PatientIdentifier(f"P{n}", "HOSP-MRN"),), family=f"Test{n}"),
                f"1.2.3.{n}",
            )
            ids.append(
                outbox.enqueue(
                    destination=HL7,
                    target="default-ris",
                    key=f"study:{n}",
                    kind=KIND_ORDER,
                    label=f"o{n}",
                    payload={"profile": "default-ris", "order": order.to_json()},
                )
            )
        mllp_fault.always(f"RTP{ids[0]:09d}", fault_ack("AR"))
        report = asyncio.run(deliver(outbox, settings, ids=ids))
        assert report.dead == 1 and report.delivered == 10
        assert outbox.get(ids[0]).state is State.DEAD
        assert "rejected by the receiver" in outbox.get(ids[0]).last_error
        # The rejection is escalated at the next check (metric, log, entry in escalations).
        metrics = Metrics()
        assert [t.kind for t in escalate_due(outbox, [], metrics)] == ["rejected"]
        assert metrics.counters == {"escalations_rejected": 1}


def test_escalations_fire_survive_restart_and_raise_priority(
    tmp_path: Path, store: StoreUnderTest
) -> None:
    """T1 and T2 with a fake clock, and a restart (a new Outbox handle) between them."""
    from adapter.hl7.deliverer import T1, T2
    from adapter.store.timers import SteadyClock

    out = tmp_path / "out"
    synth.planning_ct(out / "study", seed="escalation", slices=2)
    settings = Settings(hl7=Hl7Settings(escalation_check_seconds=0.1))
    settings = replace(settings, outbox=replace(settings.outbox, path=str(tmp_path / "o.sqlite")))
    from adapter.ingest.pipeline import run_ingest as ingest
    from adapter.jobs.review import submit_review

    tables = load_tables(settings.mappings_dir)
    with Outbox(store.at(tmp_path / "o.sqlite")) as outbox:
        asyncio.run(
            deliver(
                outbox,
                settings,
                ids=enqueue(
                    outbox, ingest([out / "study"], settings, tables), targets(settings, out)
                ),
            )
        )
    uid = synth.uid_for("escalation", "/study")
    submitted = submit_review(review_for(uid, "REV-ESC-1"), settings, out_dir=out)
    placer = submitted.placer_order_number
    wall, mono = [1_000_000.0], [0.0]
    path = tmp_path / "o.sqlite"
    with Outbox(store.at(path)) as outbox:
        timers = outbox.timers(SteadyClock(lambda: wall[0], lambda: mono[0]))
        timers.arm(placer, T1, 900, "no AA from RIS")
        timers.arm(placer, T2, 86400, "no radiologist result")
    metrics = Metrics()
    fhir_targets = targets(settings, out)
    # 16 minutes later: T1 fires (and only T1).
    with Outbox(store.at(path), clock=lambda: wall[0] + 960) as outbox:
        fired = escalate_due(outbox, fhir_targets, metrics)
        assert [t.kind for t in fired] == [T1]
        asyncio.run(deliver(outbox, settings, out_dir=out))
    # The adapter restarts; a day later T2 fires, once.
    with Outbox(store.at(path), clock=lambda: wall[0] + 86400 + 60) as outbox:
        assert [t.kind for t in escalate_due(outbox, fhir_targets, metrics)] == [T2]
        assert escalate_due(outbox, fhir_targets, metrics) == []
        asyncio.run(deliver(outbox, settings, out_dir=out))
    assert metrics.counters == {"escalations_T1": 1, "escalations_T2": 1}
    written = sorted((out / "fhir").glob("Escalation-*.json"))
    assert len(written) == 2
    task = json.loads(written[-1].read_text())["entry"][0]["resource"]
    assert task["businessStatus"]["text"].startswith("escalated")
    assert task["priority"] in ("asap", "stat", "urgent")
