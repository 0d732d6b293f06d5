"""``rtplan reconcile`` (issue 13): an overdue review, an unacknowledged concern, a concern
without a result and an identity hold are all listed and the exit status is 1; once each is
closed through the adapter's own paths (review submitted, ACK and ORU^R01 received on the
inbound handler, hold resolved) the exit status is 0. Embedded default (output folder)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from adapter.api.metrics import metrics_text
from adapter.cli import main
from adapter.config import Settings
from adapter.hl7.deliverer import T1, T2
from adapter.jobs.deliver import targets
from adapter.service.escalate import Metrics, escalate_due
from adapter.service.inbound import InboundHandler
from adapter.service.serve import trust_policy
from adapter.store.outbox import Outbox
from adapter.tables import load_tables
from tests.store_backend import StoreUnderTest
from tests.support import FIXTURES, synth, tx

pytestmark = pytest.mark.store  # every test here reaches the store: both backends

MRN = "HOSP-MRN"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def study(root: Path, seed: str) -> tuple[Path, str]:
    folder = root / seed
    synth.planning_ct(folder, seed=seed, slices=2, patient_id=f"PID-{seed}", issuer=MRN)
    return folder, synth.uid_for(seed, "/study")


def review(tmp: Path, name: str, study_uid: str, review_id: str) -> Path:
    data = json.loads((FIXTURES / "reviews" / name).read_text())
    path = tmp / f"{review_id}.json"
    path.write_text(json.dumps({**data, "study_instance_uid": study_uid, "review_id": review_id}))
    return path


def inbound(outbox: Outbox, out: Path, raw: str) -> bytes | None:
    settings = Settings()
    # The allow-list of the shipped receiver profiles, as `rtplan serve` builds it (issue 14).
    handler = InboundHandler(
        outbox, load_tables(settings.mappings_dir), targets(settings, out), trust_policy(settings)
    )
    return asyncio.run(handler(raw.replace("\n", "\r").encode()))


def app_ack(control: str, n: int) -> str:
    return (
        f"MSH|^~\\&|RIS|RADIOLOGY|RTPLAN|ONCOLOGY|20260305101500+0000||ACK^O01|APPACK{n}|P|2.3.1\n"
        f"MSA|AA|{control}\n"
    )


def oru(placer: str, patient: str, n: int) -> str:
    return (
        f"MSH|^~\\&|RIS|RADIOLOGY|RTPLAN|ONCOLOGY|20260305101500+0000||ORU^R01^ORU_R01|ORU{n}|P|"
        "2.5.1\n"
        f"PID|||{patient}^^^{MRN}^MR\n"
        f"ORC|RE|{placer}^RTPLAN|F{n}^RIS||CM\n"
        f"OBR|1|{placer}^RTPLAN|F{n}^RIS|RTPLANREVIEW^Radiologist review^L|||"
        "20260305100000+0000" + "|" * 18 + "F\n"
        "OBX|1|TX|18748-4^Diagnostic imaging study^LN||Benign cysts only.||||||F\n"
    )


def items(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> tuple[int, Any]:
    code, stdout = run(capsys, "reconcile", "--json", "--out", str(out), *extra)
    return code, json.loads(stdout)


def test_reconcile_lists_every_open_item_and_exits_zero_once_closed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], store: StoreUnderTest
) -> None:
    out, root = tmp_path / "out", tmp_path / "in"
    folders = {seed: study(root, seed) for seed in ("rec-a", "rec-b", "rec-c", "rec-d")}
    code, _ = run(capsys, "ingest", str(root), "--out", str(out))
    assert code == 0
    uid = {seed: folders[seed][1] for seed in folders}
    # B and C: a review with a concern each (an HL7 order, written to out/hl7 here).
    placers = {}
    for seed in ("rec-b", "rec-c"):
        code, stdout = run(
            capsys,
            "review", "submit", str(review(tmp_path, "concern.json", uid[seed], f"R-{seed}")),
            "--out", str(out), "--json",
        )  # fmt: skip
        assert code == 0, stdout
        assert json.loads(stdout)["radiology_request"] is True
        with Outbox(store.at(out / "outbox.sqlite"), check_same_thread=False) as outbox:
            (order,) = outbox.rows_for_key(f"study:{uid[seed]}", kind="hl7-order")
        placers[seed] = str(order.payload["order"]["placer_order_number"])
    # D: re-ingested under another patient -> an identity hold.
    moved = tmp_path / "moved"
    moved.mkdir()
    for path in sorted(folders["rec-d"][0].glob("*.dcm")):
        ds = dcmread(path)
        ds.PatientID = "SOMEONE-ELSE"
        ds.save_as(moved / path.name)
    code, _ = run(capsys, "ingest", str(moved), "--out", str(out))
    assert code == 1
    # E: half a study (held incomplete): no ImagingStudy, no review Task; listed, not overdue.
    partial = tmp_path / "partial"
    synth.planning_ct(partial, seed="rec-e", slices=4, missing_slices=[2], patient_id="PID-rec-e")
    uid["rec-e"] = synth.uid_for("rec-e", "/study")
    assert run(capsys, "ingest", str(partial), "--out", str(out))[0] == 1
    with Outbox(store.at(out / "outbox.sqlite"), check_same_thread=False) as outbox:
        timers = outbox.timers()
        # B's order was never acknowledged: its T1 is already past due.
        timers.arm(placers["rec-b"], T1, 0, "no AA from RIS")
        # C's order was acknowledged (application ACK on the listener), its result never came.
        timers.arm(placers["rec-c"], T1, 0, "no AA from RIS")
        order_c = outbox.order(placers["rec-c"])
        assert order_c is not None
        assert inbound(outbox, out, app_ack(order_c.transmissions[-1].control_id, 1)) is None
        timers.arm(placers["rec-c"], T2, 0, "no radiologist result")
        # The escalation check fires both (what `rtplan serve` does every few seconds).
        fired = escalate_due(outbox, targets(Settings(), out), Metrics())
        assert sorted((t.key, t.kind) for t in fired) == sorted(
            [(placers["rec-b"], T1), (placers["rec-c"], T2)]
        )

    code, listed = items(capsys, out)
    assert code == 1
    found = {(i["kind"], i["study_instance_uid"]): i for i in listed["items"]}
    review_a = found[("review", uid["rec-a"])]
    assert review_a["overdue"] and review_a["state"] == "awaiting review" and review_a["due"]
    concern_b = found[("concern", uid["rec-b"])]
    assert concern_b["overdue"] and concern_b["t1"] == "fired" and concern_b["result"] == "none"
    assert concern_b["fhir_write"] == "delivered" and concern_b["order"] == "delivered"
    concern_c = found[("concern", uid["rec-c"])]
    assert concern_c["overdue"] and concern_c["t1"] == "stopped"
    assert concern_c["result"] == "overdue" and concern_c["t2"] == "fired"
    assert concern_c["ack"] != "none"
    hold = found[("identity", uid["rec-d"])]
    assert hold["overdue"] and hold["state"] == "held"
    assert ("review", uid["rec-b"]) not in found  # a complete review closes the review item
    unmapped = found[("study", uid["rec-e"])]
    assert unmapped["state"].startswith("not mapped (held-incomplete)")
    assert not unmapped["overdue"]
    code, stdout = run(capsys, "reconcile", "--out", str(out))
    assert code == 1 and "OVERDUE concern" in stdout and "SOMEONE-ELSE" not in stdout
    # Each escalation is in the study's audit trail.
    for seed, kind in (("rec-b", T1), ("rec-c", T2)):
        code, stdout = run(capsys, "audit", "--study", uid[seed], "--json", "--out", str(out))
        escalations = [json.loads(line) for line in stdout.splitlines()]
        assert [e["outcome"] for e in escalations if e["event"] == "escalation"] == [kind]
    # The operator sees both identities side by side (the one place patient values are shown).
    code, stdout = run(capsys, "identity", "show", str(hold["hold"]), "--out", str(out))
    assert code == 0 and "PatientID" in stdout and "PID-rec-d" in stdout
    assert "SOMEONE-ELSE" in stdout and "1 held row(s)" in stdout
    code, stdout = run(capsys, "identity", "list", "--out", str(out))
    assert f"hold {hold['hold']} study {uid['rec-d']}" in stdout and "1 open" in stdout
    with Outbox(store.at(out / "outbox.sqlite")) as outbox:  # the metric a scheduler alerts on
        assert b"rtplan_identity_holds_open 1.0" in metrics_text(outbox, {})[0]
    # --since: nothing created after a far future date.
    code, stdout = run(capsys, "reconcile", "--since", "2999-01-01", "--json", "--out", str(out))
    assert code == 0 and json.loads(stdout)["open"] == 0

    # Close everything through the adapter's own paths.
    complete = tmp_path / "complete"
    synth.planning_ct(complete, seed="rec-e", slices=4, patient_id="PID-rec-e")
    assert run(capsys, "ingest", str(complete), "--out", str(out))[0] == 0
    for seed in ("rec-a", "rec-d", "rec-e"):
        path = review(tmp_path, "no-finding.json", uid[seed], f"R-{seed}")
        assert run(capsys, "review", "submit", str(path), "--out", str(out))[0] == 0
    with Outbox(store.at(out / "outbox.sqlite"), check_same_thread=False) as outbox:
        order_b = outbox.order(placers["rec-b"])
        assert order_b is not None
        assert inbound(outbox, out, app_ack(order_b.transmissions[-1].control_id, 2)) is None
        for n, seed in enumerate(("rec-b", "rec-c"), start=3):
            reply = inbound(outbox, out, oru(placers[seed], f"PID-{seed}", n))
            assert reply is not None and b"MSA|AA|" in reply
    code, stdout = run(
        capsys,
        "identity", "resolve", str(hold["hold"]), "--keep",
        "--by", "Dr Safe", "--reason", "wrong PatientID at the CT console", "--out", str(out),
    )  # fmt: skip
    assert code == 0
    code, stdout = run(capsys, "identity", "list", "--all", "--out", str(out))
    assert "resolved (keep by Dr Safe)" in stdout and "0 open identity hold(s)" in stdout
    with Outbox(store.at(out / "outbox.sqlite")) as outbox:
        assert b"rtplan_identity_holds_open 0.0" in metrics_text(outbox, {})[0]
    assert run(capsys, "outbox", *store.db_option(out / "outbox.sqlite"), "run")[0] == 0
    code, listed = items(capsys, out)
    assert (code, listed["open"], listed["overdue"]) == (0, 0, 0), listed
    code, stdout = run(capsys, "reconcile", "--out", str(out))
    assert code == 0 and "0 open item(s), 0 overdue" in stdout


@pytest.mark.sqlite_only(reason="a SQLite file not there yet (a database server always is)")
def test_reconcile_without_a_store_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["reconcile", "--out", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("rtplan: ") and "no outbox at" in err
    assert err.count("\n") == 1


def test_a_dead_row_is_overdue_until_a_replay_is_delivered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], store: StoreUnderTest
) -> None:
    """A dead letter stays an overdue item (nothing retries it by itself) until an analyst's
    replay of it is delivered. The death is injected (a fault no embedded peer produces)."""
    out = tmp_path / "out"
    assert run(capsys, "ingest", str(FIXTURES / "dicom" / "planning-ct"), "--out", str(out))[0] == 0
    path = review(tmp_path, "no-finding.json", synth.uid_for("planning-ct", "/study"), "R-dead")
    with Outbox(store.at(out / "outbox.sqlite"), check_same_thread=False) as outbox:
        row_id = outbox.enqueue(
            destination="files", target=str(out.resolve()), key="study:x", kind="fhir-transaction",
            label="Injected-dead", payload=tx(),
        )  # fmt: skip
        outbox.mark_dead(row_id, "rejected: HTTP 422")
    assert run(capsys, "review", "submit", str(path), "--out", str(out))[0] == 0
    code, listed = items(capsys, out)
    assert code == 1 and [(i["kind"], i["row"]) for i in listed["items"]] == [("dead", row_id)]
    code, stdout = run(
        capsys, "outbox", *store.db_option(out / "outbox.sqlite"), "replay", str(row_id)
    )
    assert code == 0 and f"replayed row {row_id}" in stdout
    code, listed = items(capsys, out)
    assert (code, listed["open"]) == (0, 0)
    code, stdout = run(capsys, "audit", "--study", "x", "--out", str(out))
    assert "replay" in stdout and "operator-command" in stdout
