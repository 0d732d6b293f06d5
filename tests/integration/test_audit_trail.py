"""The audit trail (issue 13, reliability row 36): every event of an end-to-end run has its
record, counted against the peers' own records (the FHIR server's version history, the RIS
peer's received messages), and the trail is append-only and hash-chained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread

from adapter.cli import main
from adapter.store.db import open_database
from adapter.store.outbox import Outbox, State
from tests.peers.fhir_validator_fixture import Validate
from tests.peers.hl7_receiver import Hl7Receiver
from tests.store_backend import StoreUnderTest
from tests.support import FIXTURES, make_study, read_study, synth

pytestmark = pytest.mark.store  # every test here reaches the store: both backends


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def review_file(tmp: Path, study_uid: str, review_id: str) -> Path:
    data = json.loads((FIXTURES / "reviews" / "concern.json").read_text())
    path = tmp / f"{review_id}.json"
    path.write_text(json.dumps({**data, "study_instance_uid": study_uid, "review_id": review_id}))
    return path


def versions(base: str, study_uid: str) -> int:
    resource_id = read_study(base, study_uid)["id"]
    history = httpx.get(f"{base}/ImagingStudy/{resource_id}/_history", timeout=30).json()
    return len(history.get("entry", []))


def test_every_event_is_audited_and_matches_the_peers(
    fhir_url: str,
    hl7_receiver: Hl7Receiver,
    hl7_receiver_factory: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    store: StoreUnderTest,
) -> None:
    db = tmp_path / "outbox.sqlite"
    for key, value in {
        "RTPLAN_FHIR__CREATE_PATIENT": "true",
        "RTPLAN_FHIR__INITIAL_WAIT": "0.05",
        "RTPLAN_OUTBOX__PATH": str(db),
        "RTPLAN_INGEST__WORKERS": "1",
        "RTPLAN_HL7__MLLP": "true",
        "RTPLAN_HL7__HOST": "127.0.0.1",
    }.items():
        monkeypatch.setenv(key, value)
    accepted, accepted_uid = make_study(tmp_path / "a")
    rejected, rejected_uid = make_study(tmp_path / "b")
    assert run(capsys, "ingest", str(accepted), str(rejected), "--fhir-url", fhir_url)[0] == 0
    # One concern goes to a RIS that accepts (AA), the other to one that rejects (AE).
    monkeypatch.setenv("RTPLAN_HL7__PORT", str(hl7_receiver.port))
    path = review_file(tmp_path, accepted_uid, "REV-AUDIT-1")
    assert run(capsys, "review", "submit", str(path), "--fhir-url", fhir_url)[0] == 0
    nacking = hl7_receiver_factory(ack_code="AE")
    monkeypatch.setenv("RTPLAN_HL7__PORT", str(nacking.port))
    path = review_file(tmp_path, rejected_uid, "REV-AUDIT-2")
    assert run(capsys, "review", "submit", str(path), "--fhir-url", fhir_url)[0] == 1

    with Outbox(store.at(db)) as outbox:
        records = outbox.audit_records()
        rows = outbox.rows()
        assert outbox.verify_audit() is None

    def count(event: str, outcome: str | None = None, study: str | None = None) -> int:
        return sum(
            1
            for r in records
            if r.event == event
            and (outcome is None or r.outcome == outcome)
            and (study is None or r.study_uid == study)
        )

    # The store's own rows: each queued once, each finished row has its one terminal record.
    assert count("queued") == len(rows)
    terminal = {"fhir-write", "file-write", "order-sent", "order-cancel-sent"}
    finished = [r for r in rows if r.state in (State.DELIVERED, State.DEAD)]
    assert len(finished) == len(rows)
    for row in finished:
        mine = [r for r in records if r.row_id == row.id and r.event in terminal]
        assert len(mine) == 1, (row.kind, row.label, mine)
    # Each study's ingest, with its outcome.
    assert count("ingest", "mapped", accepted_uid) == count("ingest", "mapped", rejected_uid) == 1
    # Against the FHIR server: one successful ImagingStudy write per version it holds.
    for uid in (accepted_uid, rejected_uid):
        study_writes = [
            r
            for r in records
            if r.event == "fhir-write"
            and r.outcome == "success"
            and r.study_uid == uid
            and "ImagingStudy-" in r.detail
        ]
        assert len(study_writes) == versions(fhir_url, uid) == 1
    # Against the RIS peers: one "ACK AA" per order the accepting peer received, one
    # "NACK AE" per order the rejecting one received.
    assert count("order-sent", "ACK AA", accepted_uid) == len(hl7_receiver.control_ids) == 1
    assert count("order-sent", "NACK AE", rejected_uid) == len(nacking.control_ids) == 1

    # The operator's view of one study tells the story in order.
    code, stdout = run(capsys, "audit", "--study", accepted_uid)
    events = [line.split()[1] for line in stdout.splitlines()]
    assert code == 0
    assert events.index("ingest") < events.index("fhir-write") < events.index("order-sent")
    code, stdout = run(capsys, "audit", "--study", accepted_uid, "--json")
    lines = [json.loads(line) for line in stdout.splitlines()]
    assert {line["study_instance_uid"] for line in lines} == {accepted_uid}
    code, stdout = run(capsys, "audit", "--verify")
    assert code == 0 and f"audit trail intact: {len(records)} records" in stdout


def test_audit_records_are_append_only_and_tampering_is_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], store: StoreUnderTest
) -> None:
    out = tmp_path / "out"
    assert run(capsys, "ingest", str(FIXTURES / "dicom" / "planning-ct"), "--out", str(out))[0] == 0
    db = open_database(store.at(out / "outbox.sqlite"))
    for statement in ("UPDATE audit SET actor='someone else'", "DELETE FROM audit"):
        with pytest.raises(db.driver_errors, match="append-only"):
            db.execute(statement)
    assert run(capsys, "audit", "--verify", "--out", str(out))[0] == 0
    # Going around the database's triggers (dropping them) is still found by the hash chain.
    on_table = " ON audit" if store.postgresql else ""
    db.execute(f"DROP TRIGGER audit_no_update{on_table}")
    db.execute("UPDATE audit SET detail='rewritten' WHERE id=2")
    db.close()
    code, stdout = run(capsys, "audit", "--verify", "--out", str(out))
    assert code == 1 and "BROKEN at record 2" in stdout


def test_audit_events_are_valid_r4_balp_shaped(
    fhir_validate: Validate,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    store: StoreUnderTest,
) -> None:
    """One study's story as FHIR AuditEvents (ingest, writes, a concern's order, an identity
    hold and its resolution by a named operator), each valid R4 for HAPI's offline validator."""
    out = tmp_path / "out"
    folder = FIXTURES / "dicom" / "planning-ct"
    study_uid = synth.uid_for("planning-ct", "/study")
    assert run(capsys, "ingest", str(folder), "--out", str(out))[0] == 0
    path = review_file(tmp_path, study_uid, "REV-BALP-1")
    assert run(capsys, "review", "submit", str(path), "--out", str(out))[0] == 0
    moved = tmp_path / "moved"
    moved.mkdir()
    for dicom in sorted(folder.glob("*.dcm")):
        ds = dcmread(dicom)
        ds.PatientID = "SOMEONE-ELSE"
        ds.save_as(moved / dicom.name)
    assert run(capsys, "ingest", str(moved), "--out", str(out))[0] == 1
    with Outbox(store.at(out / "outbox.sqlite")) as outbox:
        (hold,) = outbox.identity_holds(open_only=True)
    resolve = ["identity", "resolve", str(hold.id), "--keep", "--by", "Dr Audit"]
    assert run(capsys, *resolve, "--reason", "scanner typo", "--out", str(out))[0] == 0

    code, stdout = run(capsys, "audit", "--study", study_uid, "--fhir", "--out", str(out))
    assert code == 0
    bundle = json.loads(stdout)
    events = [e["resource"] for e in bundle["entry"]]
    kinds = {e["outcomeDesc"].split(":")[0] for e in events}
    assert {"ingest", "queued", "file-write", "order-sent", "identity-hold"} <= kinds
    assert {"identity-resolve", "operator-command"} <= kinds
    results = fhir_validate([bundle, *events])
    problems = [
        (e.get("outcomeDesc"), r.errors)
        for e, r in zip([bundle, *events], results, strict=True)
        if not r.ok
    ]
    assert problems == []
    # The patient is an entity by identifier (the recorded one, never the held one) ...
    patients = [
        entity["what"]["identifier"]["value"]
        for e in events
        for entity in e.get("entity", [])
        if entity["role"]["code"] == "1"
    ]
    assert set(patients) == {"RTP0001"}
    # ... and the operator who resolved the hold is an agent of that event.
    (resolved,) = [e for e in events if e["outcomeDesc"].startswith("identity-resolve")]
    assert {"Dr Audit", "rtplan RT planning-scan adapter"} == {
        a["who"]["display"] for a in resolved["agent"]
    }
