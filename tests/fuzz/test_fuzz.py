"""Hostile bytes into every parser that meets the outside world: the DICOM header reader, the
MLLP framer, the ACK and ORU parsers, and the review input. The property in each case: the
parser answers with its own, documented refusal (a Rejection, a FramingError, an invalid Ack,
an InboundParseError, a ReviewError), never another exception, within the time and memory
limits of the run's settings (tests/fuzz/conftest.py). Seeds: the fixtures."""

from __future__ import annotations

import json
import tempfile
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from adapter.dicom.header import read_header
from adapter.dicom.models import InstanceHeader, Rejection
from adapter.hl7.ack import build_ack, parse_ack
from adapter.hl7.inbound import InboundParseError, parse_inbound
from adapter.hl7.mllp import Framer, FramingError, frame
from adapter.mapping.review_input import ReviewError, parse_review
from adapter.tables import load_tables
from tests.fuzz.conftest import FUZZ, ROOT, SEEDS

UTC = ZoneInfo("UTC")
_NOW = datetime(2026, 1, 1, tzinfo=UTC)
DICOM_SEEDS = sorted((ROOT / "fixtures" / "dicom").rglob("*.dcm"))[:12]
HL7_SEEDS = sorted(SEEDS.glob("*.hl7"))
REVIEW_SEEDS = sorted((ROOT / "fixtures" / "reviews").rglob("*.json"))
TABLES = load_tables(ROOT / "mappings")


def mutated(seeds: list[Path]) -> st.SearchStrategy[bytes]:
    """A seed file with a few bytes flipped, a slice removed or inserted, or cut short."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)).read_bytes())
        for _ in range(draw(st.integers(0, 8))):
            kind = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
            at = draw(st.integers(0, max(len(data) - 1, 0)))
            if kind == "flip" and data:
                data[at] = draw(st.integers(0, 255))
            elif kind == "cut":
                del data[at : at + draw(st.integers(1, 64))]
            elif kind == "insert":
                data[at:at] = draw(st.binary(max_size=64))
            else:
                del data[at:]
        return bytes(data)

    return build()


@FUZZ
@given(data=mutated(DICOM_SEEDS) | st.binary(max_size=2048))
def test_dicom_reader_never_raises(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.dcm"
        path.write_bytes(data)
        result = read_header(path, default_tz=UTC)
    assert isinstance(result, InstanceHeader | Rejection)
    if isinstance(result, Rejection):
        assert result.reason  # a reason names the problem


@FUZZ
@given(
    messages=st.lists(
        st.binary(max_size=200).filter(lambda m: b"\x0b" not in m and b"\x1c" not in m),
        max_size=5,
    ),
    noise=st.binary(max_size=300),
    cuts=st.lists(st.integers(1, 50), max_size=20),
)
def test_mllp_framer_keeps_good_frames_and_bounds_memory(
    messages: list[bytes], noise: bytes, cuts: list[int]
) -> None:
    stream = b"".join(frame(m) for m in messages)
    framer, found = Framer(max_frame=256), []
    position = 0
    for size in [*cuts, len(stream)]:
        chunk, position = stream[position : position + size], position + size
        found += framer.feed(chunk)
        assert framer.buffered <= 256
    assert found == messages  # any chunking: the same frames, in order
    hostile = Framer(max_frame=128)
    try:
        frames = hostile.feed(noise)
    except FramingError as exc:
        frames = exc.messages
    assert hostile.buffered <= 128 and all(len(f) <= 128 for f in frames)


@FUZZ
@given(data=mutated(HL7_SEEDS) | st.binary(max_size=1024))
def test_ack_and_oru_parsers_refuse_cleanly(data: bytes) -> None:
    ack = parse_ack(data)
    assert ack.valid in (True, False)
    try:
        message = parse_inbound(data)
    except InboundParseError as exc:
        assert exc.location and exc.error_code
    else:
        assert message.placer_order_number and message.control_id
    reply = build_ack(data, "AR", control_id="ACK1", now=_NOW)
    assert reply.startswith(b"MSH") and b"\x0b" not in reply and b"\x1c" not in reply


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=20), inner),
    max_leaves=30,
)


@st.composite
def review_documents(draw: st.DrawFn) -> object:
    seed = json.loads(draw(st.sampled_from(REVIEW_SEEDS)).read_text(encoding="utf-8"))
    if not isinstance(seed, dict) or not seed or draw(st.booleans()):
        return draw(JSON)
    key = draw(st.sampled_from(sorted(seed)))
    return {**seed, key: draw(JSON)}


@FUZZ
@given(document=review_documents())
def test_review_input_is_accepted_or_refused_with_reasons(document: object) -> None:
    if not isinstance(document, dict):
        return  # the command line refuses a non-object before parsing (tested elsewhere)
    try:
        review = parse_review(document, TABLES)
    except ReviewError as exc:
        assert str(exc)
    else:
        assert review.study_instance_uid
