"""The review note over HL7 v2 on the embedded default: MDM (T02, T10, then T02 + T11 for a
withdrawal, per the shipped ``document-mdm`` profile) and ORU^R01 written as ``.hl7`` files,
each parsed by python-hl7, with the note's lines (hostile text included) round-tripping through
OBX-5 and the PDF through the ED OBX."""

from __future__ import annotations

import base64
import json
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import hl7
import pytest
import yaml

from adapter.cli import main
from adapter.config import Hl7Settings, NoteSettings, Settings
from adapter.hl7.escape import unescape
from adapter.hl7.messages import MessageBuildError
from adapter.jobs.review import submit_review
from tests.note_support import load_review
from tests.store_backend import StoreUnderTest

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = "Pipes | carets ^ amp & tilde ~ backslash \\ looks escaped \\F\\ \\.br\\\nnew line"


def ingest(out: Path) -> None:
    assert (
        main(["ingest", str(ROOT / "fixtures" / "dicom" / "planning-ct"), "--out", str(out)]) == 0
    )


def messages(out: Path, pattern: str) -> dict[str, Any]:
    return {
        p.name: hl7.parse(p.read_bytes().decode("utf-8"))
        for p in sorted((out / "hl7").glob(pattern), key=lambda p: p.stat().st_mtime_ns)
    }


def obx_lines(message: Any) -> list[str]:
    return [unescape(str(s(5))) for s in message.segments("OBX") if str(s(2)) == "TX"]


def submit(name: str, out: Path, settings: Settings | None = None, **changes: Any) -> Any:
    return submit_review(load_review(name, **changes), settings or Settings(), out_dir=out)


@pytest.mark.store
def test_embedded_default_writes_every_output(tmp_path: Path) -> None:
    ingest(tmp_path)
    first = submit("concern", tmp_path, notes=HOSTILE)
    assert first.delivery is not None and first.delivery.dead == 0
    names = sorted(p.name for p in (tmp_path / "fhir").glob("*.json"))
    assert [n.split("-")[0] for n in names] == ["ImagingStudy", "Note", "Review"]
    note = json.loads(next((tmp_path / "fhir").glob("Note-*.json")).read_text())
    assert note["entry"][0]["resource"]["resourceType"] == "DocumentReference"
    (t02,) = messages(tmp_path, "Note-*-T02.hl7").values()
    (r01,) = messages(tmp_path, "Note-*-R01.hl7").values()
    text = base64.b64decode(note["entry"][0]["resource"]["content"][0]["attachment"]["data"])
    expected = text.decode("utf-8").rstrip("\n").split("\n")
    assert obx_lines(t02) == expected  # every line, hostile text included, round-trips
    assert obx_lines(r01) == expected
    assert HOSTILE.split("\n")[0] in "\n".join(expected)
    ed = next(s for s in t02.segments("OBX") if str(s(2)) == "ED")
    assert str(ed(5)).split("^")[1:4] == ["AP", "PDF", "Base64"]
    pdf = base64.b64decode(str(ed(5)).split("^")[4])
    assert pdf == base64.b64decode(note["entry"][0]["resource"]["content"][1]["attachment"]["data"])
    txa = t02.segment("TXA")
    assert str(txa(12)).startswith("RN") and str(txa(17)) == "AU" and str(txa(19)) == "AV"
    assert str(t02.segment("MSH")(9)) == "MDM^T02^MDM_T02"
    assert str(r01.segment("OBR")(25)) == "F"


@pytest.mark.store
def test_amendment_then_withdrawal_sequence(tmp_path: Path) -> None:
    ingest(tmp_path)
    submit("concern", tmp_path)
    submit("concern", tmp_path)  # a resubmission: nothing new for the receiver
    submit("concern-amended", tmp_path)
    submit("concern-withdrawn", tmp_path)
    mdm = messages(tmp_path, "Note-*-T*.hl7")
    events = [str(m.segment("MSH")(9)) for m in mdm.values()]
    assert events == ["MDM^T02^MDM_T02", "MDM^T10^MDM_T02", "MDM^T02^MDM_T02", "MDM^T11^MDM_T01"]
    first, amended, withdrawal, cancel = mdm.values()
    number = str(first.segment("TXA")(12))
    assert str(amended.segment("TXA")(12)) == number == str(cancel.segment("TXA")(12))
    # the withdrawal note is a new document naming the one it ends; the cancel marks that one
    # obsolete, so the EHR is never left without the documented review
    assert str(withdrawal.segment("TXA")(13)) == number
    assert str(withdrawal.segment("TXA")(12)) != number
    assert any("CONCERN WITHDRAWN" in line for line in obx_lines(withdrawal))
    assert str(cancel.segment("TXA")(19)) == "OB" and "concern withdrawn" in str(
        cancel.segment("TXA")(21)
    )
    assert [str(seg[0]) for seg in cancel] == ["MSH", "EVN", "PID", "PV1", "TXA"]  # no content
    oru = messages(tmp_path, "Note-*-R01.hl7")
    assert [str(m.segment("OBR")(25)) for m in oru.values()] == ["F", "C", "C"]


def _profiles(tmp_path: Path, **document: str) -> Path:
    folder = tmp_path / "receivers"
    shutil.copytree(ROOT / "mappings" / "receivers", folder)
    path = folder / "document-mdm.yaml"
    data = yaml.safe_load(path.read_text())
    data["document"].update(document)
    path.write_text(yaml.safe_dump(data))
    return folder


@pytest.mark.store
def test_profile_chooses_t08_and_withdrawal_by_replacement(tmp_path: Path) -> None:
    out = tmp_path / "out"
    ingest(out)
    receivers = _profiles(tmp_path, amendment_event="T08", withdrawal_event="T10", content="ED")
    settings = Settings(
        hl7=Hl7Settings(receivers_dir=str(receivers)),
        note=NoteSettings(outputs="document-reference,mdm"),
    )
    for name in ("concern", "concern-amended", "concern-withdrawn"):
        submit(name, out, settings)
    mdm = messages(out, "Note-*-T*.hl7")
    assert [str(m.segment("EVN")(1)) for m in mdm.values()] == ["T02", "T08", "T10"]
    assert len({str(m.segment("TXA")(12)) for m in mdm.values()}) == 1
    assert all(str(m.segment("TXA")(3)) == "AP" for m in mdm.values())
    assert all([str(s(2)) for s in m.segments("OBX")] == ["ED"] for m in mdm.values())
    assert not list((out / "hl7").glob("*-R01.hl7"))  # oru not chosen
    assert list((out / "fhir").glob("Review-*.json"))  # the review Bundle is still written


@pytest.mark.store
def test_a_profile_of_the_wrong_kind_is_a_clear_error(tmp_path: Path) -> None:
    ingest(tmp_path)
    settings = Settings(
        note=NoteSettings(outputs="diagnostic-report,mdm", mdm_receiver="default-ris")
    )
    from adapter.errors import ConfigError

    with pytest.raises(ConfigError, match=r"note\.mdm_receiver"):
        submit("concern", tmp_path, settings)


def test_document_profile_is_not_an_order_profile() -> None:
    from datetime import UTC, datetime

    from adapter.hl7.messages import build_order
    from adapter.hl7.profiles import load_profiles
    from tests.golden.test_hl7_golden import TRICKY_ORDER

    profile = load_profiles(ROOT / "mappings" / "receivers")["document-mdm"]
    with pytest.raises(MessageBuildError, match="MSH-9"):
        build_order(TRICKY_ORDER, profile, control_id="X1", now=datetime.now(UTC))


def test_unknown_document_key_names_file_and_key(tmp_path: Path) -> None:
    from adapter.errors import MappingTableError
    from adapter.hl7.profiles import load_profiles

    folder = _profiles(tmp_path, content="PDF")
    with pytest.raises(MappingTableError, match=r"document-mdm\.yaml: document\.content"):
        load_profiles(folder)
    data = yaml.safe_load((folder / "default-ris.yaml").read_text())
    data["document"] = {"content": "TX"}
    (folder / "document-mdm.yaml").unlink()
    (folder / "default-ris.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(MappingTableError, match=r"default-ris\.yaml: document"):
        load_profiles(folder)


def test_settings_replace_keeps_defaults() -> None:
    assert replace(Settings()).note.mdm_receiver == "document-mdm"


@pytest.mark.store
def test_an_unencodable_note_stores_nothing(tmp_path: Path, store: StoreUnderTest) -> None:
    """A note the receiver's charset cannot carry is refused before any row of the review is
    stored: the command fails cleanly and nothing half-done waits in the outbox."""
    from adapter.store.outbox import Outbox

    out = tmp_path / "out"
    ingest(out)
    folder = _profiles(tmp_path)
    path = folder / "document-mdm.yaml"
    data = yaml.safe_load(path.read_text())
    data["charset"] = "8859/1"
    path.write_text(yaml.safe_dump(data))
    settings = Settings(hl7=Hl7Settings(receivers_dir=str(folder)))
    with Outbox(store.at(out / "outbox.sqlite")) as outbox:
        before = len(outbox.rows_for_key(f"study:{_uid()}"))
    with pytest.raises(MessageBuildError, match="OBX-5: has a character that 8859/1 cannot encode"):
        submit("concern", out, settings, notes="肝臓")
    with Outbox(store.at(out / "outbox.sqlite")) as outbox:
        assert len(outbox.rows_for_key(f"study:{_uid()}")) == before


def _uid() -> str:
    return str(load_review("concern")["study_instance_uid"])
