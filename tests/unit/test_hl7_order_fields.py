"""Order fields from issue 10: PID-5 name groups per charset, the structured ordering provider,
notes, changes (XO) and cancels (ORC-3/ORC-16, priority), transliteration, and the HL7 tables
of each version (MSH-18, OBR-24, OBR-31) checked against hl7apy's copy of the HL7 tables."""

from __future__ import annotations

from dataclasses import replace
from importlib import import_module

import hl7
import pytest

from adapter.errors import MappingTableError
from adapter.hl7.charset_fit import TRANSLITERATION_NOTE, transliterate
from adapter.hl7.escape import unescape
from adapter.hl7.messages import MessageBuildError, build_order
from adapter.hl7.model import OrderPatient, PersonNameGroup
from adapter.hl7.profiles import (
    CHARSETS_BY_VERSION,
    CODING_SYSTEMS,
    SERVICE_SECTIONS,
    VERSIONS,
    parse_profile,
)
from adapter.review.orders import name_groups
from tests.golden.test_hl7_golden import NOW, PROFILES, TRICKY_ORDER

ORM, OMG, OMI = PROFILES["default-ris"], PROFILES["swfb-ris"], PROFILES["imaging-procedure-control"]
JAPANESE = OrderPatient(
    TRICKY_ORDER.patient.identifiers,
    birth_date="1960-01-02",
    sex="M",
    names=name_groups("Yamada^Tarou=山田^太郎=やまだ^たろう"),
)


def parse(raw: bytes, codec: str) -> hl7.Message:
    return hl7.parse(raw.decode(codec))


def test_dicom_pn_groups_become_xpn_repetitions() -> None:
    groups = name_groups("Yamada^Tarou=山田^太郎=やまだ^たろう")
    assert [g.representation for g in groups] == ["A", "I", "P"]
    assert (groups[1].family, groups[1].given) == ("山田", "太郎")
    assert name_groups("=山田^太郎")[0].representation == "I"
    assert name_groups("") == ()
    utf8 = parse(
        build_order(replace(TRICKY_ORDER, patient=JAPANESE), OMI, control_id="1", now=NOW), "utf-8"
    )
    pid5 = utf8.segment("PID")(5)
    assert [str(rep(1)) for rep in pid5] == ["Yamada", "山田", "やまだ"]
    assert [str(rep(8)) for rep in pid5] == ["A", "I", "P"] and str(pid5(1)(7)) == "L"
    # Latin-1 carries only the alphabetic group; the order is still built.
    latin = parse(
        build_order(replace(TRICKY_ORDER, patient=JAPANESE), OMG, control_id="1", now=NOW),
        "iso-8859-1",
    )
    assert [str(rep(1)) for rep in latin.segment("PID")(5)] == ["Yamada"]


def test_no_name_group_the_charset_carries_is_refused_naming_the_character() -> None:
    ideographic_only = replace(JAPANESE, names=name_groups("=山田^太郎"))
    with pytest.raises(MessageBuildError) as err:
        build_order(replace(TRICKY_ORDER, patient=ideographic_only), OMG, control_id="1", now=NOW)
    assert (
        err.value.location == "PID-5" and "U+5C71" in str(err.value) and "山" not in str(err.value)
    )
    with pytest.raises(MessageBuildError, match="PID-5"):
        nameless = replace(JAPANESE, names=())
        build_order(replace(TRICKY_ORDER, patient=nameless), ORM, control_id="1", now=NOW)


def test_identifiers_are_never_transliterated_or_replaced() -> None:
    for policy in ("replace", "transliterate"):
        profile = replace(OMG, unencodable=policy)
        with pytest.raises(MessageBuildError, match="ORC-2"):
            build_order(
                replace(TRICKY_ORDER, placer_order_number="RTÖ日"), profile, control_id="1", now=NOW
            )


def test_transliteration_keeps_the_order_flowing_and_says_so() -> None:
    profile = replace(OMG, unencodable="transliterate")
    ideographic_only = replace(JAPANESE, names=name_groups("=山田^太郎"))
    order = replace(TRICKY_ORDER, patient=ideographic_only, concern_text="Łódź 日本 nodule")
    msg = parse(build_order(order, profile, control_id="1", now=NOW), "iso-8859-1")
    assert unescape(str(msg.segment("PID")(5)(1)(1))) == "ShanTian"
    notes = [unescape(str(s(3))) for s in msg.segments("NTE")]
    assert notes[0] == "Lódz RiBen nodule"  # ó is Latin-1: kept; Ł, ź are not
    assert notes[-1] == TRANSLITERATION_NOTE.format(charset="8859/1")
    # Text the charset holds is left alone and no note is added.
    plain = parse(build_order(TRICKY_ORDER, profile, control_id="1", now=NOW), "iso-8859-1")
    assert TRANSLITERATION_NOTE.format(charset="8859/1") not in [
        unescape(str(s(3))) for s in plain.segments("NTE")
    ]
    assert transliterate("Ø", "ascii") == "O" and transliterate("Ø", "iso-8859-1") == "Ø"


def test_provider_is_structured_with_prefix_and_authority() -> None:
    msg = parse(build_order(TRICKY_ORDER, ORM, control_id="1", now=NOW), "utf-8")
    for xcn in (msg.segment("ORC")(12), msg.segment("OBR")(16)):
        assert str(xcn(1)(1)) == "ONC123" and unescape(str(xcn(1)(2))) == "Smith|Jones"
        assert unescape(str(xcn(1)(3))) == "Ann&Bo" and str(xcn(1)(6)) == "Dr"
        assert str(xcn(1)(9)) == "HOSP-STAFF"


def test_change_and_cancel_carry_what_the_receiver_needs() -> None:
    change = replace(TRICKY_ORDER, control="XO", control_reason="Amended by the oncologist")
    for profile in (ORM, OMG, OMI):
        msg = parse(build_order(change, profile, control_id="1", now=NOW), profile.codec)
        assert str(msg.segment("ORC")(1)) == "XO"
        assert str(msg.segment("ORC")(16)(1)(2)) == "Amended by the oncologist"
    assert (
        str(parse(build_order(change, OMI, control_id="1", now=NOW), "utf-8").segment("ORC")(5))
        == "SC"
    )
    cancel = replace(
        TRICKY_ORDER, control="CA", filler_order_number="F77", control_reason="withdrawn"
    )
    orm = parse(build_order(cancel, ORM, control_id="1", now=NOW), "utf-8")
    assert str(orm.segment("ORC")(3)) == "F77" and str(orm.segment("ORC")(16)(1)(2)) == "withdrawn"
    assert str(orm.segment("ORC")(7)(1)(6)) == "A"  # the priority the order was sent with
    omg = parse(build_order(cancel, OMG, control_id="1", now=NOW), "iso-8859-1")
    assert str(omg.segment("TQ1")(9)(1)(1)) == "A"


def test_snomed_reason_named_per_version() -> None:
    order = replace(TRICKY_ORDER, reason_code="94381002", reason_system="SCT")
    for profile in (ORM, OMG, OMI):
        msg = parse(build_order(order, profile, control_id="1", now=NOW), profile.codec)
        assert str(msg.segment("OBR")(31)(1)(3)) == "99SCT"


def hl7apy_table(version: str, number: str) -> set[str]:
    module = import_module(f"hl7apy.v{version.replace('.', '_')}.tables")
    found = getattr(module, "TABLES", None)
    entry = found.get(f"HL7{number}") if found else getattr(module, f"HL7{number}", None)
    return set(entry[1]) if entry else set()


@pytest.mark.parametrize("version", sorted({v for vs in VERSIONS.values() for v in vs}))
def test_our_table_values_are_in_the_versions_hl7_tables(version: str) -> None:
    assert set(CHARSETS_BY_VERSION[version]) <= hl7apy_table(version, "0211")
    assert SERVICE_SECTIONS[version] == hl7apy_table(version, "0074")
    assert CODING_SYSTEMS[version] - {"L"} <= hl7apy_table(version, "0396") or version == "2.3.1"
    assert "UNICODE UTF-8" in CHARSETS_BY_VERSION[version] or "UNICODE UTF-8" not in hl7apy_table(
        version, "0211"
    )


def test_profile_refuses_values_outside_the_versions_tables() -> None:
    base = {"name": "x", "sending": {"application": "A"}, "receiving": {"application": "B"}}
    with pytest.raises(MappingTableError, match=r"charset: is not in HL7 table 0211 of v2\.3\.1"):
        parse_profile({**base, "charset": "UNICODE UTF-8"}, "x.yaml")
    assert parse_profile(base, "x.yaml").charset == "UNICODE"
    omg = {**base, "message": "OMG^O19"}
    assert parse_profile(omg, "x.yaml").charset == "UNICODE UTF-8"
    with pytest.raises(MappingTableError, match=r"defaults\.diagnostic_service_section"):
        parse_profile({**base, "defaults": {"diagnostic_service_section": "MR"}}, "x.yaml")
    with_ids = parse_profile({**base, "defaults": {"study_ids": "obr"}}, "x.yaml")
    assert with_ids.defaults.study_ids == "obr"
    assert (
        parse_profile({**base, "updates": "cancel-replace"}, "x.yaml").updates == "cancel-replace"
    )
    with pytest.raises(MappingTableError, match=r"defaults\.study_ids"):
        parse_profile({**base, "defaults": {"study_ids": "obr18"}}, "x.yaml")
    with pytest.raises(MappingTableError, match=r"defaults\.snomed_coding_system"):
        parse_profile({**base, "defaults": {"snomed_coding_system": "SCT"}}, "x.yaml")
    assert (
        parse_profile({**base, "unencodable": "transliterate"}, "x.yaml").unencodable
        == "transliterate"
    )


def test_orders_without_names_list_still_build_from_family_given() -> None:
    old = replace(
        TRICKY_ORDER, patient=replace(TRICKY_ORDER.patient, names=(), family="Doe", given="Jane")
    )
    msg = parse(build_order(old, ORM, control_id="1", now=NOW), "utf-8")
    assert str(msg.segment("PID")(5)(1)(1)) == "Doe" and str(msg.segment("PID")(5)(1)(2)) == "Jane"
    assert PersonNameGroup().representation == "A"


def test_patient_disagreement_names_fields_only() -> None:
    from adapter.review.patient_check import disagreement
    from adapter.store.studies import StudyRecord

    record = StudyRecord("1.2", "P1", "H", "MÜLLER^JÜRGEN", "1958-04-17", "M", "", "", "")
    same = {"name": [{"family": "Müller", "given": ["Jürgen", "K"]}], "birthDate": "1958-04-17"}
    assert disagreement(same, record) == []
    assert disagreement({"name": [{"family": "Mueller"}]}, record) == ["name"]
    assert disagreement({**same, "birthDate": "1958-04-18"}, record) == ["birth date"]
    other = {"name": [{"family": "Müller", "given": ["Anna"]}], "birthDate": "1960-01-01"}
    assert disagreement(other, record) == ["name", "birth date"]
    assert disagreement({}, record) == []  # nothing to compare


def test_two_adapters_never_share_an_msh10_for_the_same_order() -> None:
    from adapter.hl7.deliverer import OrderPayload, prerender

    payload = OrderPayload("default-ris", TRICKY_ORDER.to_json())
    a = prerender(payload, profile=ORM, now=NOW)
    b = prerender(payload, profile=ORM, now=NOW)
    assert a.control_id != b.control_id and len(a.control_id) == 20
    assert a.message.replace(a.control_id.encode(), b"X") == b.message.replace(
        b.control_id.encode(), b"X"
    )
