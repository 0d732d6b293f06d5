"""The review note as its own outbox job (issue 11, adapter/review/note_job.py), on SQLite and
on PostgreSQL: the submission stores the version with one job row; the worker builds the note
(the DiagnosticReport again with presentedForm, the DocumentReference, MDM/ORU); versions keep
their order; a failed build is a visible, retryable dead job that never holds up the review's
own rows; ``GET /reviews/{id}`` shows each version's note state."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from adapter.cli import main
from adapter.config import NoteSettings, Settings, load_settings
from adapter.jobs.deliver import deliver
from adapter.jobs.review import submit_review_async
from adapter.review.note_job import KIND_NOTE_JOB, job_label
from adapter.store.outbox import Outbox, Row, State
from tests.api_support import TOKEN, api_settings, running_api
from tests.peers.fhir_validator_fixture import Validate
from tests.peers.postgres_fixture import CliStore
from tests.support import FIXTURES

AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLANNING = FIXTURES / "dicom" / "planning-ct"
KIND_REVIEW = "fhir-review-transaction"
KIND_NOTE = "fhir-note-transaction"
KIND_DOCUMENT = "hl7-document"


def study_uid() -> str:
    from pydicom import dcmread

    first = sorted(PLANNING.glob("*_CT_0001.dcm"))[0]
    return str(dcmread(first, stop_before_pixels=True).StudyInstanceUID)


def review(version: int = 1, **changes: Any) -> dict[str, Any]:
    data = json.loads((FIXTURES / "reviews" / "concern.json").read_text())
    notes = f"Version {version} of this review." if version > 1 else data["notes"]
    return {**data, "study_instance_uid": study_uid(), "review_id": "REV-NOTE-JOB",
            "version": version, "notes": notes, **changes}  # fmt: skip


@pytest.fixture
def ingested(tmp_path: Path, cli_store: CliStore, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "out"
    assert main(["ingest", str(PLANNING), "--out", str(out)]) == 0
    capsys.readouterr()
    return out


def settings_for(cli_store: CliStore, **note: str) -> Settings:
    env = {"RTPLAN_STORE__URL": cli_store.url} if cli_store.url else {}
    base = load_settings(None, env=env)
    return replace(base, note=NoteSettings(**note)) if note else base


def submit(settings: Settings, out: Path, data: dict[str, Any]) -> tuple[int, ...]:
    result = asyncio.run(
        submit_review_async(data, settings, out_dir=out, deliver=False, note_job=True)
    )
    return result.note_rows


def drain(settings: Settings, location: Path | str, out: Path) -> None:
    """Every open row delivered (the note jobs, then the rows they queue)."""
    with Outbox(location) as outbox:
        for _ in range(3):  # a job's rows are queued by the job: drain again for them
            asyncio.run(deliver(outbox, settings, out_dir=out))


def rows(location: Path | str, kind: str) -> list[Row]:
    with Outbox(location) as outbox:
        return outbox.rows_for_key(f"study:{study_uid()}", kind=kind)


def test_the_submission_stores_one_job_and_the_worker_builds_the_note_from_it(
    ingested: Path, cli_store: CliStore
) -> None:
    settings = settings_for(cli_store)
    location = cli_store.location(ingested / "outbox.sqlite")
    (job_id,) = submit(settings, ingested, review())
    # Before the job runs: the review's own rows and the job, no note rows, no PDF anywhere.
    (job,) = rows(location, KIND_NOTE_JOB)
    assert job.id == job_id and job.state is State.PENDING
    assert job.label == job_label("REV-NOTE-JOB", 1) and "REV-NOTE-JOB" not in job.label
    (review_row,) = rows(location, KIND_REVIEW)
    (report,) = [e["resource"] for e in review_row.payload["entry"]
                 if e["resource"]["resourceType"] == "DiagnosticReport"]  # fmt: skip
    assert "presentedForm" not in report
    assert rows(location, KIND_NOTE) == [] and rows(location, KIND_DOCUMENT) == []

    drain(settings, location, ingested)

    (job,) = rows(location, KIND_NOTE_JOB)
    assert job.state is State.DELIVERED and job.result is not None
    assert job.result["note"] == "built"
    (note,) = rows(location, KIND_NOTE)
    documents = rows(location, KIND_DOCUMENT)
    assert sorted(job.result["rows"]) == sorted([note.id, *(d.id for d in documents)])
    assert {d.payload["event"] for d in documents} == {"T02", "R01"}  # MDM and ORU
    assert all(r.state is State.DELIVERED for r in [note, *documents])
    # The note's transaction: the same DiagnosticReport, now with the note, then the
    # DocumentReference; the report otherwise exactly as the review row sent it.
    kinds = [e["resource"]["resourceType"] for e in note.payload["entry"]]
    assert kinds == ["DiagnosticReport", "DocumentReference"]
    written = json.loads((ingested / "fhir" / f"{note.label}.json").read_text())
    assert written == note.payload
    again = dict(note.payload["entry"][0]["resource"])
    forms = {f["contentType"] for f in again.pop("presentedForm")}
    assert forms == {"text/plain; charset=utf-8", "application/pdf"}
    assert {k: v for k, v in again.items() if k != "text"} == {
        k: v for k, v in report.items() if k != "text"
    }
    assert note.id > review_row.id  # on the same key: after the review's own Bundle


def test_versions_keep_their_order_and_an_overtaken_note_is_superseded(
    ingested: Path, cli_store: CliStore
) -> None:
    settings = settings_for(cli_store)
    location = cli_store.location(ingested / "outbox.sqlite")
    submit(settings, ingested, review(1))
    drain(settings, location, ingested)
    submit(settings, ingested, review(2))
    drain(settings, location, ingested)
    # Version 2 is built after version 1: its rows come after, the EHR gets an amendment.
    v1, v2 = rows(location, KIND_NOTE)
    assert v1.label.endswith("-v1") and v2.label.endswith("-v2") and v1.id < v2.id
    mdm = [
        d.payload for d in rows(location, KIND_DOCUMENT) if d.payload["profile"] == "document-mdm"
    ]
    assert [(p["version"], p["event"]) for p in mdm] == [(1, "T02"), (2, "T10")]
    (document,) = [e["resource"] for e in v2.payload["entry"]
                   if e["resource"]["resourceType"] == "DocumentReference"
                   and e["resource"]["status"] == "current"]  # fmt: skip
    assert document["relatesTo"][0]["code"] == "replaces"
    text = next(c["attachment"] for c in document["content"]
                if c["attachment"]["contentType"].startswith("text/plain"))  # fmt: skip
    import base64

    assert "Version 2 of this review." in base64.b64decode(text["data"]).decode()

    # Versions 3 and 4 accepted before any job runs: version 3's note is never sent after
    # version 4 was accepted; version 4's note is the one the EHR gets.
    submit(settings, ingested, review(3))
    submit(settings, ingested, review(4))
    drain(settings, location, ingested)
    jobs = {r.label: r for r in rows(location, KIND_NOTE_JOB)}
    assert jobs[job_label("REV-NOTE-JOB", 3)].result == {"note": "superseded", "by_version": 4}
    assert jobs[job_label("REV-NOTE-JOB", 4)].result["note"] == "built"  # type: ignore[index]
    assert [r.label[-3:] for r in rows(location, KIND_NOTE)] == ["-v1", "-v2", "-v4"]


def test_a_failed_build_is_visible_retryable_and_never_holds_up_the_review(
    ingested: Path, cli_store: CliStore
) -> None:
    # A real configuration fault: the MDM output points at the RIS's order profile.
    broken = settings_for(cli_store, outputs="diagnostic-report,mdm", mdm_receiver="default-ris")
    fixed = settings_for(cli_store, outputs="diagnostic-report,mdm")
    location = cli_store.location(ingested / "outbox.sqlite")
    (job_id,) = submit(broken, ingested, review(1))
    drain(broken, location, ingested)
    (job,) = rows(location, KIND_NOTE_JOB)
    assert job.id == job_id and job.state is State.DEAD
    assert job.last_error.startswith("note not built: config note.mdm_receiver:")
    # The review's own rows (its Bundle, the radiology order) went out regardless.
    assert all(r.state is State.DELIVERED for r in rows(location, KIND_REVIEW))
    assert all(r.state is State.DELIVERED for r in rows(location, "hl7-order"))
    assert rows(location, KIND_NOTE) == []

    # Retried once the cause is fixed: built, from exactly that version.
    with Outbox(location) as outbox:
        outbox.retry(job_id)
    drain(fixed, location, ingested)
    (job,) = rows(location, KIND_NOTE_JOB)
    assert job.state is State.DELIVERED and job.result is not None
    assert job.result["note"] == "built"
    (note,) = rows(location, KIND_NOTE)
    assert note.label.endswith("-v1")


def test_retrying_an_old_failed_note_after_a_newer_version_sends_nothing(
    ingested: Path, cli_store: CliStore
) -> None:
    broken = settings_for(cli_store, outputs="diagnostic-report,mdm", mdm_receiver="default-ris")
    fixed = settings_for(cli_store, outputs="diagnostic-report,mdm")
    location = cli_store.location(ingested / "outbox.sqlite")
    (old_job,) = submit(broken, ingested, review(1))
    drain(broken, location, ingested)
    submit(fixed, ingested, review(2))
    drain(fixed, location, ingested)
    with Outbox(location) as outbox:
        outbox.retry(old_job)
    drain(fixed, location, ingested)
    with Outbox(location) as outbox:
        assert outbox.get(old_job).result == {"note": "superseded", "by_version": 2}
    assert [r.label[-3:] for r in rows(location, KIND_NOTE)] == ["-v2"]
    mdm = [(d.payload["version"], d.payload["event"]) for d in rows(location, KIND_DOCUMENT)]
    assert mdm == [(2, "T02")]


def test_the_api_answers_202_and_get_shows_the_note_building_then_built_or_failed(
    tmp_path: Path, ingested: Path, cli_store: CliStore
) -> None:
    settings = api_settings(settings_for(cli_store), tmp_path)
    with running_api(settings, ingested) as api:
        answer = api.post("/reviews", json=review(1), headers=AUTH)
        assert answer.status_code == 202, answer.text
        (job_id,) = [i for i in answer.json()["rows"]
                     if i in {r.id for r in rows(cli_store.location(ingested / "outbox.sqlite"),
                                                 KIND_NOTE_JOB)}]  # fmt: skip
        notes = wait_for_note(api, "built")
        assert notes[0]["version"] == 1 and notes[0]["job"] == job_id
        assert {r["kind"] for r in notes[0]["rows"]} == {KIND_NOTE, KIND_DOCUMENT}
        state = api.get("/reviews/REV-NOTE-JOB", headers=AUTH).json()
        assert {r["kind"] for r in state["rows"]} == {KIND_REVIEW}

    broken = replace(settings, note=NoteSettings(outputs="diagnostic-report,mdm",
                                                 mdm_receiver="default-ris"))  # fmt: skip
    with running_api(broken, ingested) as api:
        assert api.post("/reviews", json=review(2), headers=AUTH).status_code == 202
        notes = wait_for_note(api, "failed", version=2)
        failed = notes[-1]
        assert failed["last_error"].startswith("note not built: config note.mdm_receiver:")
        assert failed["rows"] == []
        retried = api.post(f"/outbox/{failed['job']}/retry", headers=AUTH)
        assert retried.status_code == 200 and retried.json()["kind"] == KIND_NOTE_JOB
        with Outbox(cli_store.location(ingested / "outbox.sqlite")) as outbox:
            events = [e for _, e, _ in outbox.events(failed["job"])]
        assert "retry-requested" in events
        wait_for_note(api, "failed", version=2, attempts=2)  # the cause is still there


def wait_for_note(
    api: Any, state: str, *, version: int = 1, attempts: int = 1
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 180
    while True:
        notes: list[dict[str, Any]] = api.get("/reviews/REV-NOTE-JOB", headers=AUTH).json()["notes"]
        mine = [n for n in notes if n["version"] == version]
        enough = mine and (state != "failed" or job_attempts(api, mine[0]["job"]) >= attempts)
        if enough and mine[0]["state"] == state:
            return notes
        assert time.monotonic() < deadline, notes
        time.sleep(0.2)


def job_attempts(api: Any, job_id: int) -> int:
    found = [r for r in api.get("/outbox", headers=AUTH).json() if r["id"] == job_id]
    return int(found[0]["attempts"]) if found else 0


def test_the_cli_still_builds_the_note_inline_and_get_says_so(
    tmp_path: Path, ingested: Path, cli_store: CliStore, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "review.json"
    path.write_text(json.dumps(review(1)))
    assert main(["review", "submit", str(path), "--out", str(ingested)]) == 0
    capsys.readouterr()
    location = cli_store.location(ingested / "outbox.sqlite")
    assert rows(location, KIND_NOTE_JOB) == []  # no job: the note was rendered in the command
    (review_row,) = rows(location, KIND_REVIEW)
    (report,) = [e["resource"] for e in review_row.payload["entry"]
                 if e["resource"]["resourceType"] == "DiagnosticReport"]  # fmt: skip
    assert {f["contentType"] for f in report["presentedForm"]} == {
        "text/plain; charset=utf-8",
        "application/pdf",
    }
    settings = api_settings(settings_for(cli_store), tmp_path)
    with running_api(settings, ingested) as api:
        (note,) = api.get("/reviews/REV-NOTE-JOB", headers=AUTH).json()["notes"]
    assert note["state"] == "inline" and note["job"] is None
    assert {r["kind"] for r in note["rows"]} == {KIND_NOTE, KIND_DOCUMENT}


def test_the_job_builds_the_outputs_chosen_when_the_version_was_accepted(
    ingested: Path, cli_store: CliStore
) -> None:
    accepted_with = settings_for(cli_store, outputs="diagnostic-report")
    worker = settings_for(cli_store)  # auto: both FHIR outputs, MDM and ORU files
    location = cli_store.location(ingested / "outbox.sqlite")
    submit(accepted_with, ingested, review(1))
    drain(worker, location, ingested)
    (note,) = rows(location, KIND_NOTE)
    assert [e["resource"]["resourceType"] for e in note.payload["entry"]] == ["DiagnosticReport"]
    assert rows(location, KIND_DOCUMENT) == []


@pytest.mark.sqlite_only(reason="validates the FHIR resources; the store does not shape them")
def test_the_note_jobs_transaction_is_valid_r4(
    tmp_path: Path,
    fhir_validate: Validate,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The DiagnosticReport written again with presentedForm and the DocumentReferences of two
    versions (the second supersedes the first), by the offline HAPI validator: no error."""
    monkeypatch.delenv("RTPLAN_STORE__URL", raising=False)  # the resources, not the store
    out = tmp_path / "out"
    assert main(["ingest", str(PLANNING), "--out", str(out)]) == 0
    capsys.readouterr()
    settings = load_settings(None, env={})
    for version in (1, 2):
        submit(settings, out, review(version))
        drain(settings, out / "outbox.sqlite", out)
    found = [e["resource"] for n in rows(out / "outbox.sqlite", KIND_NOTE)
             for e in n.payload["entry"]]  # fmt: skip
    assert [r["resourceType"] for r in found] == [
        "DiagnosticReport", "DocumentReference",
        "DiagnosticReport", "DocumentReference", "DocumentReference",
    ]  # fmt: skip
    results = fhir_validate(found)
    pairs = enumerate(zip(found, results, strict=True))
    errors = {f"{r['resourceType']}#{i}": res.errors for i, (r, res) in pairs if res.errors}
    assert errors == {}


def test_a_serving_process_builds_notes_in_a_child_that_is_replaced_when_it_dies(
    ingested: Path, cli_store: CliStore
) -> None:
    """``rtplan serve`` with the API builds notes in a child process (the GIL stays the
    API's); a child that dies (a native crash in the PDF library) is replaced, the job built."""
    import os
    import signal

    from adapter.jobs.note_job import NoteJobDeliverer
    from adapter.jobs.note_process import NoteProcess
    from adapter.outbox.worker import Verdict

    settings = settings_for(cli_store)
    location = cli_store.location(ingested / "outbox.sqlite")
    submit(settings, ingested, review())
    submit(settings, ingested, review(review_id="REV-NOTE-JOB-2"))
    first, second = rows(location, KIND_NOTE_JOB)
    process = NoteProcess()

    async def build(job: Row) -> tuple[Any, int]:
        with Outbox(location) as outbox:
            deliverer = NoteJobDeliverer(outbox, settings, ingested, process=process)
            answer = await deliverer.deliver(job)
        return answer, await process.run(os.getpid)

    try:
        answer, child = asyncio.run(build(first))
        assert answer.verdict is Verdict.DELIVERED and answer.result["note"] == "built"
        assert child != os.getpid()
        os.kill(child, signal.SIGKILL)  # the child dies between jobs
        answer, replaced = asyncio.run(build(second))
        assert answer.verdict is Verdict.DELIVERED and answer.result["note"] == "built"
        assert replaced not in (child, os.getpid())
    finally:
        process.close()
    # The rows each job reported are the note rows stored: the note and its MDM/ORU per review.
    notes, documents = rows(location, KIND_NOTE), rows(location, KIND_DOCUMENT)
    assert len(notes) == 2 and len(documents) == 4
