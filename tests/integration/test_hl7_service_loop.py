"""Issue 10: ``rtplan serve`` delivers rows created while it runs (results, escalations) to
every configured destination; ACK discipline (AE/AR/CE: one escalation, T1 ends, the rejection
stays on the Task); a replay is a new transmission (new MSH-10, same placer number)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter.config import FhirSettings, Hl7Settings, Settings
from adapter.hl7.deliverer import KIND_ORDER, REJECTED, T1
from adapter.hl7.profiles import load_profiles
from adapter.hl7.trust import TrustPolicy
from adapter.ingest.pipeline import run_ingest
from adapter.jobs.deliver import deliver, enqueue, targets
from adapter.jobs.review import submit_review_async
from adapter.service.escalate import Metrics, escalate_due
from adapter.service.serve import serve
from adapter.store.location import store_location
from adapter.store.outbox import Outbox, State
from adapter.tables import load_tables
from tests.integration.test_closed_loop import oru, review_for
from tests.peers.launch import free_port
from tests.peers.mllp_fault import ack as fault_ack
from tests.peers.mllp_fault import silence
from tests.store_backend import StoreUnderTest
from tests.support import ROOT, enqueue_order, make_study

pytestmark = pytest.mark.store  # every test here reaches the store: both backends


def copy_with(tmp: Path, replacements: dict[str, str]) -> Path:
    folder = tmp / "receivers"
    shutil.copytree(ROOT / "mappings" / "receivers", folder, dirs_exist_ok=True)
    for path in folder.glob("*.yaml"):
        text = path.read_text()
        for old, new in replacements.items():
            text = text.replace(old, new)
        path.write_text(text)
    return folder


def ingested(tmp: Path, settings: Settings, out: Path | None) -> str:
    """A planning study ingested and delivered (ingest stores the study's record)."""
    folder, uid = make_study(tmp)
    tables = load_tables(settings.mappings_dir)
    result = run_ingest([folder], settings, tables)
    with Outbox(store_location(settings)) as outbox:
        ids = enqueue(outbox, result, targets(settings, out))
        assert asyncio.run(deliver(outbox, settings, ids=ids, out_dir=out)).dead == 0
        record = outbox.study(uid)  # stored by ingest with the study's rows
        assert record is not None and record.patient_name == "TEST^PLANNING"
    return uid


def settings_for(tmp: Path, **hl7: Any) -> Settings:
    s = Settings(hl7=Hl7Settings(listen_port=free_port(), escalation_check_seconds=0.1, **hl7))
    return replace(s, outbox=replace(s.outbox, path=str(tmp / "o.sqlite")))


async def until(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.1)


def test_serve_writes_result_files_created_while_running(hl7_receiver: Any, tmp_path: Path) -> None:
    """An output folder only (no FHIR server): the radiologist's result from an ORU^R01 that
    arrives mid-run is written without a restart (it used to wait for one)."""
    out = tmp_path / "out"
    settings = settings_for(tmp_path, mllp=True, host="127.0.0.1", port=hl7_receiver.port)
    uid = ingested(tmp_path, settings, out)

    async def go() -> None:
        stop, started = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(serve(settings, out, stop=stop, started=started))
        await started.wait()
        result = await submit_review_async(
            review_for(uid, "REV-SERVE-FILES"), settings, out_dir=out
        )
        assert hl7_receiver.wait_for(1)
        placer = result.placer_order_number
        ack = await hl7_receiver.send(
            "127.0.0.1", settings.hl7.listen_port, oru(placer, "ORUF1", "No metastases.")
        )
        assert b"MSA|AA|ORUF1" in ack
        await until(lambda: any((out / "fhir").glob(f"RadiologyResult-{placer}-*.json")))
        stop.set()
        await task

    asyncio.run(go())


@pytest.mark.peer
def test_t1_escalation_and_result_reach_the_fhir_peer_while_running(
    hapi: str, mllp_fault: Any, hl7_receiver: Any, tmp_path: Path
) -> None:
    """HAPI FHIR + an MLLP peer that never answers: T1 fires while serve runs and its Task
    update reaches the FHIR peer; then the RIS answers, and an ORU^R01 mid-run gives the
    radiologist DiagnosticReport and a completed Task, all without a restart."""
    folder = copy_with(
        tmp_path, {"t1_no_aa: 15m": "t1_no_aa: 1s", "ack_timeout: 30s": "ack_timeout: 1s"}
    )
    mllp_fault.default = silence()
    settings = settings_for(
        tmp_path, mllp=True, host="127.0.0.1", port=mllp_fault.port, receivers_dir=str(folder)
    )
    settings = replace(
        settings, fhir=FhirSettings(base_url=hapi, create_patient=True, initial_wait=0.05)
    )
    uid = ingested(tmp_path, settings, None)

    def task(placer: str) -> dict[str, Any]:
        bundle = httpx.get(
            f"{hapi}/Task", params={"identifier": f"urn:rtplan:radiology-task|{placer}"}, timeout=30
        ).json()
        found = [e["resource"] for e in bundle.get("entry", [])]
        return found[0] if found else {}

    async def go() -> None:
        stop, started = asyncio.Event(), asyncio.Event()
        metrics = Metrics()
        server = asyncio.create_task(
            serve(settings, None, stop=stop, started=started, metrics=metrics)
        )
        await started.wait()
        result = await submit_review_async(review_for(uid, "REV-SERVE-T1"), settings, deliver=False)
        placer = result.placer_order_number
        await until(
            lambda: (
                task(placer)
                .get("businessStatus", {})
                .get("text", "")
                .startswith("escalated: no acknowledgement")
            )
        )
        assert metrics.counters["escalations_T1"] == 1
        mllp_fault.default = fault_ack("AA")
        await until(lambda: task(placer).get("status") == "received")
        ack = await hl7_receiver.send(
            "127.0.0.1", settings.hl7.listen_port, oru(placer, "ORUT1", "Benign cysts.")
        )
        assert b"MSA|AA|ORUT1" in ack
        await until(lambda: task(placer).get("status") == "completed")
        reports = httpx.get(
            f"{hapi}/DiagnosticReport",
            params={"identifier": f"urn:rtplan:radiology-report|{placer}"},
            timeout=30,
        ).json()
        assert reports.get("total", len(reports.get("entry", []))) == 1
        stop.set()
        await server

    asyncio.run(go())


@pytest.mark.parametrize(
    ("code", "profile"), [("AE", "default-ris"), ("AR", "default-ris"), ("CE", "swfb-ris")]
)
def test_rejection_fires_one_escalation_ends_t1_and_stays_on_the_task(
    code: str, profile: str, mllp_fault: Any, tmp_path: Path, store: StoreUnderTest
) -> None:
    folder = copy_with(tmp_path, {"enabled: true": "enabled: false"})
    out = tmp_path / "out"
    mllp_fault.default = fault_ack(code, error_code="207")
    settings = settings_for(
        tmp_path,
        mllp=True,
        host="127.0.0.1",
        port=mllp_fault.port,
        receiver=profile,
        receivers_dir=str(folder),
    )
    uid = ingested(tmp_path, settings, out)
    result = asyncio.run(
        submit_review_async(review_for(uid, f"REV-REJ-{code}"), settings, out_dir=out)
    )
    placer = result.placer_order_number
    assert result.delivery is not None and result.delivery.dead == 1
    metrics = Metrics()
    fhir_targets = targets(settings, out)
    # A day later: only the rejection has fired, once; T1 was ended by it.
    later = time.time() + 86400
    with Outbox(store.at(tmp_path / "o.sqlite"), clock=lambda: later) as outbox:
        assert [t.kind for t in escalate_due(outbox, fhir_targets, metrics)] == [REJECTED]
        assert escalate_due(outbox, fhir_targets, metrics) == []
        assert [t.kind for t in outbox.timers().open()] == []
        assert T1 not in [t.kind for t in outbox.timers().fired()]
        asyncio.run(deliver(outbox, settings, out_dir=out))
    assert dict(metrics.counters) == {"escalations_rejected": 1}
    (written,) = sorted((out / "fhir").glob(f"Escalation-{placer}-*.json"))
    task = json.loads(written.read_text())["entry"][0]["resource"]
    assert task["businessStatus"]["text"].startswith("escalated: the RIS rejected the order")
    assert code in task["businessStatus"]["text"] and "207" in task["businessStatus"]["text"]


def test_replay_after_rejection_is_a_new_transmission(
    mllp_fault: Any, tmp_path: Path, store: StoreUnderTest
) -> None:
    mllp_fault.script(fault_ack("AE"))
    settings = settings_for(tmp_path, mllp=True, host="127.0.0.1", port=mllp_fault.port)
    out = tmp_path / "out"
    uid = ingested(tmp_path, settings, out)
    result = asyncio.run(submit_review_async(review_for(uid, "REV-REPLAY"), settings, out_dir=out))
    (order_id,) = result.hl7_rows
    with Outbox(store.at(tmp_path / "o.sqlite")) as outbox:
        row = outbox.get(order_id)
        assert row.state is State.DEAD and row.kind == KIND_ORDER
        assert [t.kind for t in escalate_due(outbox, [], Metrics())] == [REJECTED]
    # `rtplan outbox replay ID`, as docs/hl7.md shows it.
    from adapter.cli import main

    config = tmp_path / "rtplan.yaml"
    config.write_text(
        f"outbox: {{path: {tmp_path / 'o.sqlite'}}}\n"
        f"hl7: {{mllp: true, host: 127.0.0.1, port: {mllp_fault.port}}}\n"
    )
    assert main(["--config", str(config), "outbox", "replay", str(order_id)]) == 0
    with Outbox(store.at(tmp_path / "o.sqlite")) as outbox:
        new_id = max(r.id for r in outbox.rows() if r.destination == "hl7")
        assert new_id != order_id and outbox.get(new_id).state is State.DELIVERED
        again = outbox.get(new_id)
        assert again.payload["control_id"] != row.payload["control_id"]
        assert again.payload["order"]["placer_order_number"] == result.placer_order_number
        assert [t.kind for t in outbox.timers().open()] == ["T2"]  # the new T1 ended with its AA
    first, second = mllp_fault.control_ids
    assert first == row.payload["control_id"] and second == again.payload["control_id"]
    placers = {f.split(b"\rORC|")[1].split(b"|")[1] for f in mllp_fault.frames}
    assert len(placers) == 1


def test_cli_refuses_an_order_the_charset_cannot_carry_and_stores_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], store: StoreUnderTest
) -> None:
    """``rtplan review submit REVIEW.json --out DIR`` with the Latin-1 ``swfb-ris`` profile and a
    Japanese finding: exit 2, one line naming the field and the character, nothing stored."""
    from adapter.cli import main

    out = tmp_path / "out"
    settings = settings_for(tmp_path, receiver="swfb-ris")
    uid = ingested(tmp_path, settings, out)
    config = tmp_path / "rtplan.yaml"
    config.write_text(f"hl7: {{receiver: swfb-ris}}\noutbox: {{path: {tmp_path / 'o.sqlite'}}}\n")
    data = review_for(uid, "REV-CLI-JP")
    data["findings"] = [{**data["findings"][0], "description": "肝臓に病変"}]
    review = tmp_path / "review.json"
    review.write_text(json.dumps(data, ensure_ascii=False))
    with Outbox(store.at(tmp_path / "o.sqlite")) as outbox:
        before = outbox.counts()
    written = sorted((out / "fhir").iterdir())
    capsys.readouterr()
    code = main(["--config", str(config), "review", "submit", str(review), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "NTE-3" in err[0] and "U+809D CJK UNIFIED IDEOGRAPH-809D" in err[0]
    assert "肝" not in err[0]
    with Outbox(store.at(tmp_path / "o.sqlite")) as outbox:
        assert outbox.counts() == before and outbox.timers().open() == []
    assert sorted((out / "fhir").iterdir()) == written
    assert not (out / "hl7").exists()


@pytest.mark.parametrize("code", ["AE", "AR", "AA"])
def test_enhanced_application_ack_rejection_ends_t1(
    code: str, tmp_path: Path, store: StoreUnderTest
) -> None:
    """Enhanced mode: the RIS's application ACK arrives on our listener. AE/AR is one
    rejection escalation and ends T1; AA ends T1 and arms nothing else."""
    from adapter.hl7.model import OrderPatient, OrderRequest, PatientIdentifier
    from adapter.service.inbound import InboundHandler

    order = OrderRequest(
        "NW", "RTPAPP1", "RTPLAN", OrderPatient((PatientIdentifier("P1", "H"),), family="X"), "1.2"
    )
    with Outbox(store.at(tmp_path / "o.sqlite")) as outbox:
        enqueue_order(
            outbox,
            target="swfb-ris",
            key="study:1.2",
            label="o",
            payload={"profile": "swfb-ris", "order": order.to_json(), "control_id": "RTAPP0001"},
        )
        outbox.timers().arm("RTPAPP1", T1, 900)
        handler = InboundHandler(outbox, load_tables(ROOT / "mappings"), [], _trust())
        ack = (
            "MSH|^~\\&|RIS|RADIOLOGY|RTPLAN|ONCOLOGY|20260305101500||ACK^O19^ACK|RISACK1|P|2.5.1\r"
            f"MSA|{code}|RTAPP0001\r"
        ).encode()
        assert handler.handle(ack) is None  # an ACK is never acknowledged
        open_kinds = [t.kind for t in outbox.timers().open()]
        assert T1 not in open_kinds
        assert open_kinds == ([] if code == "AA" else [REJECTED])
        later = time.time() + 86400
    with Outbox(store.at(tmp_path / "o.sqlite"), clock=lambda: later) as outbox:
        fired = [t.kind for t in escalate_due(outbox, [], Metrics())]
        assert fired == ([] if code == "AA" else [REJECTED])


@pytest.mark.peer
def test_order_held_and_escalated_when_the_ehr_patient_disagrees(
    hapi: str, hl7_receiver: Any, tmp_path: Path, store: StoreUnderTest
) -> None:
    """The EHR corrected the patient's birth date after the scan: the order is stored but held
    (nothing reaches the RIS), escalated on the radiology Task, and sent once an analyst
    retries it."""
    settings = settings_for(tmp_path, mllp=True, host="127.0.0.1", port=hl7_receiver.port)
    settings = replace(
        settings, fhir=FhirSettings(base_url=hapi, create_patient=True, initial_wait=0.05)
    )
    uid = ingested(tmp_path, settings, None)
    with Outbox(store.at(tmp_path / "o.sqlite")) as outbox:
        subject = outbox.rows_for_key(f"study:{uid}")[0].payload["entry"]
    patient = next(e["resource"] for e in subject if e["resource"]["resourceType"] == "Patient")
    ident = patient["identifier"][0]
    found = httpx.get(
        f"{hapi}/Patient", params={"identifier": f"{ident['system']}|{ident['value']}"}, timeout=30
    ).json()["entry"][0]["resource"]
    found["birthDate"] = "1958-05-17"
    assert httpx.put(f"{hapi}/Patient/{found['id']}", json=found, timeout=30).status_code == 200

    result = asyncio.run(submit_review_async(review_for(uid, "REV-HOLD"), settings))
    placer = result.placer_order_number
    assert hl7_receiver.control_ids == []  # nothing sent to the RIS
    (order_id,) = result.hl7_rows
    metrics = Metrics()
    with Outbox(store.at(tmp_path / "o.sqlite")) as outbox:
        assert outbox.get(order_id).state is State.PENDING
        (hold,) = outbox.holds()
        assert hold.reason == "the EHR's patient birth date do not match the DICOM headers"
        assert [t.kind for t in outbox.timers().open()] == ["identity"]  # no T1 for a held order
        assert [t.kind for t in escalate_due(outbox, targets(settings, None), metrics)] == [
            "identity"
        ]
        asyncio.run(deliver(outbox, settings))
    task = httpx.get(
        f"{hapi}/Task", params={"identifier": f"urn:rtplan:radiology-task|{placer}"}, timeout=30
    ).json()["entry"][0]["resource"]
    assert task["businessStatus"]["text"].startswith("escalated: order held, not sent")
    assert (
        "birth date" in task["businessStatus"]["text"]
        and "1958" not in task["businessStatus"]["text"]
    )
    # An analyst checked the identity and releases the order.
    config = tmp_path / "rtplan.yaml"
    config.write_text(
        f"fhir: {{base_url: '{hapi}'}}\noutbox: {{path: {tmp_path / 'o.sqlite'}}}\n"
        f"hl7: {{mllp: true, host: 127.0.0.1, port: {hl7_receiver.port}}}\n"
    )
    from adapter.cli import main

    assert main(["--config", str(config), "outbox", "retry", str(order_id)]) == 0
    assert hl7_receiver.wait_for(1)


@pytest.mark.parametrize("updates", ["change", "cancel-replace"])
def test_amendment_of_urgency_or_text_updates_the_order(
    updates: str, tmp_path: Path, store: StoreUnderTest
) -> None:
    """Version 2 of a review raises the urgency and corrects a finding's text: the RIS gets an
    order change (ORC-1 XO), or with ``updates: cancel-replace`` a cancel of the order as sent
    (its priority, ORC-16) and a new order under ``<placer>-2``. An unchanged resubmission
    sends nothing more."""
    import hl7

    folder = copy_with(tmp_path, {"unencodable: error": f"unencodable: error\nupdates: {updates}"})
    out = tmp_path / "out"
    settings = settings_for(tmp_path, receivers_dir=str(folder))
    uid = ingested(tmp_path, settings, out)
    first = review_for(uid, "REV-AMEND")
    placer = asyncio.run(submit_review_async(first, settings, out_dir=out)).placer_order_number
    assert placer
    # An identical resubmission is a no-op (issue 9): it sends nothing more.
    asyncio.run(submit_review_async(first, settings, out_dir=out))
    # The RIS accepted the order under its own number (ORR^O02, ORC-3).
    from adapter.service.inbound import InboundHandler

    with Outbox(store.at(tmp_path / "o.sqlite")) as outbox:
        handler = InboundHandler(outbox, load_tables(ROOT / "mappings"), [], _trust())
        orr = (
            "MSH|^~\\&|RIS|RADIOLOGY|RTPLAN|ONCOLOGY|20260305101500||ORR^O02^ORR_O02|ORR1|P|2.3.1\r"
            f"MSA|AA|X\rORC|OK|{placer}^RTPLAN|F123^RIS\r"
        )
        assert b"MSA|AA|ORR1" in handler.handle(orr.encode())
    second = {**first, "version": 2}
    second["findings"] = [
        {**first["findings"][0], "urgency": "stat", "description": "Three hypodense lesions."},
        first["findings"][1],
    ]
    asyncio.run(submit_review_async(second, settings, out_dir=out))
    # the radiology orders only (the review note's MDM/ORU files sit beside them)
    names = sorted(p.name for p in (out / "hl7").glob("Order-*.hl7"))

    def read(name: str) -> hl7.Message:
        return hl7.parse((out / "hl7" / name).read_bytes().decode("utf-8"))

    if updates == "change":
        assert names == [f"Order-{placer}-NW.hl7", f"Order-{placer}-XO.hl7"]
        change = read(f"Order-{placer}-XO.hl7")
        assert (
            str(change.segment("ORC")(1)) == "XO" and str(change.segment("ORC")(2)(1)(1)) == placer
        )
        assert str(change.segment("ORC")(7)(1)(6)) == "S"  # stat
        assert "Three hypodense lesions." in str(change.segment("NTE")(3))
        assert str(change.segment("ORC")(16)(1)(2)) == "Amended by the oncologist"
        assert str(change.segment("ORC")(3)) == "F123"
    else:
        assert names == [
            f"Order-{placer}-2-NW.hl7", f"Order-{placer}-CA.hl7", f"Order-{placer}-NW.hl7"
        ]  # fmt: skip
        cancel = read(f"Order-{placer}-CA.hl7")
        assert str(cancel.segment("ORC")(2)(1)(1)) == placer
        assert str(cancel.segment("ORC")(7)(1)(6)) == "A"  # the priority it was sent with
        assert str(cancel.segment("ORC")(16)(1)(2)) == "Replaced by an amended order"
        assert str(cancel.segment("ORC")(3)) == "F123"
        new = read(f"Order-{placer}-2-NW.hl7")
        assert str(new.segment("ORC")(2)(1)(1)) == f"{placer}-2"
        assert str(new.segment("ORC")(7)(1)(6)) == "S"


def _trust() -> TrustPolicy:
    """The shipped receiver profiles' allow-list, as ``rtplan serve`` builds it (issue 14)."""
    return TrustPolicy(load_profiles(ROOT / "mappings" / "receivers").values(), {})
