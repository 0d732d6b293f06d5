"""The sans-I/O MLLP framer, table-driven: every case is fed whole, in 1-byte chunks and in
7-byte chunks, and must give the same frames, junk count and error count each way."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from adapter.hl7.mllp import Framer, FramingError, frame

MSG = b"MSH|^~\\&|RTPLAN|ONC|RIS|RAD|20240101120000||ORM^O01|CTRL-1|P|2.4\rPID|||123^^^HOSP^MR"
ACK = b"MSH|^~\\&|RIS|RAD|RTPLAN|ONC|20240101120001||ACK^O01|A1|P|2.4\rMSA|AA|CTRL-1"


@dataclass(frozen=True)
class Case:
    name: str
    stream: bytes
    frames: list[bytes]
    junk: int = 0
    errors: int = 0
    in_frame_at_end: bool = False


CASES = [
    Case("one frame", frame(MSG), [MSG]),
    Case("two frames back to back", frame(MSG) + frame(ACK), [MSG, ACK]),
    Case("empty frame", b"\x0b\x1c\r", [b""]),
    Case("junk before VT is skipped and counted", b"xx\r\n" + frame(ACK), [ACK], junk=4),
    Case("junk between frames", frame(MSG) + b"\r\n" + frame(ACK), [MSG, ACK], junk=2),
    Case("only junk", b"garbage with no start block", [], junk=27),
    Case("FS without CR is discarded", b"\x0b" + ACK + b"\x1cX", [], junk=1, errors=1),
    Case(
        "FS without CR then resync at next VT",
        b"\x0b" + MSG + b"\x1c" + frame(ACK),
        [ACK],
        errors=1,
    ),
    Case("VT inside a frame restarts it", b"\x0bpartial" + frame(ACK), [ACK], errors=1),
    Case("partial frame stays buffered", b"\x0b" + MSG[:20], [], in_frame_at_end=True),
    Case("FS at the very end waits for CR", b"\x0b" + MSG + b"\x1c", [], in_frame_at_end=True),
    Case("LF is data inside a frame", b"\x0ba\nb\x1c\r", [b"a\nb"]),
    Case("CR after a frame's CR is junk", frame(ACK) + b"\r", [ACK], junk=1),
    Case(
        "frame after an error keeps the good one before it",
        frame(MSG) + b"\x0bbad\x1c!" + frame(ACK),
        [MSG, ACK],
        junk=1,
        errors=1,
    ),
]


def chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


def run(framer: Framer, parts: list[bytes]) -> tuple[list[bytes], int]:
    out: list[bytes] = []
    raised = 0
    for part in parts:
        try:
            out += framer.feed(part)
        except FramingError as exc:
            raised += len(exc.problems)
            out += exc.messages
    return out, raised


@pytest.mark.parametrize("size", [0, 1, 7], ids=["whole", "1-byte", "7-byte"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_framer_cases(case: Case, size: int) -> None:
    framer = Framer()
    parts = [case.stream] if size == 0 else chunks(case.stream, size)
    frames, raised = run(framer, parts)
    assert frames == case.frames
    assert framer.junk_bytes == case.junk
    assert framer.errors == case.errors == raised
    assert framer.frames == len(case.frames)
    assert framer.in_frame == case.in_frame_at_end


def test_oversize_frame_is_discarded_and_the_stream_recovers() -> None:
    framer = Framer(max_frame=10)
    stream = b"\x0b" + b"A" * 50 + b"\x1c\r" + frame(b"short")
    frames, raised = run(framer, chunks(stream, 1))
    assert frames == [b"short"] and raised == 1
    assert framer.buffered == 0
    # whole: the 40 bytes past the limit plus FS CR are junk
    framer2 = Framer(max_frame=10)
    with pytest.raises(FramingError) as info:
        framer2.feed(stream)
    assert info.value.messages == [b"short"]
    assert framer2.junk_bytes == 52


def test_oversize_never_buffers_more_than_the_limit() -> None:
    framer = Framer(max_frame=1000)
    with pytest.raises(FramingError):
        for _ in range(100):
            framer.feed(b"\x0b" + b"A" * 999)
    assert framer.buffered <= 1000


def test_error_messages_carry_offsets_not_payload() -> None:
    secret = b"ZZCANARY^PHI"
    with pytest.raises(FramingError) as info:
        Framer().feed(b"\x0b" + secret + b"\x1cX")
    text = str(info.value)
    assert "ZZCANARY" not in text and "offset 13" in text


def test_frame_wraps_and_refuses_framing_bytes() -> None:
    assert frame(b"abc") == b"\x0babc\x1c\r"
    for bad in (b"a\x0bb", b"a\x1cb"):
        with pytest.raises(ValueError):
            frame(bad)


def test_max_frame_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Framer(max_frame=0)


def test_large_frame_in_big_chunks_is_fast() -> None:
    big = b"OBX|1|TX|||" + b"x" * (4 * 1024 * 1024)
    framer = Framer()
    out: list[bytes] = []
    for part in chunks(frame(big), 65536):
        out += framer.feed(part)
    assert out == [big]
