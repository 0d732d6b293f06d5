"""The fast header path: a bounded scanner over the raw bytes of Explicit VR Little Endian.

Most planning-scan files are plain Explicit VR Little Endian datasets in a single-byte or
UTF-8 character set. For those, this module finds the wanted elements itself, without
pydicom, and hands them to the same :func:`adapter.dicom.summary.instance_header` the
pydicom path uses. It only ever *accepts* a file. Anything it does not handle exactly as
the pydicom path would, it does not try to judge: it raises :class:`Defer` and
``read_header`` reads the file again with the pydicom path, whose verdict (and reason
wording) stands. Deferred files are counted and reported (``read_by_pydicom_path``).

Deferred, by design (see ``docs/ingest.md``, "The reader's two paths"):

* any transfer syntax but Explicit VR Little Endian and the standard image compressions
  (Implicit VR needs the data dictionary for every tag; big endian and Deflated are rare);
* a Specific Character Set other than none, ISO_IR 6, ISO_IR 100 or ISO_IR 192 (ISO 2022
  escape sequences), or one inside a sequence item;
* any structural oddity: an unknown VR, non-zero reserved bytes, tags not strictly
  ascending, a top-level group below 0008, an undefined length on anything but a sequence,
  an item or delimiter out of place, bytes left over after the last element;
* any length that passes the end of the file or of its item or sequence, or exceeds
  ``ReadLimits.max_element_length``; sequences nested deeper than ``max_sequence_depth``;
* a wanted value the fast decoder does not decode exactly as ``_Values`` would (a non-text
  VR where text is expected, an escape sequence in a PN, a US that is not 2 bytes);
* any value the shared checks reject (missing or invalid UID, invalid number, short pixel
  data): the pydicom path re-reads the file and words the quarantine reason.

Why it is safe on hostile input: it never allocates a declared length (values are sliced
from the memory map only after the slice is known to lie inside the file), every loop
advances by at least 8 bytes, recursion is bounded by ``max_sequence_depth`` (two Python
frames per level), and it is pure Python (no native code that could crash the worker).
"""

from __future__ import annotations

import struct
from datetime import tzinfo
from typing import Any, Final, TypeAlias

from adapter.dicom.charset import person_name
from adapter.dicom.limits import (
    EXPLICIT_BE_TS,
    EXPLICIT_LE_TS,
    IMPLICIT_LE_TS,
    NATIVE_TS,
    UNDEFINED_LENGTH,
    ByteSource,
    FileMeta,
    Problem,
    ReadLimits,
    check_pixel_header,
    is_valid_uid,
)
from adapter.dicom.models import InstanceHeader, PersonName
from adapter.dicom.summary import PIXEL_DATA, check_pixel_length, instance_header

__all__ = ["FAST_CODECS", "TEXT_VRS", "UNSPLIT_VRS", "WANTED", "Defer", "read_fast"]

# Reasons for deferring; fixed words only (never a value from the file).
TRANSFER_SYNTAX: Final = "transfer syntax whose dataset is not Explicit VR Little Endian"
CHARSET: Final = "character set needs pydicom's decoder"
STRUCTURE: Final = "unusual element structure"
LENGTH: Final = "element length beyond the file, its container or the limit"
DEPTH: Final = "sequences nested beyond the limit"
VALUE: Final = "value needs pydicom's converter"
REJECTED: Final = "a value check failed: the pydicom path words the reason"


class Defer(Exception):
    """The fast path does not decide this file; ``reason`` is one of the constants above."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# Top-level attributes the summary reads (the same list the pydicom path passes to pydicom
# as ``specific_tags``). Every other top-level element is skipped unread, as pydicom does.
WANTED: Final = frozenset(
    {
        0x00080005, 0x00080016, 0x00080018, 0x00080020, 0x00080021, 0x00080030,
        0x00080031, 0x00080050, 0x00080051, 0x00080060, 0x00080090, 0x00080201,
        0x00081010, 0x00081030, 0x00081032, 0x0008103E, 0x00100010, 0x00100020,
        0x00100021, 0x00100030, 0x00100040, 0x00180010, 0x00180015, 0x00181030,
        0x0020000D, 0x0020000E, 0x00200010, 0x00200011, 0x00200013, 0x00200052,
        0x00200060, 0x00200062, 0x00201208, 0x00280002, 0x00280004, 0x00280008,
        0x00280010, 0x00280011, 0x00280100, 0x00321064, 0x00400275, 0x00401001,
        0x00401002, 0x30060010, 0x30060020, 0x300C0060,
    }
)  # fmt: skip

# PS3.5 §7.1.2: the explicit VRs pydicom knows, and those with a 4-byte length.
_LONG_VRS: Final = {
    vr.encode(): vr
    for vr in ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV")
}
_SHORT_VRS: Final = {
    vr.encode(): vr
    for vr in (
        "AE", "AS", "AT", "CS", "DA", "DS", "DT", "FD", "FL", "IS", "LO",
        "LT", "PN", "SH", "SL", "SS", "ST", "TM", "UI", "UL", "US",
    )
}  # fmt: skip
# Where pydicom's stop_before_pixels stops (Float/Double Float Pixel Data, Pixel Data).
_PIXEL_TAGS: Final = frozenset({0x7FE00008, 0x7FE00009, PIXEL_DATA})
_CHARSET_TAG: Final = 0x00080005
_ITEM: Final = 0xFFFEE000
_ITEM_END: Final = 0xFFFEE00D
_SEQ_END: Final = 0xFFFEE0DD

_ELEMENT: Final = struct.Struct("<HH2sH")
_LONG_LENGTH: Final = struct.Struct("<L")  # after the 2 reserved bytes
_ITEM_HEADER: Final = struct.Struct("<HHL")

# Same decoding rules as adapter.dicom.pydicom_path._Values (kept in step by the
# differential test, tests/unit/test_reader_paths.py).
TEXT_VRS: Final = frozenset(
    {"AE", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
UNSPLIT_VRS: Final = frozenset({"LT", "ST", "UT", "UR"})
# Charsets decoded directly (pydicom decodes "no charset" as latin-1 too); others, notably
# ISO 2022 with escape sequences, go through pydicom's converter.
FAST_CODECS: Final = {
    "": "latin_1",
    "ISO_IR 6": "latin_1",
    "ISO_IR 100": "latin_1",
    "ISO_IR 192": "utf_8",
}

# Transfer syntaxes whose dataset is Explicit VR Little Endian: the native one and the
# standard image compressions (JPEG, JPEG-LS, JPEG 2000, HTJ2K, RLE), whose Pixel Data is
# encapsulated. Video, JPIP and Deflated syntaxes are left to pydicom.
EXPLICIT_LE_DATASETS: Final = frozenset(
    {
        EXPLICIT_LE_TS,
        *(f"1.2.840.10008.1.2.4.{n}" for n in (50, 51, 57, 70, 80, 81, 90, 91, 92, 93)),
        *(f"1.2.840.10008.1.2.4.{n}" for n in (201, 202, 203)),
        "1.2.840.10008.1.2.5",
    }
)

Element: TypeAlias = tuple[str, int, int]  # VR, offset of the value, length
Item: TypeAlias = dict[int, "Element | list[Item]"]


class _Scanner:
    """One pass over one file's dataset; raises :class:`Defer` on anything unusual."""

    def __init__(self, buf: ByteSource, size: int, limits: ReadLimits) -> None:
        self.buf = buf
        self.size = size
        self.max_length = limits.max_element_length
        self.max_depth = limits.max_sequence_depth

    def header(self, pos: int, end: int) -> tuple[int, str, int, int]:
        """``(tag, VR, value offset, length)`` of the element at ``pos`` (before ``end``)."""
        if pos + 8 > end:
            raise Defer(LENGTH)
        group, elem, vr_bytes, short = _ELEMENT.unpack_from(self.buf, pos)
        vr = _SHORT_VRS.get(vr_bytes)
        if vr is not None:
            return group << 16 | elem, vr, pos + 8, short
        vr = _LONG_VRS.get(vr_bytes)
        if vr is None or short != 0:  # unknown VR (or implicit data), reserved bytes used
            raise Defer(STRUCTURE)
        if pos + 12 > end:
            raise Defer(LENGTH)
        return group << 16 | elem, vr, pos + 12, _LONG_LENGTH.unpack_from(self.buf, pos + 8)[0]

    def top_level(self, pos: int) -> tuple[Item, int]:
        """Scan the top-level dataset; returns the wanted elements and where pydicom stops.

        The hot loop of the reader: ``header`` inlined, names bound locally.
        """
        buf, size, max_length = self.buf, self.size, self.max_length
        unpack, long_length = _ELEMENT.unpack_from, _LONG_LENGTH.unpack_from
        short_vrs, long_vrs, wanted = _SHORT_VRS, _LONG_VRS, WANTED
        found: Item = {}
        last = 0x0007FFFF  # top-level groups start at 0008 (group 0002 is the file meta)
        while pos < size:
            if pos + 8 > size:
                raise Defer(STRUCTURE)  # trailing bytes that are not an element
            group, elem, vr_bytes, length = unpack(buf, pos)
            tag = group << 16 | elem
            if tag in _PIXEL_TAGS:
                return found, pos
            if tag <= last:
                raise Defer(STRUCTURE)
            last = tag
            vr = short_vrs.get(vr_bytes)
            if vr is not None:
                at = pos + 8
            else:
                vr = long_vrs.get(vr_bytes)
                if vr is None or length != 0:  # unknown VR (or implicit data), reserved used
                    raise Defer(STRUCTURE)
                if pos + 12 > size:
                    raise Defer(LENGTH)
                (length,) = long_length(buf, pos + 8)
                at = pos + 12
                if length == UNDEFINED_LENGTH:
                    if vr != "SQ":
                        raise Defer(STRUCTURE)
                    items, pos = self.sequence(at, None, 1, keep=tag in wanted)
                    if tag in wanted:
                        found[tag] = items
                    continue
            end = at + length
            if end > size or length > max_length:
                raise Defer(LENGTH)
            if tag in wanted:
                if vr == "SQ":
                    found[tag] = self.sequence(at, end, 1, keep=True)[0]
                else:
                    found[tag] = (vr, at, length)
            pos = end
        return found, size

    def sequence(
        self, pos: int, end: int | None, depth: int, *, keep: bool, bound: int | None = None
    ) -> tuple[list[Item], int]:
        """Items of a sequence starting at ``pos``; ``end`` is None for undefined length,
        which must then end before ``bound`` (its container's end; default: the file's)."""
        if depth > self.max_depth:
            raise Defer(DEPTH)
        if end is not None:
            bound = end
        elif bound is None:
            bound = self.size
        items: list[Item] = []
        while True:
            if pos == end:
                return items, pos
            if pos + 8 > bound:
                raise Defer(LENGTH)
            group, elem, length = _ITEM_HEADER.unpack_from(self.buf, pos)
            tag = group << 16 | elem
            pos += 8
            if tag == _SEQ_END and end is None and length == 0:
                return items, pos
            if tag != _ITEM:
                raise Defer(STRUCTURE)
            if length == UNDEFINED_LENGTH:
                item, pos = self.dataset(pos, None, bound, depth, keep=keep)
            else:
                if pos + length > bound:
                    raise Defer(LENGTH)
                item, pos = self.dataset(pos, pos + length, bound, depth, keep=keep)
            if keep:
                items.append(item)

    def dataset(
        self, pos: int, end: int | None, bound: int, depth: int, *, keep: bool
    ) -> tuple[Item, int]:
        """The elements of one item; ``end`` is None for an undefined-length item."""
        limit = bound if end is None else end
        found: Item = {}
        last = -1
        while True:
            if pos == end:
                return found, pos
            if end is None and pos + 8 <= limit:
                group, elem, length = _ITEM_HEADER.unpack_from(self.buf, pos)
                if group << 16 | elem == _ITEM_END:
                    if length != 0:
                        raise Defer(STRUCTURE)
                    return found, pos + 8
            tag, vr, at, length = self.header(pos, limit)
            if tag <= last or tag >> 16 == 0xFFFE or tag == _CHARSET_TAG:
                raise Defer(STRUCTURE if tag != _CHARSET_TAG else CHARSET)
            last = tag
            if length == UNDEFINED_LENGTH:
                if vr != "SQ":
                    raise Defer(STRUCTURE)
                items, pos = self.sequence(at, None, depth + 1, keep=keep, bound=limit)
                if keep:
                    found[tag] = items
                continue
            value_end = at + length
            if value_end > limit or length > self.max_length:
                raise Defer(LENGTH)
            if vr == "SQ":
                items = self.sequence(at, value_end, depth + 1, keep=keep)[0]
                if keep:
                    found[tag] = items
            elif keep:
                found[tag] = (vr, at, length)
            pos = value_end


class FastValues:
    """The getters of ``HeaderValues`` over scanned elements, decoding as ``_Values`` does.

    Where ``_Values`` would hand an element to pydicom, this raises :class:`Defer`; where
    it would raise :class:`Problem`, this defers too (the pydicom path words the reason).
    """

    def __init__(self, buf: ByteSource, top: Item, meta: Item, codec: str) -> None:
        self.buf = buf
        self.top = top
        self.meta = meta
        self.codec = codec

    def _element(self, tag: int, ds: Item | None) -> Element | None:
        found = (self.top if ds is None else ds).get(tag)
        if found is None or type(found) is tuple:
            return found
        raise Defer(VALUE)  # a sequence where a value is expected

    def text(self, tag: int, ds: Any = None) -> str:
        found = (self.top if ds is None else ds).get(tag)
        if found is None:
            return ""
        if type(found) is not tuple:
            raise Defer(VALUE)  # a sequence where a value is expected
        vr, at, length = found
        if vr not in TEXT_VRS:
            raise Defer(VALUE)
        value = bytes(self.buf[at : at + length]).decode(self.codec, "replace")
        if vr in UNSPLIT_VRS:
            return value.rstrip(" \0")
        if "\\" in value:
            return "\\".join(part.strip(" \0") for part in value.split("\\"))
        return value.strip(" \0")

    def person(self, tag: int) -> PersonName:
        element = self._element(tag, None)
        if element is None:
            return person_name(None)
        vr, at, length = element
        raw = bytes(self.buf[at : at + length])
        if vr != "PN" or b"\x1b" in raw:
            raise Defer(VALUE if vr != "PN" else CHARSET)
        value = raw.rstrip(b"\x00 ").decode(self.codec, "replace")
        return person_name(value.split("\\", 1)[0])

    def uid(self, tag: int, ds: Any = None, *, required: bool = False) -> str:
        value = self.text(tag, ds).rstrip("\0")
        if not value:
            if required:
                raise Defer(REJECTED)
            return ""
        if not is_valid_uid(value):
            raise Defer(REJECTED)
        return value

    def integer(self, tag: int, ds: Any = None, *, always_strict: bool = False) -> int | None:
        element = self._element(tag, ds)
        if element is None:
            return None
        vr, at, length = element
        if vr == "US":
            if length != 2:
                raise Defer(VALUE)
            return int.from_bytes(self.buf[at : at + 2], "little")
        text = self.text(tag, ds)
        if not text:
            return None
        if _is_integer_string(text):
            return int(text)
        raise Defer(REJECTED)  # strict: quarantined; lenient: dropped and logged by tag

    def items(self, tag: int, ds: Any = None) -> list[Any]:
        found = (self.top if ds is None else ds).get(tag)
        if found is None:
            return []
        if type(found) is list:
            return found
        raise Defer(VALUE)  # a value where a sequence is expected

    def source_ae_title(self) -> str:
        return self.text(0x00020016, self.meta)


def _is_integer_string(text: str) -> bool:
    """``[+-]?[0-9]{1,12}``, as the pydicom path's IS check (without importing ``re``)."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    return 0 < len(digits) <= 12 and digits.isascii() and digits.isdigit()


def _meta_elements(buf: ByteSource, meta: FileMeta) -> Item:
    """Group 0002 elements (already bounds-checked by ``parse_file_meta``) by tag."""
    scanner = _Scanner(buf, meta.dataset_offset, _META_LIMITS)
    found: Item = {}
    pos = 132
    last = -1
    while pos < meta.dataset_offset:
        tag, vr, at, length = scanner.header(pos, meta.dataset_offset)
        if tag <= last or vr == "SQ" or length == UNDEFINED_LENGTH:
            raise Defer(STRUCTURE)
        last = tag
        found[tag] = (vr, at, length)
        pos = at + length
    if pos != meta.dataset_offset:
        raise Defer(STRUCTURE)
    return found


_META_LIMITS: Final = ReadLimits()


def read_fast(
    buf: ByteSource,
    size: int,
    meta: FileMeta,
    name: str,
    default_tz: tzinfo,
    limits: ReadLimits,
) -> InstanceHeader:
    """The header of a plain Explicit VR Little Endian file, or :class:`Defer`.

    ``buf``/``size`` are the memory-mapped file, ``meta`` what ``parse_file_meta`` found.
    """
    if meta.transfer_syntax not in EXPLICIT_LE_DATASETS:
        raise Defer(TRANSFER_SYNTAX)
    scanner = _Scanner(buf, size, limits)
    top, stopped_at = scanner.top_level(meta.dataset_offset)
    codec = _codec(buf, top)
    values = FastValues(buf, top, _meta_elements(buf, meta), codec)
    try:
        if stopped_at < size:
            pixel = check_pixel_header(
                buf,
                stopped_at,
                size,
                little=meta.transfer_syntax != EXPLICIT_BE_TS,
                implicit=meta.transfer_syntax == IMPLICIT_LE_TS,
            )
            if pixel is not None and pixel[0] == PIXEL_DATA and meta.transfer_syntax in NATIVE_TS:
                check_pixel_length(values, pixel[1])
        return instance_header(values, name, default_tz)
    except Problem:
        raise Defer(REJECTED) from None


def _codec(buf: ByteSource, top: Item) -> str:
    element = top.get(_CHARSET_TAG)
    if element is None:
        return "latin_1"
    if type(element) is not tuple:
        raise Defer(CHARSET)
    _vr, at, length = element
    name = bytes(buf[at : at + length]).decode("ascii", "replace").strip(" \0")
    codec = FAST_CODECS.get(name)
    if codec is None:
        raise Defer(CHARSET)
    return codec
