"""Issue 8: the review note learns its header and its history from the store's records.

- The header (the patient's names, birth date and sex, the study's start, description and
  modalities) comes from the study record written at ingest; the MDM's PID too.
- The version a new one replaces (its DocumentReference, rewritten ``superseded``) comes from
  the note version records, and what each MDM/ORU receiver already has from the note message
  records (event, document number, MSH-10).

Each test rewrites the stored payloads after they were stored (as a corrupted or hand-edited
row would be) and shows the note is the one an untouched store gives: it fails if the note goes
back to reading a stored Bundle or HL7 payload. Both backends (``cli_store``).
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from adapter.cli import main
from adapter.store.db import open_database
from adapter.store.outbox import Outbox
from tests.peers.postgres_fixture import CliStore
from tests.support import FIXTURES, synth

NAME = "LOVELACE^ADA^AUGUSTA"
WRONG = {
    "LOVELACE": "WRONGNAME",
    "ADA": "WRONGGIVEN",
    "1961-": "1901-",
    "RT PLANNING CT PELVIS": "WRONG DESCRIPTION",
    '"female"': '"male"',
    "2026-": "1999-",
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def review_file(tmp: Path, name: str, study_uid: str, review_id: str) -> Path:
    data = json.loads((FIXTURES / "reviews" / name).read_text())
    path = tmp / f"{review_id}-{name}"
    path.write_text(json.dumps({**data, "study_instance_uid": study_uid, "review_id": review_id}))
    return path


def tamper(location: Path | str, kinds: tuple[str, ...], changes: dict[str, str]) -> int:
    """Rewrite the stored payloads of ``kinds`` (plain text replacements); return how many."""
    db = open_database(location)
    try:
        with db.write():
            marks = ", ".join("?" * len(kinds))
            raws = db.execute(
                f"SELECT id, payload FROM outbox WHERE kind IN ({marks})", kinds
            ).fetchall()
            for row_id, text in raws:
                for old, new in changes.items():
                    text = text.replace(old, new)
                db.execute("UPDATE outbox SET payload=? WHERE id=?", (text, row_id))
        return len(raws)
    finally:
        db.close()


def ingest(tmp: Path, capsys: pytest.CaptureFixture[str], name: str) -> tuple[Path, str]:
    folder, out = tmp / name / "in", tmp / name / "out"
    synth.planning_ct(
        folder, seed="note-records", slices=2, patient_name=NAME, patient_id="PID-NOTE",
        issuer="HOSP-MRN", birth_date="19611210", sex="F",
    )  # fmt: skip
    code, stdout = run(capsys, "ingest", str(folder), "--out", str(out))
    assert code == 0, stdout
    return out, synth.uid_for("note-records", "/study")


def submit(
    tmp: Path, capsys: pytest.CaptureFixture[str], out: Path, uid: str, fixture: str
) -> None:
    path = review_file(tmp, fixture, uid, "R-NOTE")
    code, stdout = run(capsys, "review", "submit", str(path), "--out", str(out), "--json")
    assert code == 0, stdout


def note_text(out: Path, version: int) -> str:
    """The text note of ``version`` in its DocumentReference as written to the output folder."""
    (path,) = (out / "fhir").glob(f"Note-*-v{version}.json")
    bundle = json.loads(path.read_text())
    current = [
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "DocumentReference"
        and e["resource"]["status"] == "current"
    ]
    (reference,) = current
    text = reference["content"][0]["attachment"]
    assert text["contentType"].startswith("text/plain")
    return base64.b64decode(text["data"]).decode("utf-8")


def note_bundle(out: Path, version: int) -> dict[str, Any]:
    (path,) = (out / "fhir").glob(f"Note-*-v{version}.json")
    return dict(json.loads(path.read_text()))


def messages(out: Path, version: int) -> dict[str, str]:
    """The note's HL7 messages of ``version``, by event: their PID and OBX segments (the
    others carry the time of sending and the random MSH-10)."""
    found = {}
    for path in sorted((out / "hl7").glob(f"Note-*-v{version}-*.hl7")):
        segments = path.read_bytes().decode("latin-1").split("\r")
        event = path.stem.rsplit("-", 1)[-1]
        body = "\r".join(s for s in segments if s.startswith(("PID|", "OBX|")))
        found[f"{event}:{len(found)}"] = body
    return found


def pid(message: str) -> str:
    return next(s for s in message.split("\r") if s.startswith("PID|"))


@pytest.fixture
def create_patient(monkeypatch: pytest.MonkeyPatch) -> None:
    # The note prints the names and birth date when the adapter writes the Patient.
    monkeypatch.setenv("RTPLAN_FHIR__CREATE_PATIENT", "true")


@pytest.mark.usefixtures("create_patient")
def test_the_note_header_comes_from_the_study_record_not_the_stored_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_store: CliStore
) -> None:
    # The reference: an untouched store of its own, then the same study in the test's store
    # with its ingest Bundle rewritten before the review.
    with pytest.MonkeyPatch.context() as mp:
        cli_store.store.point_cli(mp, tmp_path / "clean" / "out" / "outbox.sqlite")
        clean_out, uid = ingest(tmp_path, capsys, "clean")
        submit(tmp_path, capsys, clean_out, uid, "concern.json")
    out, same_uid = ingest(tmp_path, capsys, "tampered")
    assert same_uid == uid
    location = cli_store.location(out / "outbox.sqlite")
    assert tamper(location, ("fhir-transaction",), WRONG) >= 1
    submit(tmp_path, capsys, out, uid, "concern.json")

    text = note_text(out, 1)
    assert "Name: ADA AUGUSTA LOVELACE" in text and "Date of birth: 1961-12-10" in text
    flat = " ".join(text.split())  # the note wraps long lines
    assert "RT PLANNING CT PELVIS" in flat and "Acquired: 2026-" in text
    assert "WRONG" not in text and "1901-" not in text and "1999-" not in text
    assert text == note_text(clean_out, 1)
    mdm = messages(out, 1)
    assert mdm and mdm.keys() == messages(clean_out, 1).keys()
    for event, message in mdm.items():
        assert "LOVELACE^ADA AUGUSTA" in pid(message) and "|19611210|F" in pid(message), event
        assert message == messages(clean_out, 1)[event]


@pytest.mark.usefixtures("create_patient")
def test_the_previous_version_and_the_mdm_history_come_from_the_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_store: CliStore
) -> None:
    out, uid = ingest(tmp_path, capsys, "history")
    submit(tmp_path, capsys, out, uid, "concern.json")
    first = note_bundle(out, 1)
    (v1,) = [
        e["resource"]
        for e in first["entry"]
        if e["resource"]["resourceType"] == "DocumentReference"
    ]
    location = cli_store.location(out / "outbox.sqlite")
    # The stored note and review Bundles no longer name the review, and the stored MDM rows
    # name another review and event: reading them, v2 would replace nothing and send a T02.
    assert (
        tamper(
            location,
            ("fhir-note-transaction", "fhir-review-transaction"),
            {"R-NOTE": "R-OTHER", v1["masterIdentifier"]["value"]: "RN0000000000000000V1"},
        )
        >= 1
    )
    assert tamper(location, ("hl7-document",), {"R-NOTE": "R-OTHER", '"T02"': '"T10"'}) >= 1
    submit(tmp_path, capsys, out, uid, "concern-amended.json")

    second = note_bundle(out, 2)
    superseded, current = (e["resource"] for e in second["entry"])
    number = v1["masterIdentifier"]["value"]
    assert superseded["masterIdentifier"]["value"] == number
    # The version as written (the narrative is generated again for the new status).
    expected = {k: v for k, v in v1.items() if k not in ("id", "meta", "text")}
    assert {**superseded, "text": None} == {**expected, "status": "superseded", "text": None}
    target = f"DocumentReference?identifier=urn:rtplan:review-note|{number}"
    assert current["relatesTo"] == [{"code": "replaces", "target": {"reference": target}}]
    events = sorted(key.split(":")[0] for key in messages(out, 2))
    assert "T10" in events and "T02" not in events, events  # an amendment of the document
    with Outbox(location) as outbox:
        notes = outbox.notes()
        v1_record, v2_record = notes.versions("R-NOTE")
        assert (v1_record.superseded_by, v2_record.replaces) == (v2_record.document_number, number)
        assert (v1_record.state, v2_record.state) == ("final", "amended")
        sent = notes.messages("R-NOTE")
        assert [m.event for m in sent if m.version == 1 and m.receiver == "document-mdm"] == ["T02"]
        assert all(m.control_id for m in sent)


def _as_before_the_note_records(location: Path | str) -> None:
    """Turn a store into one written before migration 6: no header columns, no note tables."""
    db = open_database(location)
    try:
        with db.write():
            for column in ("study_started", "study_description", "study_modalities"):
                db.execute(f"ALTER TABLE studies DROP COLUMN {column}")
            db.execute("DROP TABLE note_versions")
            db.execute("DROP TABLE note_messages")
            db.execute("DELETE FROM schema_version WHERE version >= 6")
    finally:
        db.close()


@pytest.mark.usefixtures("create_patient")
def test_a_store_written_before_the_note_records_is_filled_once_on_opening(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_store: CliStore
) -> None:
    out, uid = ingest(tmp_path, capsys, "old")
    submit(tmp_path, capsys, out, uid, "concern.json")
    submit(tmp_path, capsys, out, uid, "concern-amended.json")
    location = cli_store.location(out / "outbox.sqlite")
    with Outbox(location) as outbox:
        study, versions = outbox.study(uid), outbox.notes().versions("R-NOTE")
        sent = outbox.notes().messages("R-NOTE")
    assert study is not None and study.study_modalities and len(versions) == 2 and sent
    _as_before_the_note_records(location)
    with Outbox(location) as outbox:
        assert outbox.study(uid) == study
        filled = outbox.notes().versions("R-NOTE")
        # What the old rows show of the outputs: the note's own FHIR row, so both FHIR outputs.
        assert [v.outputs for v in filled] == [("diagnostic-report", "document-reference")] * 2
        assert [replace(v, outputs=()) for v in filled] == [
            replace(v, outputs=()) for v in versions
        ]
        assert outbox.notes().messages("R-NOTE") == sent
    # Opening it again has nothing more to do, and a third version still replaces the second.
    submit(tmp_path, capsys, out, uid, "concern-withdrawn.json")
    third = note_bundle(out, 3)
    superseded = third["entry"][0]["resource"]
    assert superseded["status"] == "superseded"
    assert superseded["masterIdentifier"]["value"] == versions[1].document_number
