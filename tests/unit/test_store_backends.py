"""The store's two backends: migrations, store.url, and what several instances on PostgreSQL
guarantee (claims never shared, per-key order, lease take-over, each timer fired once)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from adapter.cli import main
from adapter.config import load_settings
from adapter.errors import ConfigError
from adapter.store.identity import HeldRow, IngestedStudy, Resolution
from adapter.store.migrations import LATEST, MIGRATIONS
from adapter.store.outbox import NewRow, Outbox, State
from adapter.store.studies import StudyRecord
from tests.support import tx

ROOT = Path(__file__).resolve().parents[2]
BEFORE_MIGRATIONS = ROOT / "fixtures" / "store" / "outbox-before-migrations.sqlite"
T = ("fhir", "http://server/fhir")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def put(outbox: Outbox, key: str, n: int = 0) -> int:
    return outbox.enqueue(
        destination=T[0], target=T[1], key=key, kind="fhir-transaction", label=key, payload=tx(n=n)
    )


# -- migrations -------------------------------------------------------------------------------


@pytest.mark.sqlite_only(reason="the earlier release wrote SQLite files only")
def test_a_store_of_the_previous_release_opens_and_migrates(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    shutil.copy(BEFORE_MIGRATIONS, path)
    with Outbox(path) as outbox:
        versions = outbox._db.execute("SELECT version FROM schema_version ORDER BY version")
        assert [int(r[0]) for r in versions] == [m.version for m in MIGRATIONS]
        # Everything the earlier release wrote is read back as it was.
        assert outbox.counts()["delivered"] == 1 and outbox.counts()["pending"] == 1
        study = outbox.study("1.2.3")
        assert study is not None and study.accession == "ACC1"
        review = outbox.reviews().get("REV1")
        assert review is not None and review.version == 1
        assert [t.kind for t in outbox.timers().open()] == ["T1"]
        label = outbox.labels().latest("1.2.3")
        assert label is not None and label.document == b"\x00KOS"
        assert outbox.inbound_message("RIS", "M1") == b"MSH|..."
        # Issue 8: migration 5 gave the earlier release's order its record (backfill).
        record = outbox.order("PO1")
        assert record is not None and record.order_row_id is not None
        assert [t.control for t in record.transmissions] == ["NW"]
        order = outbox.get(record.order_row_id)
        assert order.after_id is not None
        assert outbox.verify_audit() is None
        # ... and the store goes on working: the waiting order is claimable, new rows chain.
        (claimed,) = outbox.claim(5)
        assert claimed.id == order.id
        put(outbox, "study:4.5.6")
        assert outbox.verify_audit() is None
    with Outbox(path) as again:  # opening again applies nothing
        count = again._db.scalar("SELECT COUNT(*) FROM schema_version")
        assert int(count) == len(MIGRATIONS)


def test_schema_version_is_recorded_once_and_a_newer_store_is_refused(
    store_url: Path | str,
) -> None:
    with Outbox(store_url) as outbox:
        assert int(outbox._db.scalar("SELECT MAX(version) FROM schema_version")) == LATEST
        outbox._db.execute(
            "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
            (LATEST + 1, "from a later release", 0.0),
        )
    with pytest.raises(ConfigError, match=f"schema version {LATEST + 1} is newer"):
        Outbox(store_url)


def test_audit_is_append_only_and_states_are_checked(store_url: Path | str) -> None:
    with Outbox(store_url) as outbox:
        put(outbox, "a")
        for statement in ("UPDATE audit SET actor='someone else'", "DELETE FROM audit"):
            with pytest.raises(Exception, match="append-only"):
                outbox._db.execute(statement)
        with pytest.raises(Exception, match=r"(?i)check"):
            outbox._db.execute("UPDATE outbox SET state='lost'")
        assert outbox.verify_audit() is None


def test_order_lookups_and_inbound_log(store_url: Path | str) -> None:
    from adapter.store.orders import QueuedOrder

    with Outbox(store_url) as outbox:
        with outbox.batch() as batch:
            order = batch.enqueue(
                NewRow("hl7", "ris", "study:1", "hl7-order", "ORM",
                       {"order": {"placer_order_number": "PO7"}, "control_id": "CTRL7"})
            )  # fmt: skip
            batch.record_order(
                order, QueuedOrder("PO7", "1", "PO7", "ris", "NW", "CTRL7", {"priority": "stat"})
            )
        record = outbox.order("PO7")  # issue 8: the order record, not the payload
        assert record is not None and record.order_row_id == order
        by_control = outbox.order_by_control_id("CTRL7")
        assert by_control is not None and by_control.placer == "PO7"
        stored = outbox.record_inbound(
            sender="RIS", control_id="M1", kind="ORR^O02", status="AA", detail="order PO7",
            message=b"MSH|^~\\&|\r\x00",
        )  # fmt: skip
        assert stored and not outbox.record_inbound(
            sender="RIS", control_id="M1", kind="ORR^O02", status="AA", detail="order PO7",
            message=b"again",
        )  # fmt: skip
        assert outbox.inbound_message("RIS", "M1") == b"MSH|^~\\&|\r\x00"
        assert outbox.inbound_for_order("PO7") == [("ORR^O02", "AA")]


# -- store.url ----------------------------------------------------------------------------------


@pytest.mark.sqlite_only(reason="sets store.url itself (sqlite:///PATH and unreachable URLs)")
def test_store_url_setting_and_its_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path}/x.sqlite"
    assert load_settings(env={"RTPLAN_STORE__URL": url}).store.url == url
    with pytest.raises(ConfigError, match=r"store\.url: must start with sqlite:/// or postgresql"):
        load_settings(env={"RTPLAN_STORE__URL": "mysql://db/rtplan"})
    # A database that cannot be reached: one line, exit 2, the password never shown.
    monkeypatch.setenv("RTPLAN_STORE__URL", "postgresql://rtplan:s3cret@127.0.0.1:1/rtplan")
    assert main(["outbox", "list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "store.url" in err and "s3cret" not in err
    assert "postgresql://rtplan:***@127.0.0.1:1/rtplan" in err
    # sqlite:///PATH names the file; outbox.path and --out are used only without store.url.
    monkeypatch.setenv("RTPLAN_STORE__URL", url)
    out = tmp_path / "out"
    planning_ct = ROOT / "fixtures" / "dicom" / "planning-ct"
    assert main(["ingest", str(planning_ct), "--out", str(out)]) == 0
    assert (tmp_path / "x.sqlite").exists() and not (out / "outbox.sqlite").exists()
    capsys.readouterr()
    assert main(["outbox", "list"]) == 0
    assert "2 delivered, 0 dead" in capsys.readouterr().out


# -- several instances on PostgreSQL -----------------------------------------------------------


def test_concurrent_claims_never_share_a_row_and_keep_each_keys_order(pg_url: str) -> None:
    keys, per_key = 12, 8
    with Outbox(pg_url) as setup:
        for n in range(per_key):
            rows = [
                NewRow(T[0], T[1], f"k{k}", "fhir-transaction", "l", tx(n=n)) for k in range(keys)
            ]
            setup.enqueue_many(rows)
    delivered: list[tuple[str, int, int]] = []  # (key, n, row id) in delivery order
    overlap: list[str] = []
    in_flight: set[str] = set()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def instance() -> None:
        try:
            with Outbox(pg_url) as outbox:
                idle = 0
                while idle < 20:
                    rows = outbox.claim(3)
                    if not rows:
                        idle += 1
                        continue
                    idle = 0
                    for row in rows:
                        with lock:
                            if row.key in in_flight:
                                overlap.append(row.key)
                            in_flight.add(row.key)
                    for row in rows:
                        with lock:
                            in_flight.discard(row.key)
                            delivered.append((row.key, row.payload["n"], row.id))
                        outbox.mark_delivered(row.id, {"ok": True})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=instance) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert overlap == []  # never two rows of one key in flight at once
    ids = [row_id for _, _, row_id in delivered]
    assert len(ids) == len(set(ids)) == keys * per_key  # every row once
    for k in range(keys):
        assert [n for key, n, _ in delivered if key == f"k{k}"] == list(range(per_key))
    with Outbox(pg_url) as outbox:
        assert outbox.counts()["delivered"] == keys * per_key
        assert outbox.verify_audit() is None  # the hash chain stayed one chain


def test_a_dead_instances_rows_are_taken_over_when_the_lease_runs_out(pg_url: str) -> None:
    clock = Clock()
    outbox = Outbox(pg_url, clock=clock)
    row_id = put(outbox, "a")
    code = (
        "import os; from adapter.store.outbox import Outbox;"
        f"o = Outbox({pg_url!r}, clock=lambda: {clock.now}); "
        "assert o.claim(1, lease_seconds=60); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=dict(os.environ))
    assert outbox.get(row_id).state is State.IN_FLIGHT
    # Its process is gone, but on PostgreSQL only the lease counts (it may run elsewhere).
    clock.now += 59
    assert outbox.claim(5) == []
    clock.now += 2
    (taken,) = outbox.claim(5)
    assert taken.id == row_id and taken.attempts == 2
    assert "recovered" in [event for _, event, _ in outbox.events(row_id)]


def test_a_finish_after_the_lease_was_taken_over_is_not_recorded(pg_url: str) -> None:
    clock = Clock()
    first, second = Outbox(pg_url, clock=clock), Outbox(pg_url, clock=clock)
    second._owner = "elsewhere:1"  # another instance (another host)
    row_id = put(first, "a")
    assert first.claim(1, lease_seconds=10)
    clock.now += 11
    (taken,) = second.claim(1)
    follow_up = NewRow(T[0], T[1], "a", "fhir-transaction", "follow-up", tx(n=9))
    assert first.mark_delivered(row_id, {"by": "first"}, [follow_up]) == []  # too late
    assert second.mark_delivered(taken.id, {"by": "second"}, [follow_up]) != []
    row = first.get(row_id)
    assert row.state is State.DELIVERED and row.result == {"by": "second"}
    assert [r.label for r in first.rows()].count("follow-up") == 1


def test_each_timer_fires_once_across_instances(pg_url: str) -> None:
    with Outbox(pg_url) as setup:
        for n in range(30):
            setup.timers().arm(f"PO{n}", "T1", 0.0)
    fired: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(3)

    def instance() -> None:
        with Outbox(pg_url) as outbox:
            barrier.wait()
            for _ in range(5):
                taken = outbox.timers().take_due()
                with lock:
                    fired.extend(t.key for t in taken)

    threads = [threading.Thread(target=instance) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(fired) == sorted(f"PO{n}" for n in range(30))


def test_the_operations_doc_says_what_the_store_does() -> None:
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("## Choosing the store", 1)[1].split("\n## ", 1)[0]
    # The command as the two-instance test runs it (RTPLAN_STORE__URL + rtplan outbox run).
    command = "RTPLAN_STORE__URL=postgresql://rtplan@db.example.org/rtplan rtplan outbox run"
    assert command in section
    two = (ROOT / "tests" / "integration" / "test_store_two_instances.py").read_text()
    assert "RTPLAN_STORE__URL=url" in two and '[RTPLAN, "outbox", "run"]' in two
    assert "(`outbox.lease_seconds`, default 300 s)" in section
    assert load_settings(env={}).outbox.lease_seconds == 300.0
    assert "postgresql://rtplan:***@" in section  # as test_store_url_setting_and_its_errors
    tests = ("tests/integration/test_store_two_instances.py", "tests/unit/test_store_backends.py")
    for named in tests:
        assert named in section and (ROOT / named).exists()


def test_outbox_commands_on_postgresql(
    pg_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with Outbox(pg_url) as outbox:
        row_id = put(outbox, "study:1.2.3")
        outbox.mark_dead(row_id, "peer said no")
    monkeypatch.setenv("RTPLAN_STORE__URL", pg_url)
    assert main(["outbox", "dead"]) == 0
    assert "peer said no" in capsys.readouterr().out
    assert main(["outbox", "show", str(row_id)]) == 0
    assert "dead" in capsys.readouterr().out
    assert main(["audit", "--verify"]) == 0
    assert "audit trail intact" in capsys.readouterr().out


def test_identity_holds_and_their_resolution(store_url: Path | str) -> None:
    def study(patient_id: str) -> IngestedStudy:
        record = StudyRecord("1.2.9", patient_id, "HOSP", "DOE^JANE", "1960-01-02", "F",
                             "ACC1", "RP1", "")  # fmt: skip
        row = HeldRow(T[0], T[1], "study:1.2.9", "fhir-transaction", "ImagingStudy",
                      tx(patient=patient_id))  # fmt: skip
        return IngestedStudy(record, "mapped", (row,))

    with Outbox(store_url) as outbox:
        first = outbox.record_ingest([study("P1")])
        assert len(first.ids) == 1 and first.held == {}
        moved = outbox.record_ingest([study("P2")])  # the same study under another patient
        assert moved.ids == [] and set(moved.held) == {"1.2.9"}
        assert outbox.record_ingest([study("P2")]).held == moved.held  # one open hold
        (hold,) = outbox.identity_holds(open_only=True)
        released = outbox.resolve_identity(hold.id, Resolution.REPLACE, by="Dr R", note="merge")
        assert len(released) == 1 and outbox.get(released[0]).payload == tx(patient="P2")
        record = outbox.study("1.2.9")
        assert record is not None and record.patient_id == "P2"
        assert outbox.identity_holds(open_only=True) == []
        assert outbox.verify_audit() is None


def test_a_database_of_something_else_is_one_clear_error(store_url: Path | str) -> None:
    with Outbox(store_url) as outbox:  # a store whose outbox table is not ours
        cascade = " CASCADE" if isinstance(store_url, str) else ""  # PostgreSQL: its index
        outbox._db.execute("DROP TABLE outbox" + cascade)
        outbox._db.execute("CREATE TABLE outbox (id TEXT)")
        outbox._db.execute("DELETE FROM schema_version WHERE version > 1")
    with pytest.raises(ConfigError, match=r"not an outbox database \(") as caught:
        Outbox(store_url)
    assert "\n" not in str(caught.value)


# -- PACS label state -------------------------------------------------------------------------


def test_the_label_state_finds_its_rows_by_their_label_not_their_payload(
    store_url: Path | str,
) -> None:
    """Issue 8: no SQL reads a payload. A KOS's delivery rows are found by the outbox label
    (``row_label``), so a payload without the SOP Instance UID (or with another one) changes
    nothing, and a later KOS of the same study does not see its predecessor's rows."""
    from adapter.label.kos_payload import KosPayload
    from adapter.store.labels import KIND_KOS, LabelState, label_key, row_label

    part10 = b"\0" * 128 + b"DICM"
    another_kos = KosPayload("1.2.9", "9.9.9", 1, part10).to_json()  # not this study's KOS

    with Outbox(store_url) as outbox:
        store = outbox.labels()
        first = store.record(
            study_uid="1.2.9", sop_instance_uid="1.2.9.100", instance_number=1, digest="a",
            document=b"KOS1",
        )  # fmt: skip
        assert not store.has_row(first, *T)
        row_id = outbox.enqueue(
            destination=T[0], target=T[1], key=label_key("1.2.9"), kind=KIND_KOS,
            label=row_label("1.2.9", 1), payload=another_kos,
        )  # fmt: skip
        assert store.has_row(first, *T)
        assert store.status("1.2.9").state is LabelState.SENT
        outbox.mark_delivered(row_id, {})
        assert store.status("1.2.9").state is LabelState.ACCEPTED
        second = store.record(
            study_uid="1.2.9", sop_instance_uid="1.2.9.101", instance_number=2, digest="b",
            document=b"KOS2",
        )  # fmt: skip
        assert not store.has_row(second, *T)
        assert store.status("1.2.9").destinations == ()
