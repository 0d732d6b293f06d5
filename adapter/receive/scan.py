"""Find the spool's three elements in a received data set without pydicom's reader.

The receiver needs only the Study Instance UID (0020,000D), the SOP Instance UID (0008,0018)
and the Number of Study Related Instances (0020,1208), all near the start of the data set.
pydicom's ``dcmread`` of the header was 40 % of the receiver's CPU per instance, so this walks
the top-level elements itself, as far as ``identify``'s read goes (to Pixel Data or Float
/ Double Float Pixel Data), and the items of every sequence of undefined length (pydicom parses
those whatever it was asked for), so that a data set it would refuse as unreadable is not
accepted here. Of pydicom it uses only two tables: character set names and the dictionary's VRs.

It only ever *accepts*: anything it does not read exactly as :func:`spool.identify` would
(big endian, deflated, a value that is not a plain UID or integer, a Specific Character Set
(0008,0005) that is not CS or that pydicom's table does not name, at the top level or in an
item, group 0000 or 0002 in the data set, an undefined-length value that is not a sequence or
is a wanted element, an item whose elements do not end where it does, an item delimiter with a
length, a structure it does not expect, any length past the end) returns ``None`` and the
caller asks ``identify``, whose verdict stands. Every loop advances; nesting is bounded; no
declared length is allocated.
"""

from __future__ import annotations

import re
import struct
from collections.abc import MutableSequence
from typing import Final

from pydicom.charset import python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.values import multi_string

from adapter.dicom.limits import DEFLATED_TS, EXPLICIT_BE_TS, IMPLICIT_LE_TS
from adapter.receive.spool import Identity

_BIG_OR_DEFLATED: Final = frozenset({EXPLICIT_BE_TS, DEFLATED_TS})
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_UNDEFINED: Final = 0xFFFFFFFF
_TAG: Final = struct.Struct("<HHI")  # group, element, 32-bit length (implicit VR)
_EXPLICIT: Final = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
_ITEM: Final = 0xFFFEE000
_ITEM_END: Final = 0xFFFEE00D
_ITEM_BYTES: Final = struct.pack("<HH", 0xFFFE, 0xE000)
_NOT_IN_A_DATA_SET: Final = frozenset({0x0000, 0x0002, 0xFFFE})  # groups
_SEQUENCE_END: Final = 0xFFFEE0DD
_SOP_INSTANCE: Final = 0x00080018
_STUDY: Final = 0x0020000D
_EXPECTED: Final = 0x00201208
_CHARACTER_SET: Final = 0x00080005
# pydicom's stop_before_pixels stops at Float, Double Float and Pixel Data.
_STOP_AT: Final = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_WANTED: Final = {_SOP_INSTANCE: b"UI", _STUDY: b"UI", _EXPECTED: b"IS"}
_SHORT_VRS: Final = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN"}
    | {b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)
_MAX_DEPTH: Final = 8
_UID: Final = re.compile(rb"[0-9.]{1,64}")
_INTEGER: Final = re.compile(rb" *[0-9]{1,11} *")


class _Unsure(Exception):
    """Not read here: ``identify`` decides."""


def scan_identity(data: bytes, start: int, transfer_syntax: str) -> Identity | None:
    """The identity of the data set at ``data[start:]``; None when ``identify`` must decide."""
    if transfer_syntax in _BIG_OR_DEFLATED:
        return None
    try:
        values = _top_level(data, start, transfer_syntax == IMPLICIT_LE_TS)
    except (_Unsure, struct.error):
        return None
    study, instance = _uid(values.get(_STUDY)), _uid(values.get(_SOP_INSTANCE))
    if study is None or instance is None:
        return None  # missing or odd: identify words the refusal
    raw_count = values.get(_EXPECTED)
    expected: int | None = None
    if raw_count is not None and raw_count.strip(b" "):
        if not _INTEGER.fullmatch(raw_count):
            return None
        expected = int(raw_count) or None
    return Identity(study, instance, expected)


def _top_level(data: bytes, offset: int, implicit: bool) -> dict[int, bytes]:
    wanted: dict[int, bytes] = {}
    end = len(data)
    if implicit and _looks_explicit(data, offset):
        raise _Unsure  # pydicom would switch to explicit VR here ("Expected implicit VR...")
    previous = -1
    while offset < end:
        tag, vr, value_at, length = _header(data, offset, implicit)
        if tag <= previous or tag >> 16 in _NOT_IN_A_DATA_SET:
            # Out of order, repeated, or a stray item at the top level; or group 0002 / 0000,
            # which pydicom reads on as file meta (a transfer syntax there replaces the real
            # one) or as a command set before it decides implicit or explicit VR.
            raise _Unsure
        previous = tag
        if tag in _STOP_AT:
            break  # where identify's pydicom read stops too (stop_before_pixels)
        if tag in _WANTED and (length == _UNDEFINED or vr not in (None, _WANTED[tag])):
            raise _Unsure  # pydicom would decode a sequence or another VR's value otherwise
        offset = _past(data, tag, vr, value_at, length, implicit, 1)
        if tag in _WANTED:
            wanted[tag] = data[value_at:offset]
    return wanted


def _past(
    data: bytes, tag: int, vr: bytes | None, value_at: int, length: int, implicit: bool, depth: int
) -> int:
    """Where the element whose value starts at ``value_at`` ends, after the checks pydicom's
    read makes of it on the way: a sequence of undefined length is walked, item by item; a
    Specific Character Set must resolve."""
    if length == _UNDEFINED:
        _require_sequence(tag, vr, data, value_at)
        return _skip_sequence(data, value_at, implicit, depth)
    if value_at + length > len(data):
        raise _Unsure
    if tag == _CHARACTER_SET:
        _require_character_set(vr, data[value_at : value_at + length])
    return value_at + length


def _require_character_set(vr: bytes | None, value: bytes) -> None:
    """pydicom resolves (0008,0005) as it reads, converting it with the VR it was given (US,
    OB, SQ... raise there) and looking each name up (a NUL raises)."""
    if vr not in (None, b"CS") or not _known_character_set(value):
        raise _Unsure


def _known_character_set(value: bytes) -> bool:
    """Every term of (0008,0005) is one pydicom knows by name, split as pydicom splits it
    (its ``convert_string`` decodes as Latin-1); anything else is left to ``identify``."""
    names: str | MutableSequence[str] = multi_string(value.decode("latin-1"))
    terms = [names] if isinstance(names, str) else list(names)
    if len(terms) > 1 and not terms[0]:
        terms[0] = "ISO_IR 6"  # as convert_encodings reads an empty first term
    return all(term in python_encoding for term in terms)


def _looks_explicit(data: bytes, offset: int) -> bool:
    """pydicom's test of the first element: two upper-case letters where a VR would be."""
    vr = data[offset + 4 : offset + 6]
    return len(vr) == 2 and all(0x40 < byte < 0x5B for byte in vr)


def _header(data: bytes, offset: int, implicit: bool) -> tuple[int, bytes | None, int, int]:
    """(tag, VR or None in implicit VR, offset of the value, value length) of the element
    at ``offset``."""
    if implicit:
        group, element, length = _TAG.unpack_from(data, offset)
        return (group << 16) | element, None, offset + 8, length
    group, element, vr, short = _EXPLICIT.unpack_from(data, offset)
    tag = (group << 16) | element
    if group == 0xFFFE:  # items and delimiters have no VR, in every syntax
        return tag, None, offset + 8, _TAG.unpack_from(data, offset)[2]
    if vr in _LONG_VRS:
        if short != 0:
            raise _Unsure  # the two reserved bytes
        length = _TAG.unpack_from(data, offset + 4)[2]
        if vr == b"UN" and length == _UNDEFINED:
            raise _Unsure  # its items are Implicit VR (PS3.5 §6.2.2): not walked here
        return tag, vr, offset + 12, length
    if vr not in _SHORT_VRS:
        raise _Unsure
    return tag, vr, offset + 8, short


def _require_sequence(tag: int, vr: bytes | None, data: bytes, value_at: int) -> None:
    """An element of undefined length must be one pydicom reads as a sequence, item by item.
    Any other (an undefined-length OB, say) pydicom reads by searching for the first bytes that
    spell a sequence delimiter, which may lie inside a fragment: not walked here. Nor is a
    Specific Character Set of undefined length, which pydicom would resolve as a sequence."""
    if tag == _CHARACTER_SET:
        raise _Unsure
    if vr is not None:
        if vr != b"SQ":
            raise _Unsure
        return
    try:  # implicit VR: pydicom takes the VR from its dictionary
        if dictionary_VR(tag) != "SQ":
            raise _Unsure
    except KeyError:  # not in it (a private tag): a sequence when an item follows
        if data[value_at : value_at + 4] != _ITEM_BYTES:
            raise _Unsure from None


def _skip_sequence(data: bytes, offset: int, implicit: bool, depth: int) -> int:
    """Past a sequence of undefined length, to its delimiter. pydicom parses such a sequence's
    items as it reads, whatever ``specific_tags`` says (a Specific Character Set in an item is
    resolved, and may raise), so each item is walked element by element, as pydicom reads it,
    and an item of defined length must end exactly where it says."""
    if depth > _MAX_DEPTH:
        raise _Unsure
    end = len(data)
    while offset < end:
        tag, _, value_at, length = _header(data, offset, implicit)
        if tag == _SEQUENCE_END:
            return value_at
        if tag != _ITEM:
            raise _Unsure
        if length == _UNDEFINED:
            offset = _walk_item(data, value_at, None, implicit, depth + 1)
        elif value_at + length > end:
            raise _Unsure
        else:
            offset = _walk_item(data, value_at, value_at + length, implicit, depth + 1)
    raise _Unsure


def _walk_item(data: bytes, offset: int, stop: int | None, implicit: bool, depth: int) -> int:
    """The elements of one item: to its delimiter (``stop`` None), or exactly to ``stop``."""
    end = len(data) if stop is None else stop
    while offset < end:
        tag, vr, value_at, length = _header(data, offset, implicit)
        if stop is None and tag == _ITEM_END:
            if length != 0:
                # In explicit VR pydicom decodes a VR first: length bytes that spell a long VR
                # ("OB\0\0") move it 4 bytes on from here.
                raise _Unsure
            return value_at
        if tag >> 16 == 0xFFFE:
            raise _Unsure  # a stray item or delimiter inside an item
        offset = _past(data, tag, vr, value_at, length, implicit, depth)
    if stop is not None and offset == stop:
        return offset
    raise _Unsure


def _uid(value: bytes | None) -> str | None:
    if value is None:
        return None
    text = value.rstrip(b"\x00 ")
    return text.decode("ascii") if _UID.fullmatch(text) else None
