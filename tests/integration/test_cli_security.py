"""The command line as a careless operator or an attacker meets it (issue 14): private files
under umask 022, no output in the current directory, no write through a symlink, and every
bad input one clear line with exit status 2, never a traceback."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pydicom
import pytest

from adapter.cli import main
from adapter.config import Settings
from adapter.dicom.walk import read_all
from adapter.jobs.deliver import FILES, KIND_TRANSACTION
from adapter.store.db import open_database
from adapter.store.outbox import Outbox, State
from tests.store_backend import StoreUnderTest
from tests.support import FIXTURES, synth, tx

RTPLAN = [sys.executable, "-m", "adapter.cli"]
PLANNING_CT = FIXTURES / "dicom" / "planning-ct"


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``rtplan ARGS`` in a child process whose umask is 022 (a typical login shell)."""
    full_env = {**os.environ, **(env or {})}
    full_env["PYTHONPATH"] = str(FIXTURES.parent)
    return subprocess.run(
        [*RTPLAN, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=lambda: os.umask(0o022),
        check=False,
    )


def one_clear_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("rtplan: ") and "Traceback" not in stderr
    return lines[0]


def review_for(study_uid: str) -> dict[str, Any]:
    data = json.loads((FIXTURES / "reviews" / "concern.json").read_text())
    return {**data, "study_instance_uid": study_uid, "review_id": "REV-SEC-1"}


@pytest.mark.sqlite_only(reason="checks the SQLite file's mode")
def test_everything_holding_patient_data_is_private_under_umask_022(tmp_path: Path) -> None:
    source, out = tmp_path / "in", tmp_path / "out"
    synth.planning_ct(source / "study", seed="private-files", slices=2)
    truncated = source / "truncated.dcm"  # quarantined: the copy holds patient data too
    first = sorted((source / "study").rglob("*.dcm"))[0]
    truncated.write_bytes(first.read_bytes()[:700])
    ingest = run("ingest", str(source), "--out", str(out), cwd=tmp_path)
    assert ingest.returncode in (0, 1), ingest.stderr
    review = tmp_path / "review.json"
    review.write_text(json.dumps(review_for(synth.uid_for("private-files", "/study"))))
    submit = run("review", "submit", str(review), "--out", str(out), cwd=tmp_path)
    assert submit.returncode == 0, submit.stderr

    kinds = {p.parent.name for p in out.rglob("*") if p.is_file()}
    assert {"out", "fhir", "quarantine", "hl7"} <= kinds  # db, report, Bundles, copies, .hl7
    for path in [out, *out.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        expected = 0o700 if path.is_dir() else 0o600
        assert mode == expected, f"{path.relative_to(tmp_path)} is {mode:o}"
    assert not (tmp_path / ".rtplan").exists()


@pytest.mark.sqlite_only(reason="the default SQLite file's location")
def test_without_out_nothing_lands_in_the_current_directory(tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    env = {"HOME": str(home), "XDG_STATE_HOME": ""}
    listing = run("outbox", "list", cwd=cwd, env=env)
    expected = home / ".local" / "state" / "rtplan" / "outbox.sqlite"
    assert listing.returncode == 2 and str(expected) in one_clear_line(listing.stderr)
    env = {"XDG_STATE_HOME": str(tmp_path / "state")}
    listing = run("outbox", "list", cwd=cwd, env=env)
    assert str(tmp_path / "state" / "rtplan" / "outbox.sqlite") in listing.stderr
    assert list(cwd.iterdir()) == []


@pytest.mark.sqlite_only(reason="the default SQLite file's folder")
def test_the_default_state_folder_is_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapter.store.location import open_outbox

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    old = os.umask(0o022)
    try:
        with open_outbox(Settings()) as outbox:
            path = outbox.path
    finally:
        os.umask(old)
    assert path == tmp_path / "state" / "rtplan" / "outbox.sqlite"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


@pytest.mark.store
def test_no_write_follows_a_symlink_planted_in_out(tmp_path: Path, store: StoreUnderTest) -> None:
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    victim = elsewhere / "victim.txt"
    victim.write_text("do not overwrite")
    (out / "report.json").symlink_to(victim)
    (out / "fhir").symlink_to(elsewhere, target_is_directory=True)
    code = main(["ingest", str(PLANNING_CT), "--out", str(out)])
    assert code == 1  # the Bundle could not be written: given up, visibly
    assert victim.read_text() == "do not overwrite"
    assert sorted(p.name for p in elsewhere.iterdir()) == ["victim.txt"]
    assert not (out / "report.json").is_symlink()  # replaced, not followed
    with Outbox(store.at(out / "outbox.sqlite")) as outbox:
        dead = outbox.rows(state=State.DEAD)
    assert dead and "symlink" in (dead[0].last_error or "")


def _bad(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    return one_clear_line(err)


def test_out_that_is_a_file_or_read_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert "not a folder" in _bad(["ingest", str(PLANNING_CT), "--out", str(afile)], capsys)
    # /sys refuses new folders even to root (a read-only place whoever runs the tests).
    line = _bad(["ingest", str(PLANNING_CT), "--out", "/sys/rtplan-out"], capsys)
    assert "/sys/rtplan-out" in line


def test_db_that_is_not_sqlite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notdb = tmp_path / "notes.txt"
    notdb.write_text("hello, this is not a database\n" * 100)
    assert "not an outbox database" in _bad(["outbox", "--db", str(notdb), "list"], capsys)
    assert "not an outbox database" in _bad(["escalations", "--db", str(notdb)], capsys)


@pytest.mark.sqlite_only(reason="--db FILE names a SQLite file")
def test_retry_of_a_delivered_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 8: ``rtplan outbox retry <id of a delivered row>`` printed a traceback."""
    db = tmp_path / "o.sqlite"
    with Outbox(db) as outbox:
        row_id = outbox.enqueue(
            destination=FILES, target=str(tmp_path), key="k", kind=KIND_TRANSACTION,
            label="L", payload=tx(),
        )  # fmt: skip
        claimed = outbox.claim(1, lease_seconds=60)
        outbox.mark_delivered(claimed[0].id, {"file": "x"})
        assert outbox.get(row_id).state is State.DELIVERED
    line = _bad(["outbox", "--db", str(db), "retry", str(row_id)], capsys)
    assert f"row {row_id} is delivered" in line


def test_serve_port_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    handlers = list(logging.getLogger().handlers)
    assert "--port" in _bad(["serve", "--port", "99999"], capsys)
    # A usage error does not take over the process's logging (only a running service does).
    assert logging.getLogger().handlers == handlers


def test_settings_out_of_range_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RTPLAN_HL7__ESCALATION_CHECK_SECONDS", "nan")
    assert "hl7.escalation_check_seconds" in _bad(["outbox", "list"], capsys)


def test_plain_http_fhir_url_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _bad(
        ["ingest", str(PLANNING_CT), "--out", str(tmp_path), "--fhir-url", "http://ehr.example/f"],
        capsys,
    )
    assert "fhir.base_url" in line


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"review_id": "\xff\xfe"}', "not UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"n": ' + b"9" * 5000 + b"}", "out of range"),
        (b'{"a": ', "not JSON"),
    ],
)
def test_hostile_review_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, problem: str
) -> None:
    review = tmp_path / "review.json"
    review.write_bytes(content)
    for argv in (
        ["review", "submit", str(review), "--out", str(tmp_path / "out")],
        ["review", "preview", str(review)],
        ["hl7", "preview", str(review)],
    ):
        assert problem in _bad(argv, capsys)


@pytest.mark.store
def test_non_utf8_file_names_do_not_crash_the_run(tmp_path: Path) -> None:
    source = tmp_path / "in"
    shutil.copytree(PLANNING_CT, source)
    first = sorted(source.glob("*.dcm"))[0]
    first.rename(source / os.fsdecode(b"scan\xff\xfe.dcm"))  # bytes that are not UTF-8
    (source / os.fsdecode(b"notes\xe9.txt")).write_bytes(b"not dicom")
    out = tmp_path / "out"
    result = run("ingest", str(source), "--out", str(out), "--json", cwd=tmp_path)
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    assert summary["files"] == len(list(PLANNING_CT.glob("*"))) + 1
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert any(r["path"].endswith("notes\\xe9.txt") for r in report["rejected_files"])
    assert summary["mapped"] >= 1  # the study with the oddly named file was still mapped


def test_a_second_spelling_of_a_zip_member_does_not_delete_the_first(tmp_path: Path) -> None:
    archive = tmp_path / "scan.zip"
    first = sorted(PLANNING_CT.glob("*.dcm"))[0]
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/b.dcm", first.read_bytes())
        zf.writestr("a/./b.dcm", b"junk that is not DICOM")
    from zoneinfo import ZoneInfo

    headers, rejections = read_all([archive], default_tz=ZoneInfo("UTC"))
    assert len(headers) == 1 and headers[0].path.endswith("a/b.dcm")
    assert [r.reason for r in rejections] == ["duplicate member name refused"]


def test_a_nul_in_dicom_text_never_reaches_fhir(tmp_path: Path) -> None:
    source = tmp_path / "in"
    shutil.copytree(PLANNING_CT, source)
    for path in source.glob("*.dcm"):
        ds = pydicom.dcmread(path)
        ds.StudyDescription = str(ds.get("StudyDescription", "")) + "\x00\x07 extra"
        ds.save_as(path)
    result = subprocess.run(
        [*RTPLAN, "map", str(source)], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "\\u0000" not in result.stdout and "\\u0007" not in result.stdout
    assert " extra" in result.stdout  # the text itself is kept


@pytest.mark.store
def test_unmatched_acks_do_not_flood_the_log(tmp_path: Path, store: StoreUnderTest) -> None:
    """5,000 application ACKs for messages we never sent: one warning line, not 5,000."""
    import logging

    from adapter.hl7.trust import TrustPolicy
    from adapter.service.inbound import InboundHandler
    from adapter.tables import load_tables

    class Count(logging.Handler):
        lines = 0

        def emit(self, record: logging.LogRecord) -> None:
            if "for no message of ours" in record.getMessage():
                Count.lines += 1

    counter = Count()
    logging.getLogger("adapter.service.inbound").addHandler(counter)
    settings = Settings()
    try:
        with Outbox(store.at(tmp_path / "o.sqlite")) as outbox:
            from adapter.hl7.profiles import load_profiles

            trust = TrustPolicy(load_profiles(settings.mappings_dir / "receivers").values(), {})
            handler = InboundHandler(outbox, load_tables(settings.mappings_dir), [], trust)
            for n in range(5000):
                msh = f"MSH|^~\\&|RIS|RADIOLOGY|RTPLAN|ONCOLOGY|20260101||ACK|A{n}|P|2.5.1"
                ack = f"{msh}\rMSA|AA|RTP{n}\r"
                assert handler.handle(ack.encode()) is None
    finally:
        logging.getLogger("adapter.service.inbound").removeHandler(counter)
    assert Count.lines == 1


@pytest.mark.store
def test_refused_messages_are_kept_by_hash_not_content(
    tmp_path: Path, store: StoreUnderTest
) -> None:
    """Whatever the listener refuses is auditable without storing what it said."""
    from adapter.hl7.listener import Peer
    from adapter.hl7.profiles import load_profiles
    from adapter.hl7.trust import TrustPolicy
    from adapter.service.inbound import InboundHandler
    from adapter.tables import load_tables

    settings = Settings()
    with Outbox(store.at(tmp_path / "o.sqlite")) as outbox:
        trust = TrustPolicy(load_profiles(settings.mappings_dir / "receivers").values(), {})
        handler = InboundHandler(outbox, load_tables(settings.mappings_dir), [], trust)
        secret = b"MSH|^~\\&|EVIL|NET|X|Y|1||ORU^R01|E1|P|2.5.1\rPID|||SECRET-MRN\r"
        ack = handler.handle(secret, Peer("127.0.0.1", 1))
        assert ack is not None and b"MSA|AR|E1" in ack
    db = open_database(store.at(tmp_path / "o.sqlite"))
    stored = db.execute("SELECT message, detail FROM inbound").fetchall()
    db.close()
    assert len(stored) == 1 and bytes(stored[0][0]) == b"" and "SECRET" not in stored[0][1]

