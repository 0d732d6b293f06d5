"""ACK parsing (never raises), ACK building, and inbound ORU/ORR/ORG/ORI reading."""

from __future__ import annotations

import pytest

from adapter.hl7.ack import build_ack, parse_ack
from adapter.hl7.inbound import InboundParseError, parse_inbound
from tests.golden.test_hl7_golden import NOW

ACK_231 = (
    b"MSH|^~\\&|RIS|RAD|RTPLAN|ONC|20250101||ACK^O01|A9|P|2.3.1\r"
    b"MSA|AE|C42|bad \\F\\ id\rERR|PID^1^3^101&Required field missing\r"
)
ACK_251 = (
    b"MSH|^~\\&|RIS|RAD|RTPLAN|ONC|20250101||ACK^O19^ACK|A9|P|2.5.1\rMSA|AR|C42\r"
    b"ERR||ORC^1^2|204^Unknown key^HL70357|E\r"
)


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x0b\x1c\r", b"garbage", b"MSH|^~\\&|x", b"MSH|^~\\&|a|b|c|d|e||ACK|1|P|2.5\r",
     b"MSH|^~\\&|a|b|c|d|e||ACK|1|P|2.5\rMSA|ZZ|1\r", b"MSH|^~\\&|a|b|c|d|e||ACK|1|P|2.5\rMSA|AA\r",
     b"\xff\xfe\x00", b"MSH"],
)  # fmt: skip
def test_garbage_ack_is_invalid_not_an_exception(raw: bytes) -> None:
    ack = parse_ack(raw)
    assert not ack.valid and ack.problem and not ack.accepted


def test_ack_fields_and_errors() -> None:
    a = parse_ack(ACK_231)
    assert (a.valid, a.code, a.control_id, a.text) == (True, "AE", "C42", "bad | id")
    assert a.errors[0].code == "101" and a.errors[0].location == "PID-3"
    b = parse_ack(b"\x0b" + ACK_251 + b"\x1c\r")
    assert b.code == "AR" and b.errors[0].code == "204" and b.errors[0].location == "ORC-2"
    assert b.acknowledges("C42") and not b.acknowledges("C43")
    ok = parse_ack(b"MSH|^~\\&|a|b|c|d|e||ACK|1|P|2.5\rMSA|AA|C1\r")
    assert ok.accepted and ok.acknowledges("C1")


def test_build_ack_swaps_sender_and_receiver_and_echoes_control_id() -> None:
    inbound = (
        b"MSH|^~\\&|RIS|RAD|RTPLAN|ONC|20250101||ORU^R01^ORU_R01|M77|P|2.5.1||||||8859/1\rPID|||1\r"
    )
    raw = build_ack(inbound, "AE", control_id="OUR1", now=NOW, text="unknown order",
                    error_code="204", error_location=("OBR", 2))  # fmt: skip
    assert raw.startswith(
        b"MSH|^~\\&|RTPLAN|ONC|RIS|RAD|20250330013000+0100||ACK^R01^ACK|OUR1|P|2.5.1"
    )
    back = parse_ack(raw)
    assert (back.code, back.control_id, back.text) == ("AE", "M77", "unknown order")
    assert back.errors[0].code == "204" and back.errors[0].location == "OBR-2"
    ar = parse_ack(build_ack(b"\x00junk", "AR", control_id="X", now=NOW, error_code="100"))
    assert ar.code == "AR" and not ar.valid  # no MSA-2 possible: there was no MSH-10


ORU = (
    "MSH|^~\\&|RIS|RAD|RTPLAN|ONC|20250101||ORU^R01^ORU_R01|R1|P|2.5.1||||||UNICODE UTF-8\r"
    "PID|||MRN1^^^HOSP^MR\rORC|RE|SR-1^RTPLAN|F-9^RIS||CM\r"
    "OBR|1|SR-1^RTPLAN|F-9^RIS|RTPLANREVIEW|||20250102103000" + "|" * 18 + "F\r"
    "OBX|1|UI|110180^Study Instance UID^DCM||1.2.3.4\r"
    "OBX|2|TX|SR Text||Findings: nodule \\T\\ node.~Impression: benign Zoë.\r"
    "OBX|3|FT|SR Text||Line\\.br\\two\r"
).encode("utf-8")


def test_parse_oru() -> None:
    m = parse_inbound(ORU)
    assert (m.message_type, m.control_id, m.placer_order_number, m.placer_namespace) == (
        "ORU^R01", "R1", "SR-1", "RTPLAN")  # fmt: skip
    assert m.filler_order_number == "F-9" and m.order_control == "RE" and m.order_status == "CM"
    assert m.report_text == "Findings: nodule & node.\nImpression: benign Zoë.\nLine\ntwo"
    assert m.result_status == "F" and m.observation_time == "20250102103000"
    assert m.study_instance_uid == "1.2.3.4" and m.ack is None


def test_parse_order_response_with_msa() -> None:
    raw = (b"MSH|^~\\&|RIS|RAD|RTPLAN|ONC|20250101||ORG^O20^ORG_O20|G1|P|2.5.1\r"
           b"MSA|AA|C42\rORC|OK|SR-1^RTPLAN|F-9^RIS||SC\r")  # fmt: skip
    m = parse_inbound(raw)
    assert m.message_type == "ORG^O20" and m.order_control == "OK" and m.order_status == "SC"
    assert m.ack is not None and m.ack.accepted and m.ack.control_id == "C42"


@pytest.mark.parametrize(
    ("raw", "location", "code"),
    [
        (b"garbage", "MSH", "100"),
        (b"MSH|^~\\&|a|b|c|d|e||ADT^A01|1|P|2.5.1\r", "MSH-9", "200"),
        (b"MSH|^~\\&|a|b|c|d|e||ORU^R01|1|P|2.5.1\rOBR|1\r", "OBR-2", "101"),
    ],
)
def test_inbound_errors_name_the_field(raw: bytes, location: str, code: str) -> None:
    with pytest.raises(InboundParseError) as err:
        parse_inbound(raw)
    assert err.value.location == location and err.value.error_code == code
