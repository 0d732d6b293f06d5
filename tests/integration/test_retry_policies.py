"""Each destination gives up by its own retry policy (issue 8: ``connection.max_resends`` was
parsed and never used; every resend followed the FHIR policy, 40 attempts / 3,600 s).

Real peers: an MLLP receiver that answers every message with an ACK for another message (a
wrong MSA-2, so each attempt reaches it and is resent), and closed ports (connection refused)
for the FHIR server, a second HL7 receiver and the PACS C-STORE destination. The attempt counts
are exact and differ per destination."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from adapter.cli import main
from adapter.config import Hl7Settings, NoteSettings, OutboxSettings, Settings
from adapter.jobs.review import submit_review
from adapter.store.outbox import Outbox, Row
from tests.note_support import load_review
from tests.peers import mllp_fault
from tests.peers.launch import free_port
from tests.peers.mllp_fault import MllpFaultPeer
from tests.store_backend import StoreUnderTest

pytestmark = [pytest.mark.peer, pytest.mark.store]
ROOT = Path(__file__).resolve().parents[2]
STUDY = ROOT / "fixtures" / "dicom" / "planning-ct"


def _profile(receivers: Path, name: str, port: int, **connection: object) -> None:
    path = receivers / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    data["connection"].update(host="127.0.0.1", port=port, **connection)
    path.write_text(yaml.safe_dump(data))


def _dead(outbox_path: Path | str, destination: str, target: str | None = None) -> list[Row]:
    with Outbox(outbox_path) as outbox:
        return [
            r
            for r in outbox.rows()
            if r.destination == destination and (target is None or r.target == target)
        ]


def test_each_hl7_receiver_resends_as_its_profile_says(
    tmp_path: Path, store: StoreUnderTest
) -> None:
    """default-ris: ``max_resends: 1`` -> 2 transmissions at the peer; document-mdm:
    ``max_resends: 4`` against a closed port -> 5 attempts. The FHIR policy (40) is not used."""
    out = tmp_path / "out"
    assert main(["ingest", str(STUDY), "--out", str(out)]) == 0
    receivers = tmp_path / "receivers"
    shutil.copytree(ROOT / "mappings" / "receivers", receivers)
    fast = {"resend_wait": "10ms", "max_resend_wait": "20ms", "ack_timeout": "2s"}
    closed = free_port()
    with MllpFaultPeer() as ris:
        ris.default = mllp_fault.ack("AA", control_id="NOT-OURS")  # never our MSH-10
        _profile(receivers, "default-ris", ris.port, max_resends=1, **fast)
        _profile(receivers, "document-mdm", closed, max_resends=4, **fast)
        settings = Settings(
            hl7=Hl7Settings(mllp=True, receivers_dir=str(receivers)),
            note=NoteSettings(outputs="diagnostic-report,document-reference,mdm"),
            outbox=OutboxSettings(path=str(out / "outbox.sqlite")),
        )
        result = submit_review(load_review("concern"), replace(settings), out_dir=out)
        frames = len(ris.frames)
        unique = ris.unique_control_ids
    assert result.delivery is not None and result.delivery.dead >= 2
    (order,) = _dead(store.at(out / "outbox.sqlite"), "hl7", "default-ris")
    (note,) = _dead(store.at(out / "outbox.sqlite"), "hl7", "document-mdm")
    assert (order.state, order.attempts) == ("dead", 2)
    assert frames == 2 and len(unique) == 1  # the same message, resent once
    assert "gave up after 2 attempt(s)" in order.last_error
    assert (note.state, note.attempts) == ("dead", 5)
    assert "gave up after 5 attempt(s)" in note.last_error


def test_a_receivers_give_up_window_stops_resends(tmp_path: Path, store: StoreUnderTest) -> None:
    """``give_up_after`` bounds the resends by time since the order was queued."""
    out = tmp_path / "out"
    assert main(["ingest", str(STUDY), "--out", str(out)]) == 0
    receivers = tmp_path / "receivers"
    shutil.copytree(ROOT / "mappings" / "receivers", receivers)
    _profile(
        receivers,
        "default-ris",
        free_port(),
        max_resends=100,
        resend_wait="200ms",
        max_resend_wait="200ms",
        give_up_after="500ms",
    )
    settings = Settings(
        hl7=Hl7Settings(mllp=True, receivers_dir=str(receivers)),
        note=NoteSettings(outputs="diagnostic-report"),
        outbox=OutboxSettings(path=str(out / "outbox.sqlite")),
    )
    submit_review(load_review("concern"), settings, out_dir=out)
    (order,) = _dead(store.at(out / "outbox.sqlite"), "hl7", "default-ris")
    assert order.state == "dead" and order.attempts < 10  # not 1 + max_resends = 101
    assert "gave up after" in order.last_error


def test_fhir_and_the_pacs_label_each_keep_their_own_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: StoreUnderTest
) -> None:
    """As a user configures it (docs/configuration.md, docs/delivery.md): ``fhir.max_attempts``
    3 and ``label.max_attempts`` 2, both destinations refusing connections."""
    fhir_port, pacs_port = free_port(), free_port()
    config = tmp_path / "rtplan.yaml"
    config.write_text(
        "fhir:\n"
        f"  base_url: http://127.0.0.1:{fhir_port}/fhir\n"
        "  version: R4\n"
        "  max_attempts: 3\n"
        "  initial_wait: 0.01\n"
        "  max_wait: 0.02\n"
        "label:\n"
        f"  cstore: ARCHIVE@127.0.0.1:{pacs_port}\n"
        "  initial_wait: 0.01\n"
        "  max_wait: 0.02\n"
    )
    monkeypatch.setenv("RTPLAN_LABEL__MAX_ATTEMPTS", "2")
    out = tmp_path / "out"
    code = main(["--config", str(config), "ingest", str(STUDY), "--out", str(out)])
    assert code != 0  # nothing reached the server: the command says so
    fhir_rows = _dead(store.at(out / "outbox.sqlite"), "fhir")
    pacs_rows = _dead(store.at(out / "outbox.sqlite"), "pacs")
    assert fhir_rows and {(r.state, r.attempts) for r in fhir_rows} == {("dead", 3)}
    assert pacs_rows and {(r.state, r.attempts) for r in pacs_rows} == {("dead", 2)}


def test_a_nak_is_never_resent_whatever_max_resends_says(
    tmp_path: Path, store: StoreUnderTest
) -> None:
    """AE is the receiver's answer, not a lost message: one transmission, a dead letter."""
    out = tmp_path / "out"
    assert main(["ingest", str(STUDY), "--out", str(out)]) == 0
    receivers = tmp_path / "receivers"
    shutil.copytree(ROOT / "mappings" / "receivers", receivers)
    with MllpFaultPeer() as ris:
        ris.default = mllp_fault.ack("AE", error_code="207")
        _profile(receivers, "default-ris", ris.port, max_resends=4, resend_wait="10ms")
        settings = Settings(
            hl7=Hl7Settings(mllp=True, receivers_dir=str(receivers)),
            note=NoteSettings(outputs="diagnostic-report"),
            outbox=OutboxSettings(path=str(out / "outbox.sqlite")),
        )
        submit_review(load_review("concern"), settings, out_dir=out)
        frames = len(ris.frames)
    (order,) = _dead(store.at(out / "outbox.sqlite"), "hl7", "default-ris")
    assert (order.state, order.attempts, frames) == ("dead", 1, 1)
    assert "rejected by the receiver" in order.last_error
