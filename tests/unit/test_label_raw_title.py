"""The pre-send title check on raw bytes (``adapter.label.raw_title`` and
``adapter.label.delivery.checked_bytes``) against the pydicom check it replaces
(``checked_document``: ``dcmread`` + ``refuse_rejection_title`` + the row's SOP Instance UID):
the same verdict, word for word, on our own documents and on hostile ones from "another writer"
(rejection titles, undefined lengths, titles hidden in nested sequences, other character sets,
other transfer syntaxes, broken structure), and a Hypothesis property over title codes, schemes,
paddings, character sets and length forms. Every document the raw check does not read exactly
goes to pydicom (the tests say which)."""

from __future__ import annotations

import base64
import warnings
from collections.abc import Callable
from io import BytesIO
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

from adapter.label.delivery import checked_bytes, checked_document
from adapter.label.raw_title import Defer, checked_title
from adapter.label.titles import REJECTION_TITLE_CODES, RejectionTitleRefused
from adapter.store.labels import KIND_KOS
from tests.support import FIXTURES

GOLDEN = FIXTURES / "expected" / "kos"
ALLOWED = frozenset({"DCM|128198"})


def golden(case: str = "planning-ct") -> Dataset:
    return dcmread(GOLDEN / f"{case}.kos.dcm")


def encoded(ds: Dataset, *, implicit: bool = False) -> bytes:
    if implicit:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def row(data: bytes, sop_uid: str) -> Any:
    payload = {"document": base64.b64encode(data).decode(), "sop_instance_uid": sop_uid,
               "study_uid": "1.2.3", "instance_number": 1}  # fmt: skip
    return SimpleNamespace(kind=KIND_KOS, payload=payload)


def verdict(check: Callable[[Any, frozenset[str]], Any], data: bytes, sop_uid: str) -> str:
    try:
        check(row(data, sop_uid), ALLOWED)
    except RejectionTitleRefused as exc:
        return f"refused: {exc}"
    except Exception as exc:
        return f"error: {type(exc).__name__}"
    return "sent"


def raw_only(data: bytes) -> str:
    try:
        return f"sent {checked_title(data, ALLOWED)}"
    except RejectionTitleRefused as exc:
        return f"refused: {exc}"
    except Defer:
        return "deferred"


def assert_same_verdict(data: bytes, sop_uid: str, *, deferred: bool) -> str:
    """Both checks agree; the raw one decided by itself unless ``deferred``."""
    reference = verdict(lambda r, a: checked_document(r, a), data, sop_uid)
    assert verdict(checked_bytes, data, sop_uid) == reference
    assert (raw_only(data) == "deferred") is deferred, raw_only(data)
    return reference


def titled(code: str, scheme: str = "DCM", case: str = "planning-ct") -> Dataset:
    ds = golden(case)
    ds.ConceptNameCodeSequence[0].CodeValue = code
    ds.ConceptNameCodeSequence[0].CodingSchemeDesignator = scheme
    return ds


def undefined_lengths(ds: Dataset) -> Dataset:
    """Every sequence and item of undefined length, as some writers do."""
    for element in ds.iterall():
        if element.VR == "SQ":
            element.is_undefined_length = True
            for item in element.value:
                item.is_undefined_length_sequence_item = True
    return ds


@pytest.mark.parametrize("case", ["planning-ct", "charset-latin1", "charset-utf8", "pet-ct"])
def test_our_own_documents_are_sent_without_pydicom(case: str) -> None:
    ds = golden(case)
    data = (GOLDEN / f"{case}.kos.dcm").read_bytes()
    assert assert_same_verdict(data, str(ds.SOPInstanceUID), deferred=False) == "sent"
    assert checked_bytes(row(data, str(ds.SOPInstanceUID)), ALLOWED) == data


def test_the_iso_2022_document_goes_to_pydicom_and_is_sent() -> None:
    ds = golden("charset-jp")
    data = (GOLDEN / "charset-jp.kos.dcm").read_bytes()
    assert assert_same_verdict(data, str(ds.SOPInstanceUID), deferred=True) == "sent"


@pytest.mark.parametrize("code", sorted(REJECTION_TITLE_CODES))
@pytest.mark.parametrize("scheme", ["DCM", "99LOCAL", ""])
def test_a_rejection_title_from_another_writer_is_refused(code: str, scheme: str) -> None:
    for ds in (titled(code, scheme), undefined_lengths(titled(code, scheme))):
        found = assert_same_verdict(encoded(ds), str(ds.SOPInstanceUID), deferred=False)
        assert found.startswith("refused:") and "rejection title" in found


@pytest.mark.parametrize("value", ["113001 ", " 113001", "113001\x00", "128198\x00"])
def test_padded_codes_read_as_pydicom_reads_them(value: str) -> None:
    ds = titled("X")
    item = ds.ConceptNameCodeSequence[0]
    item["CodeValue"].value = value
    data = encoded(ds)
    expected = "rejection title" if value.strip("\0 ") == "113001" else None
    found = assert_same_verdict(data, str(ds.SOPInstanceUID), deferred=False)
    if expected:
        assert expected in found
    else:
        assert found == "sent"


def test_a_title_hidden_in_a_nested_sequence_does_not_count_as_the_title() -> None:
    """No top-level title, an allowed one only inside a content item: refused by both."""
    ds = golden()
    del ds.ConceptNameCodeSequence
    found = assert_same_verdict(encoded(ds), str(ds.SOPInstanceUID), deferred=False)
    assert found == "refused: the KOS has no single document title (0040,A043)"


def test_a_rejection_code_nested_below_an_allowed_title_gets_the_pydicom_verdict() -> None:
    """The check (both forms) judges the document title, the top-level (0040,A043): a code
    inside a content item is not a title, and both forms agree on that."""
    ds = golden()
    ds.ContentSequence[0].ConceptNameCodeSequence[0].CodeValue = "113001"
    assert assert_same_verdict(encoded(ds), str(ds.SOPInstanceUID), deferred=False) == "sent"


def test_a_title_item_with_a_nested_allowed_code_is_judged_by_its_own_code() -> None:
    ds = titled("113037")
    nested = Dataset()
    nested.CodeValue, nested.CodingSchemeDesignator, nested.CodeMeaning = "128198", "DCM", "x"
    ds.ConceptNameCodeSequence[0].EquivalentCodeSequence = Sequence([nested])
    for form in (ds, undefined_lengths(ds)):
        found = assert_same_verdict(encoded(form), str(ds.SOPInstanceUID), deferred=False)
        assert "113037 is a rejection title" in found


def test_two_titles_or_an_empty_title_are_refused() -> None:
    ds = golden()
    ds.ConceptNameCodeSequence.append(ds.ConceptNameCodeSequence[0])
    found = assert_same_verdict(encoded(ds), str(ds.SOPInstanceUID), deferred=False)
    assert found.startswith("refused: the KOS has no single document title")
    ds.ConceptNameCodeSequence = Sequence()
    found = assert_same_verdict(encoded(ds), str(ds.SOPInstanceUID), deferred=False)
    assert found.startswith("refused: the KOS has no single document title")


@pytest.mark.parametrize(
    ("charset", "deferred"),
    [("ISO_IR 100", False), ("ISO_IR 192", False), ("ISO_IR 144", False),
     ("\\ISO 2022 IR 87", True), ("GB18030", True)],
)  # fmt: skip
def test_a_rejection_title_in_another_character_set_is_refused(
    charset: str, deferred: bool
) -> None:
    ds = titled("113038")
    ds.SpecificCharacterSet = charset.split("\\") if "\\" in charset else charset
    found = assert_same_verdict(encoded(ds), str(ds.SOPInstanceUID), deferred=deferred)
    assert "113038 is a rejection title" in found


def test_a_scheme_outside_ascii_is_not_allowed() -> None:
    ds = titled("128198", "DCM\u00c4")
    ds.SpecificCharacterSet = "ISO_IR 100"
    found = assert_same_verdict(encoded(ds), str(ds.SOPInstanceUID), deferred=False)
    assert "not on the allow-list" in found


def test_an_implicit_vr_document_goes_to_pydicom_and_is_refused() -> None:
    ds = titled("113001")
    found = assert_same_verdict(encoded(ds, implicit=True), str(ds.SOPInstanceUID), deferred=True)
    assert "rejection title" in found


def test_odd_value_representations_go_to_pydicom() -> None:
    ds = titled("113039")
    data = encoded(ds)
    un = data.replace(b"\x08\x00\x00\x01SH\x06\x00113039", b"\x08\x00\x00\x01UN\x06\x00113039")
    assert un != data
    # UN has a 4-byte length: this is now broken structure or a converted value; pydicom decides.
    assert_same_verdict(un, str(ds.SOPInstanceUID), deferred=True)
    multi = titled("113001\\128198")
    found = assert_same_verdict(encoded(multi), str(multi.SOPInstanceUID), deferred=True)
    assert found.startswith("refused:")


def test_broken_documents_go_to_pydicom() -> None:
    ds = titled("128198")
    data = encoded(ds)
    sop = str(ds.SOPInstanceUID)
    for broken in (data[:-7], data[128:], data[:200], data + b"\x00\x00"):
        assert_same_verdict(broken, sop, deferred=True)


def test_a_document_of_another_row_is_refused() -> None:
    data = (GOLDEN / "planning-ct.kos.dcm").read_bytes()
    found = assert_same_verdict(data, "1.2.3", deferred=False)
    assert found == "refused: the stored document is not the row's KOS"
    ds = golden()
    uid = str(ds.SOPInstanceUID).encode()
    at = data.index(b"\x08\x00\x18\x00UI") + 8  # (0008,0018), not the File Meta's copy
    odd = data[:at] + uid[:-2] + b"\xe9\x00" + data[at + len(uid) :]  # not ASCII
    assert odd != data
    with warnings.catch_warnings():  # pydicom warns about the invalid UID, as in production
        warnings.simplefilter("ignore")
        found = assert_same_verdict(odd, str(ds.SOPInstanceUID), deferred=False)
    assert found == "refused: the stored document is not the row's KOS"


codes = st.one_of(
    st.sampled_from(["128198", *sorted(REJECTION_TITLE_CODES), "", "12819", "1130010"]),
    st.text("0123456789", min_size=1, max_size=8),
)
pads = st.sampled_from(["", " ", "  ", "\x00", " \x00"])
schemes = st.sampled_from(["DCM", "DCM ", "SCT", "99X", "dcm", "", "DCM\u00c4"])
charsets = st.sampled_from([None, "ISO_IR 100", "ISO_IR 101", "ISO_IR 192", "ISO_IR 126"])


@settings(max_examples=150, deadline=None)
@given(codes, pads, schemes, charsets, st.booleans(), st.booleans())
def test_the_raw_verdict_is_the_pydicom_verdict(
    code: str, pad: str, scheme: str, charset: str | None, undefined: bool, hide: bool
) -> None:
    ds = titled("X")
    item = ds.ConceptNameCodeSequence[0]
    item["CodeValue"].value = code + pad
    if charset == "ISO_IR 126" and not scheme.isascii():
        scheme = "DCM\u03b1"  # Greek has no A-umlaut: a Greek letter instead
    item.CodingSchemeDesignator = scheme
    if charset:
        ds.SpecificCharacterSet = charset
    if hide:  # the same code again as a nested content item's concept name
        ds.ContentSequence[0].ConceptNameCodeSequence[0].CodeValue = code
    if undefined:
        undefined_lengths(ds)
    found = assert_same_verdict(encoded(ds), str(ds.SOPInstanceUID), deferred=False)
    if code in REJECTION_TITLE_CODES:
        assert "rejection title" in found
