"""Escaping free text for HL7 v2: table-driven cases, the hl7apy trap, and a property test."""

from __future__ import annotations

from dataclasses import replace

import hl7
import pytest
from hl7apy.core import Segment
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.hl7.escape import escape, unescape
from adapter.hl7.messages import build_order
from tests.golden.test_hl7_golden import CONTROL_ID, NOW, PROFILES, TRICKY_ORDER

CASES = [
    ("plain", "plain"),
    ("a|b", "a\\F\\b"),
    ("a^b", "a\\S\\b"),
    ("a&b", "a\\T\\b"),
    ("a~b", "a\\R\\b"),
    ("a\\b", "a\\E\\b"),
    ("C:\\F\\x", "C:\\E\\F\\E\\x"),  # looks like an escape: escaped, never passed through
    ("\\X0D\\", "\\E\\X0D\\E\\"),
    ("a\rb", "a\\X0D\\b"),
    ("a\nb", "a\\X0A\\b"),
    ("\x0bx\x1c", "\\X0B\\x\\X1C\\"),
    ("tab\tok", "tab\tok"),
    ("Zoë 日本", "Zoë 日本"),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_escape_table(text: str, expected: str) -> None:
    assert escape(text) == expected
    assert unescape(expected) == text


def test_formatted_text_uses_line_break_command() -> None:
    assert escape("a\nb\r\nc", formatted=True) == "a\\.br\\b\\X0D\\\\.br\\c"
    assert unescape("a\\.br\\b\\X0D\\\\.br\\c") == "a\nb\r\nc"


def test_hl7apy_plain_strings_are_wrong_which_is_why_we_escape() -> None:
    """The baseline finding (standards.md §5e): documents why escape.py exists."""
    nte = Segment("NTE", version="2.5.1")
    nte.nte_3 = "a^b&c"
    assert nte.to_er7() == "NTE|||a^b&c"  # parsed as components, not escaped


ALPHABET = st.characters(codec="utf-8", exclude_categories=("Cs",))
HOSTILE = st.sampled_from(["|", "^", "~", "\\", "&", "\r", "\n", "\x0b", "\x1c", "\\F\\", "\\.br\\",
                           "\\X0D\\", "é", "日", "\t"])  # fmt: skip
TEXT = st.lists(st.one_of(HOSTILE, st.text(ALPHABET, max_size=5)), max_size=12).map("".join)


@settings(max_examples=200, deadline=None)
@given(concern=TEXT, family=TEXT)
def test_any_text_round_trips_through_python_hl7(concern: str, family: str) -> None:
    order = replace(
        TRICKY_ORDER,
        concern_text=concern or "x",
        extra_notes=(),
        patient=replace(TRICKY_ORDER.patient, names=(), family=family or "x"),
    )
    plain = replace(order, concern_text="x", patient=replace(order.patient, family="x"))
    reference = build_order(plain, PROFILES["default-ris"], control_id=CONTROL_ID, now=NOW)
    raw = build_order(order, PROFILES["default-ris"], control_id=CONTROL_ID, now=NOW)
    assert b"\x0b" not in raw and b"\x1c" not in raw and b"\n" not in raw
    assert raw.count(b"\r") == reference.count(b"\r")
    msg = hl7.parse(raw.decode("utf-8"))
    assert len(msg) == len(hl7.parse(reference.decode("utf-8")))
    nte = msg.segment("NTE")
    assert unescape(str(nte(3))) == (concern or "x")
    assert unescape(str(msg.segment("PID")(5)(1)(1))) == (family or "x")
