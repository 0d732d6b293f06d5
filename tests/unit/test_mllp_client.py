"""Boundary mapping of the MLLP client: every lower-layer failure becomes NotSent or NoAnswer,
chained, with no message content in the text."""

from __future__ import annotations

import ssl

import pytest

from adapter.hl7.client import (
    ANSWER_ERRORS,
    CONNECT_ERRORS,
    NoAnswer,
    NotSent,
    control_id,
    map_answer_errors,
    map_connect_errors,
)
from adapter.hl7.mllp import FramingError

LOWER: list[BaseException] = [
    ConnectionRefusedError(111, "refused"),
    ConnectionResetError(104, "reset"),
    BrokenPipeError(32, "pipe"),
    TimeoutError(),
    OSError(113, "no route"),
    ssl.SSLError(1, "handshake failure"),
    ssl.SSLCertVerificationError(1, "certificate verify failed"),
    EOFError("peer closed"),
]


@pytest.mark.parametrize("exc", LOWER, ids=lambda e: type(e).__name__)
def test_connect_phase_maps_to_not_sent(exc: BaseException) -> None:
    with pytest.raises(NotSent) as info, map_connect_errors("127.0.0.1:1"):
        raise exc
    assert info.value.__cause__ is exc


@pytest.mark.parametrize("exc", [*LOWER, FramingError(["bad"], [])], ids=lambda e: type(e).__name__)
def test_answer_phase_maps_to_no_answer(exc: BaseException) -> None:
    with pytest.raises(NoAnswer) as info, map_answer_errors("127.0.0.1:1"):
        raise exc
    assert info.value.__cause__ is exc


def test_every_mapped_class_is_covered() -> None:
    for cls in CONNECT_ERRORS:
        assert any(isinstance(e, cls) for e in LOWER), cls
    for cls in ANSWER_ERRORS:
        assert cls is FramingError or any(isinstance(e, cls) for e in LOWER), cls


def test_bugs_are_not_mapped() -> None:
    with pytest.raises(KeyError), map_answer_errors("x"):
        raise KeyError("a bug stays a bug")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (b"MSH|^~\\&|A|B|C|D|20240101||ORM^O01|CTRL-1|P|2.4\rPID|1", "CTRL-1"),
        (b"MSH#^~\\&#A#B#C#D#20240101##ORM^O01#CTRL-2#P#2.4", "CTRL-2"),
        (b"MSH|^~\\&|A", ""),
        (b"PID|1", ""),
        (b"", ""),
    ],
)
def test_control_id(message: bytes, expected: str) -> None:
    assert control_id(message) == expected
