"""Order messages: where each piece goes, cancels, charsets, ACK modes, and hl7apy STRICT."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import hl7
import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from adapter.errors import MappingTableError
from adapter.hl7.ack import build_ack
from adapter.hl7.escape import unescape
from adapter.hl7.messages import MessageBuildError, build_order, segment_names
from adapter.hl7.preview import preview
from adapter.hl7.profiles import load_profiles, parse_profile
from tests.golden.test_hl7_golden import CONTROL_ID, NOW, PROFILES, ROOT, TRICKY_ORDER

ORM, OMG, OMI = PROFILES["default-ris"], PROFILES["swfb-ris"], PROFILES["imaging-procedure-control"]


def parsed(profile_name: str, control: str = "NW") -> hl7.Message:
    profile = PROFILES[profile_name]
    raw = build_order(replace(TRICKY_ORDER, control=control), profile, control_id="C1", now=NOW)  # type: ignore[arg-type]
    return hl7.parse(raw.decode(profile.codec))


def test_segment_order_per_profile() -> None:
    order = TRICKY_ORDER
    assert segment_names(build_order(order, ORM, control_id="1", now=NOW)) == [
        "MSH", "PID", "PV1", "ORC", "OBR", "NTE", "NTE", "ZDS"]  # fmt: skip
    assert segment_names(build_order(order, OMG, control_id="1", now=NOW)) == [
        "MSH", "PID", "PV1", "ORC", "TQ1", "OBR", "NTE", "NTE", "ZDS"]  # fmt: skip
    assert segment_names(build_order(order, OMI, control_id="1", now=NOW)) == [
        "MSH", "PID", "PV1", "ORC", "TQ1", "OBR", "NTE", "NTE", "IPC"]  # fmt: skip


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_common_fields(name: str) -> None:
    m = parsed(name)
    msh, pid, orc, obr = (m.segment(s) for s in ("MSH", "PID", "ORC", "OBR"))
    assert str(msh(10)) == "C1" and str(msh(11)) == "P"
    assert str(msh(18)) == PROFILES[name].charset
    assert str(msh(9)) == {"ORM^O01": "ORM^O01^ORM_O01", "OMG^O19": "OMG^O19^OMG_O19",
                           "OMI^O23": "OMI^O23^OMI_O23"}[PROFILES[name].message]  # fmt: skip
    assert unescape(str(pid(3)(1)(1))) == "MRN^0042"
    assert unescape(str(pid(3)(1)(4))) == "HOSP&MRN" and str(pid(3)(1)(5)) == "MR"
    assert str(pid(3)(2)(1)) == "9434765919" and str(pid(3)(2)(5)) == "NH"
    assert str(pid(7)) == "19500203" and str(pid(8)) == "F"
    assert str(m.segment("PV1")(2)) == "O"
    assert str(orc(1)) == "NW"
    assert unescape(str(orc(2)(1)(1))) == "SR-2025|0042" and str(orc(2)(1)(2)) == "RTPLAN"
    assert str(orc(9)) == "20250330012900+0100"
    assert str(obr(2)) == str(orc(2))
    assert str(obr(4)(1)(1)) == "RTPLANREVIEW"
    assert unescape(str(obr(31)(1)(2))) == "Upper lobe, bronchus or lung | staging"
    assert unescape(str(m.segment("NTE")(3))) == TRICKY_ORDER.concern_text


def test_orm_priority_and_ids() -> None:
    m = parsed("default-ris")
    orc, obr = m.segment("ORC"), m.segment("OBR")
    assert str(orc(7)(1)(6)) == "A" and str(obr(27)(1)(6)) == "A"
    # The reviewed study's accession is not this new order's: OBR-18 stays empty.
    assert str(obr(18)) == "" and str(obr(19)) == "" and str(obr(20)) == ""
    assert str(obr(24)) == "RAD"  # table 0074, not the DICOM modality
    with_ids = replace(ORM, defaults=replace(ORM.defaults, study_ids="obr"))
    raw = build_order(TRICKY_ORDER, with_ids, control_id="C1", now=NOW)
    obr = hl7.parse(raw.decode("utf-8")).segment("OBR")
    assert str(obr(18)) == "" and str(obr(19)) == "RP0042" and str(obr(20)) == "SPS0042"
    assert str(m.segment("ZDS")(1)) == "1.2.826.0.1.3680043.8.498.42^100^Application^DICOM"
    assert str(m.segment("MSH")(15)) == "" and str(m.segment("MSH")(16)) == ""


def test_omg_enhanced_mode_and_tq1() -> None:
    m = parsed("swfb-ris")
    assert str(m.segment("MSH")(15)) == "AL" and str(m.segment("MSH")(16)) == "AL"
    assert str(m.segment("TQ1")(9)(1)(1)) == "A"
    assert str(m.segment("ORC")(5)) == ""


def test_omi_ipc_and_orc5() -> None:
    m = parsed("imaging-procedure-control")
    ipc = m.segment("IPC")
    assert unescape(str(ipc(1))) == "ACC&0042" and str(ipc(2)) == "RP0042"
    assert str(ipc(3)) == TRICKY_ORDER.study_instance_uid and str(ipc(4)) == "SPS0042"
    assert str(ipc(5)(1)(1)) == "CT"
    assert str(m.segment("ORC")(5)) == "SC"
    assert str(m.segment("OBR")(18)) == ""
    cancel = parsed("imaging-procedure-control", "CA")
    assert str(cancel.segment("ORC")(1)) == "CA" and str(cancel.segment("ORC")(5)) == "CA"


def test_latin1_bytes_really_latin1_and_unencodable_named() -> None:
    raw = build_order(TRICKY_ORDER, OMG, control_id="1", now=NOW)
    assert "Søren".encode("iso-8859-1") in raw
    with pytest.raises(MessageBuildError) as err:
        build_order(replace(TRICKY_ORDER, concern_text="日本"), OMG, control_id="1", now=NOW)
    assert err.value.location == "NTE-3" and "日本" not in str(err.value)
    assert "U+65E5 CJK UNIFIED IDEOGRAPH-65E5" in str(err.value)
    lossy = replace(OMG, unencodable="replace")
    assert b"NTE|1||?" in build_order(replace(TRICKY_ORDER, concern_text="日本"), lossy,
                                      control_id="1", now=NOW)  # fmt: skip


def test_resend_is_identical_and_missing_pieces_named() -> None:
    a = build_order(TRICKY_ORDER, ORM, control_id=CONTROL_ID, now=NOW)
    assert a == build_order(TRICKY_ORDER, ORM, control_id=CONTROL_ID, now=NOW)
    with pytest.raises(MessageBuildError, match="IPC-1"):
        build_order(replace(TRICKY_ORDER, accession_number=""), OMI, control_id="1", now=NOW)
    with pytest.raises(MessageBuildError, match="PID-3"):
        no_ids = replace(TRICKY_ORDER.patient, identifiers=())
        build_order(replace(TRICKY_ORDER, patient=no_ids), ORM, control_id="1", now=NOW)
    with pytest.raises(MessageBuildError, match="MSH-10"):
        build_order(TRICKY_ORDER, ORM, control_id="x" * 21, now=NOW)


def strict(raw: bytes, codec: str = "utf-8") -> None:
    msg = parse_message(
        raw.decode(codec), validation_level=VALIDATION_LEVEL.STRICT, find_groups=True
    )
    assert msg.validate()


@pytest.mark.parametrize("control", ["NW", "CA"])
def test_hl7apy_strict_accepts_omi_and_omg(control: str) -> None:
    order = replace(TRICKY_ORDER, control=control)  # type: ignore[arg-type]
    strict(build_order(order, OMI, control_id="1", now=NOW))
    strict(build_order(order, OMG, control_id="1", now=NOW), "iso-8859-1")


def test_hl7apy_strict_accepts_our_acks() -> None:
    order = build_order(TRICKY_ORDER, OMI, control_id="ORD1", now=NOW)
    strict(build_ack(order, "AA", control_id="A1", now=NOW))
    strict(build_ack(order, "AE", control_id="A2", now=NOW, text="unknown order",
                     error_code="204", error_location=("ORC", 2)))  # fmt: skip


def test_profile_errors_name_file_and_key(tmp_path: Path) -> None:
    base = {"name": "x", "sending": {"application": "A"}, "receiving": {"application": "B"}}
    bad = [
        ({**base, "colour": 1}, "colour"),
        ({**base, "message": "ADT^A01"}, "message"),
        ({**base, "message": "OMG^O19", "version": "2.3.1"}, "version"),
        ({**base, "charset": "UTF8"}, "charset"),
        ({**base, "ack": {"mode": "original", "commit_only": True}}, "ack.commit_only"),
        ({**base, "connection": {"ack_timeout": "soon"}}, "connection.ack_timeout"),
        ({**base, "connection": {"tls": {"cert": "c.pem"}}}, "connection.tls.cert"),
        ({**base, "escalation": {"t1_no_aa": "0s"}}, "escalation.t1_no_aa"),
        ({"name": "x", "receiving": {"application": "B"}}, "sending.application"),
    ]
    for data, key in bad:
        with pytest.raises(MappingTableError) as err:
            parse_profile(data, "x.yaml")
        assert err.value.file == "x.yaml" and err.value.row == key, (key, str(err.value))
    (tmp_path / "other.yaml").write_text(
        "name: x\nsending: {application: A}\nreceiving: {application: B}\n"
    )
    with pytest.raises(MappingTableError, match=r"other\.yaml: name"):
        load_profiles(tmp_path)


def test_shipped_profiles_load() -> None:
    profiles = load_profiles(ROOT / "mappings" / "receivers")
    assert {p.message for p in profiles.values()} == {
        "ORM^O01", "OMG^O19", "OMI^O23", "MDM^T02", "ORU^R01"
    }  # fmt: skip
    assert profiles["default-ris"].version == "2.3.1"
    assert profiles["swfb-ris"].escalation.t2_no_result.days == 2


def test_preview_shows_lines() -> None:
    text = preview(TRICKY_ORDER.to_json(), "default-ris", ROOT / "mappings" / "receivers", now=NOW)
    assert text.splitlines()[0].startswith("MSH|^~\\&|RTPLAN|ONCOLOGY|RIS|RADIOLOGY|")
    assert "|PREVIEW|" in text and len(text.splitlines()) == 8
