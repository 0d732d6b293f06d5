"""Issue 8: the workflow learns facts from the store's typed records, never from stored payloads.

- The study record (patient, accession, classification and evidence, the review Task) and the
  order record (placer number, receiver, transmissions, ACK) are written in the transaction
  that stores the rows they cause: a failure between them leaves neither.
- Once stored, the payloads can say anything: a review and its HL7 order still carry the
  recorded patient and accession, and an inbound result still finds its order. (Each check
  below fails if the workflow goes back to reading the stored Bundle or HL7 payload.)
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from adapter.cli import main
from adapter.config import Settings
from adapter.hl7.order_payload import OrderPayload
from adapter.jobs.deliver import targets
from adapter.service.inbound import InboundHandler
from adapter.service.serve import trust_policy
from adapter.store.db import open_database
from adapter.store.identity import HeldRow, IngestedStudy
from adapter.store.orders import QueuedOrder
from adapter.store.outbox import NewRow, Outbox
from adapter.store.studies import StudyRecord
from adapter.tables import load_tables
from tests.store_backend import StoreUnderTest
from tests.support import FIXTURES, synth, tx

pytestmark = pytest.mark.store  # every test here reaches the store: both backends

MRN = "HOSP-MRN"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def review_file(tmp: Path, name: str, study_uid: str, review_id: str) -> Path:
    data = json.loads((FIXTURES / "reviews" / name).read_text())
    path = tmp / f"{review_id}.json"
    path.write_text(json.dumps({**data, "study_instance_uid": study_uid, "review_id": review_id}))
    return path


def record(uid: str = "1.2.3", **facts: Any) -> StudyRecord:
    return StudyRecord(uid, "PID-1", MRN, "Doe^Jane", "1960-01-02", "F", "ACC-1", "RP1", "SPS1",
                       **facts)  # fmt: skip


def test_a_study_record_and_its_rows_are_stored_together_or_not_at_all(
    tmp_path: Path, store: StoreUnderTest
) -> None:
    with Outbox(store.at(tmp_path / "outbox.sqlite")) as outbox:
        # NaN is not JSON: the row cannot be stored, so the record must not be either.
        bad = HeldRow("files", "out", "study:1.2.3", "fhir-transaction", "x", tx(n=float("nan")))
        with pytest.raises(ValueError):
            outbox.record_ingest([IngestedStudy(record(), "mapped", (bad,))])
        assert outbox.study("1.2.3") is None
        assert outbox.rows() == []
        good = HeldRow("files", "out", "study:1.2.3", "fhir-transaction", "x", tx(n=1))
        facts = record(classification="planning", patient_system="urn:mrn", modality="CT")
        outbox.record_ingest([IngestedStudy(facts, "mapped", (good,))])
        stored = outbox.study("1.2.3")
        assert stored is not None and stored.classification == "planning"
        assert stored.modality == "CT" and len(outbox.rows()) == 1


def test_an_order_record_and_its_hl7_row_are_stored_together_or_not_at_all(
    tmp_path: Path, store: StoreUnderTest,
) -> None:
    queued = QueuedOrder("P1", "1.2.3", "P1", "default-ris", "NW", "RTX1", {"priority": "urgent"})
    payload = OrderPayload("default-ris", {"placer_order_number": "P1", "control": "NW"})
    row = NewRow("hl7", "default-ris", "study:1.2.3", "hl7-order", "Order-P1-NW", payload.to_json())
    with Outbox(store.at(tmp_path / "outbox.sqlite")) as outbox:
        with pytest.raises(RuntimeError), outbox.batch() as batch:
            batch.record_order(batch.enqueue(row), queued)
            raise RuntimeError("crash between the order and the rest of the review")
        assert outbox.order("P1") is None and outbox.rows() == []
        with outbox.batch() as batch:
            row_id = batch.enqueue(row)
            batch.record_order(row_id, queued)
        order = outbox.order("P1")
        assert order is not None and order.state == "queued" and order.receiver == "default-ris"
        assert [t.control_id for t in order.transmissions] == ["RTX1"]
        assert outbox.order_by_control_id("RTX1") == order
        # The delivery's result (the ACK) reaches the record in the same transaction.
        outbox.claim(1)
        outbox.mark_delivered(row_id, {"control_id": "RTX1", "ack": "AA", "error_code": ""})
        order = outbox.order("P1")
        assert order is not None and order.state == "acknowledged"
        assert order.transmissions[0].ack_code == "AA" and order.transmissions[0].ack_at


@pytest.mark.sqlite_only(reason="a store from before the records is a SQLite file")
def test_a_studies_table_written_before_the_facts_gains_their_columns(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TABLE studies (study_uid TEXT PRIMARY KEY, patient_id TEXT NOT NULL, "
        "patient_issuer TEXT NOT NULL, patient_name TEXT NOT NULL, birth_date TEXT NOT NULL, "
        "sex TEXT NOT NULL, accession TEXT NOT NULL, requested_procedure_id TEXT NOT NULL, "
        "scheduled_step_id TEXT NOT NULL, recorded_at REAL NOT NULL, updated_at REAL NOT NULL)"
    )
    db.execute(
        "INSERT INTO studies VALUES ('1.2.3', 'PID-1', 'HOSP-MRN', 'Doe^Jane', '1960-01-02', "
        "'F', 'ACC-1', 'RP1', 'SPS1', 0, 0)"
    )
    db.commit()
    db.close()
    with Outbox(path) as outbox:
        old = outbox.study("1.2.3")
        assert old == record()  # the facts read as "not known"
        assert StudyRecord.from_json(json.loads(json.dumps(old.to_json()))) == old


def _ingest_and_review(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[Path, str, str]:
    folder, out = tmp_path / "in", tmp_path / "out"
    synth.planning_ct(folder, seed="facts", slices=2, patient_id="PID-facts", issuer=MRN)
    uid = synth.uid_for("facts", "/study")
    assert run(capsys, "ingest", str(folder), "--out", str(out))[0] == 0
    return out, uid, str(out / "outbox.sqlite")


def _tamper(location: Path | str, where: str) -> int:
    """Rewrite the stored payloads (as a corrupted or hand-edited row would be)."""
    db = open_database(location)
    raws = db.execute(f"SELECT id, payload FROM outbox WHERE {where}").fetchall()
    for row_id, text in raws:
        text = text.replace("PID-facts", "PID-WRONG").replace("urn:oid:", "urn:oid:9.")
        db.execute("UPDATE outbox SET payload=? WHERE id=?", (text, row_id))
    db.close()
    return len(raws)


def test_a_review_and_its_order_carry_the_recorded_patient_not_the_stored_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], store: StoreUnderTest
) -> None:
    out, uid, path = _ingest_and_review(tmp_path, capsys)
    with Outbox(store.at(Path(path))) as outbox:
        stored = outbox.study(uid)
        assert stored is not None and stored.classification == "planning" and stored.evidence
        assert stored.review_task_key.endswith(f"review:{uid}") and stored.review_task
    # The ingest Bundle as stored no longer names the patient or the study correctly.
    assert _tamper(store.at(Path(path)), "kind='fhir-transaction'") >= 1
    code, stdout = run(
        capsys, "review", "submit", str(review_file(tmp_path, "concern.json", uid, "R-facts")),
        "--out", str(out), "--json",
    )  # fmt: skip
    assert code == 0, stdout
    bundle = json.loads(next((out / "fhir").glob("Review-*.json")).read_text())
    text = json.dumps(bundle)
    assert "PID-WRONG" not in text and "PID-facts" in text
    (hl7,) = (out / "hl7").glob("Order-*.hl7")
    message = hl7.read_bytes().decode("latin-1")
    pid = next(s for s in message.split("\r") if s.startswith("PID|"))
    assert "PID-facts" in pid and "PID-WRONG" not in message
    assert f"{uid}" in message and f"9.{uid}" not in message


def test_an_inbound_result_finds_its_order_by_the_record_not_the_payload(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], store: StoreUnderTest
) -> None:
    out, uid, path = _ingest_and_review(tmp_path, capsys)
    code, _ = run(
        capsys, "review", "submit", str(review_file(tmp_path, "concern.json", uid, "R-in")),
        "--out", str(out),
    )  # fmt: skip
    assert code == 0
    with Outbox(store.at(Path(path))) as outbox:
        (order,) = outbox.orders_for_study(uid)
        placer = order.placer
    # The HL7 row's payload loses its order: a workflow reading it could not match the result.
    db = open_database(store.at(Path(path)))
    db.execute("UPDATE outbox SET payload=? WHERE destination='hl7'", (json.dumps({"x": 1}),))
    db.close()
    oru = (
        "MSH|^~\\&|RIS|RADIOLOGY|RTPLAN|ONCOLOGY|20260305101500+0000||ORU^R01^ORU_R01|ORU1|P|"
        "2.5.1\r"
        f"PID|||PID-facts^^^{MRN}^MR\r"
        f"ORC|RE|{placer}^RTPLAN|F1^RIS||CM\r"
        f"OBR|1|{placer}^RTPLAN|F1^RIS|RTPLANREVIEW^Radiologist review^L|||"
        "20260305100000+0000" + "|" * 18 + "F\r"
        "OBX|1|TX|18748-4^Diagnostic imaging study^LN||Benign cysts only.||||||F\r"
    )
    settings = Settings()
    with Outbox(store.at(Path(path)), check_same_thread=False) as outbox:
        handler = InboundHandler(
            outbox,
            load_tables(settings.mappings_dir),
            targets(settings, out),
            trust_policy(settings),
        )
        reply = asyncio.run(handler(oru.encode()))
        assert reply is not None and b"MSA|AA|" in reply
        order_now = outbox.order(placer)
        assert order_now is not None and order_now.state == "resulted"
        assert order_now.filler == "F1"
        results = [r for r in outbox.rows_for_key(f"study:{uid}") if "RadiologyResult" in r.label]
        assert results and all(r.key == f"study:{uid}" for r in results)


def _as_before_issue_8(path: str) -> None:
    """Turn a store into one written before the records (schema version 4): no fact columns,
    no order tables."""
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE old_studies AS SELECT study_uid, patient_id, patient_issuer, patient_name,
            birth_date, sex, accession, requested_procedure_id, scheduled_step_id, recorded_at,
            updated_at FROM studies;
        DROP TABLE studies;
        ALTER TABLE old_studies RENAME TO studies;
        DROP TABLE orders;
        DROP TABLE order_transmissions;
        DROP TABLE study_rows;
        DELETE FROM schema_version WHERE version >= 5;
        """
    )
    db.commit()
    db.close()


@pytest.mark.sqlite_only(reason="a store from before the records is a SQLite file")
def test_a_store_written_before_the_records_is_filled_once_on_opening(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, uid, path = _ingest_and_review(tmp_path, capsys)
    code, _ = run(
        capsys, "review", "submit", str(review_file(tmp_path, "concern.json", uid, "R-old")),
        "--out", str(out),
    )  # fmt: skip
    assert code == 0
    with Outbox(Path(path)) as outbox:
        before_study, (before_order,) = outbox.study(uid), outbox.orders_for_study(uid)
    _as_before_issue_8(path)
    with Outbox(Path(path)) as outbox:
        study = outbox.study(uid)
        assert study is not None and before_study is not None
        assert study.patient_system == before_study.patient_system
        assert study.review_task_key == before_study.review_task_key
        assert study.modality == "CT" and study.classification == ""  # not in the old Bundle
        (order,) = outbox.orders_for_study(uid)
        assert order.placer == before_order.placer and order.receiver == before_order.receiver
        assert order.state == "sent" and order.last_order == before_order.last_order
        assert [t.control_id for t in order.transmissions] == [
            t.control_id for t in before_order.transmissions
        ]
    # A later open has nothing more to do, and an amendment still finds the order it changes.
    code, stdout = run(
        capsys, "review", "submit",
        str(review_file(tmp_path, "concern-amended.json", uid, "R-old")),
        "--out", str(out), "--json",
    )  # fmt: skip
    assert code == 0, stdout
    with Outbox(Path(path)) as outbox:
        kinds = [r.kind for r in outbox.rows_for_key(f"study:{uid}") if r.destination == "hl7"]
    assert "hl7-change" in kinds or kinds.count("hl7-order") == 2
