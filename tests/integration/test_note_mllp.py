"""The review note over MLLP, against real peers: every MDM and ORU message we build passes the
HAPI HL7v2 validator, and an MLLP receiver (python-hl7) gets T02, then T10, then T11 for the
review's document number, once each, through the outbox with the usual ACK discipline."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import hl7
import pytest
import yaml

from adapter.cli import main
from adapter.config import Hl7Settings, NoteSettings, OutboxSettings, Settings
from adapter.jobs.review import submit_review
from tests.note_support import load_review
from tests.peers.hl7v2_validator_fixture import Validate

pytestmark = [pytest.mark.peer, pytest.mark.store]
ROOT = Path(__file__).resolve().parents[2]
HOSTILE = "A | B ^ C & D ~ E \\ F \\F\\ \\X0B\\ 山田 Ø\nsecond line"


def ingest(out: Path) -> None:
    assert (
        main(["ingest", str(ROOT / "fixtures" / "dicom" / "planning-ct"), "--out", str(out)]) == 0
    )


def test_every_note_message_passes_hapi(tmp_path: Path, hl7v2_validate: Validate) -> None:
    ingest(tmp_path)
    for name in ("concern", "concern-amended", "concern-withdrawn"):
        submit_review(load_review(name, notes=HOSTILE), Settings(), out_dir=tmp_path)
    files = sorted((tmp_path / "hl7").glob("Note-*.hl7"))
    assert len(files) == 7  # T02, T10, T02 + T11; three ORU^R01
    raws = [p.read_bytes() for p in files]
    results = hl7v2_validate(raws)
    assert {p.name: r.error for p, r in zip(files, results, strict=True) if not r.ok} == {}
    structures = sorted({(r.structure, r.version) for r in results})
    assert structures == [("MDM_T01", "2.5.1"), ("MDM_T02", "2.5.1"), ("ORU_R01", "2.5.1")]
    # HAPI re-encodes each message identically but for one HAPI quirk: text that looks like an
    # escape sequence (our \E\X0B\E\, the literal text "\X0B\") comes back unescaped.
    for raw, result in zip(raws, results, strict=True):
        if result.roundtrip:
            continue
        number = result.reencoded.split("|")[1]
        ours = next(s for s in raw.decode("utf-8").split("\r") if s.startswith(f"OBX|{number}|"))
        assert result.reencoded == ours.replace("\\E\\X0B\\E\\", "\\X0B\\")


def test_mllp_receiver_gets_t02_t10_t11_once_each(tmp_path: Path, hl7_receiver: Any) -> None:
    out = tmp_path / "out"
    ingest(out)
    receivers = tmp_path / "receivers"
    shutil.copytree(ROOT / "mappings" / "receivers", receivers)
    path = receivers / "document-mdm.yaml"
    data = yaml.safe_load(path.read_text())
    data["connection"].update(host="127.0.0.1", port=hl7_receiver.port)
    path.write_text(yaml.safe_dump(data))
    settings = Settings(
        # the RIS orders go to the same receiver (it acknowledges everything)
        hl7=Hl7Settings(
            mllp=True, host="127.0.0.1", port=hl7_receiver.port, receivers_dir=str(receivers)
        ),
        note=NoteSettings(outputs="diagnostic-report,document-reference,mdm"),
        outbox=OutboxSettings(path=str(out / "outbox.sqlite")),
    )
    for name in ("concern", "concern", "concern-amended", "concern-withdrawn"):
        result = submit_review(load_review(name), replace(settings), out_dir=out)
        if result.unchanged:  # the resubmission of version 1: nothing new to send
            continue
        assert result.delivery is not None and result.delivery.dead == 0
        assert result.delivery.held == 0
    received = [hl7.parse(m) for m in hl7_receiver.messages]
    documents = [m for m in received if str(m.segment("MSH")(9)).startswith("MDM")]
    by_number: dict[str, list[str]] = {}
    for m in documents:
        by_number.setdefault(str(m.segment("TXA")(12)), []).append(str(m.segment("EVN")(1)))
    number = str(documents[0].segment("TXA")(12))
    assert by_number[number] == ["T02", "T10", "T11"]
    # the withdrawal note, a new document whose TXA-13 names the cancelled one, came before T11
    (other,) = (n for n in by_number if n != number)
    assert by_number[other] == ["T02"]
    events = [str(m.segment("EVN")(1)) for m in documents]
    assert events == ["T02", "T10", "T02", "T11"]
    controls = [str(m.segment("MSH")(10)) for m in documents]
    assert len(set(controls)) == len(controls)  # once each, no resend
