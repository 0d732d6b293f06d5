"""The pre-send title check on a KOS's raw bytes, without pydicom.

:func:`adapter.label.titles.refuse_rejection_title` judges the document as pydicom reads it:
the top-level Concept Name Code Sequence (0040,A043) must hold exactly one item whose Code Value
(0008,0100) and Coding Scheme Designator (0008,0102), decoded and stripped, are an allowed,
non-rejection title. :func:`checked_title` gives the same verdict from the bytes for the
documents it reads exactly, and raises :class:`Defer` for every other one, so that the caller
decodes that document with pydicom and applies ``refuse_rejection_title`` itself. It never
accepts a document pydicom would refuse: a differential test runs both on hostile documents.

Read here: Part 10 files (preamble, 'DICM', File Meta) in Explicit VR Little Endian, every
element walked with the bounded scanner of ``adapter.dicom.fast`` (tags strictly ascending,
lengths inside their container, sequences of defined or undefined length, nesting bounded), in
no character set or one of ``adapter.label.raw_kos.CHARSET_CODECS``. Deferred: any other
transfer syntax or character set (ISO 2022 escape sequences), a Specific Character Set inside
an item, a title element with another VR than the data dictionary's (pydicom converts those),
a multi-valued or undecodable Code Value or Scheme, and any structural oddity.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from adapter.dicom.fast import Defer as ScanDefer
from adapter.dicom.fast import Element, Item, _Scanner
from adapter.dicom.limits import (
    EXPLICIT_LE_TS,
    UNDEFINED_LENGTH,
    ByteSource,
    Problem,
    ReadLimits,
    parse_file_meta,
)
from adapter.label.raw_kos import CHARSET_CODECS
from adapter.label.titles import RejectionTitleRefused, judge_title

__all__ = ["Defer", "checked_title"]

_TITLE: Final = 0x0040A043  # Concept Name Code Sequence
_CODE_VALUE, _CODE_SCHEME = 0x00080100, 0x00080102
_CHARSET, _SOP_INSTANCE = 0x00080005, 0x00080018
_LIMITS: Final = ReadLimits()


class Defer(Exception):
    """Not a document this module reads exactly: decode it with pydicom and judge that."""


def checked_title(data: ByteSource, allowed: Iterable[str]) -> str:
    """The document's SOP Instance UID (0008,0018), once its title has passed the same check
    as :func:`adapter.label.titles.refuse_rejection_title`.

    Raises:
        RejectionTitleRefused: the verdict ``refuse_rejection_title`` gives this document.
        Defer: the bytes need pydicom to be read as pydicom reads them.
    """
    size = len(data)
    try:
        meta = parse_file_meta(data, size)
    except Problem:
        raise Defer from None
    if meta.transfer_syntax != EXPLICIT_LE_TS:
        raise Defer
    try:
        top = _top_level(_Scanner(data, size, _LIMITS), meta.dataset_offset, size)
    except ScanDefer:
        raise Defer from None
    codec = _codec(data, top.get(_CHARSET))
    names = top.get(_TITLE)
    if names is None or type(names) is not list:
        if names is not None:
            raise Defer  # (0040,A043) with another VR: pydicom may convert it
        raise RejectionTitleRefused("the KOS has no single document title (0040,A043)")
    if len(names) != 1:
        raise RejectionTitleRefused("the KOS has no single document title (0040,A043)")
    item = names[0]
    value = _text(data, item.get(_CODE_VALUE), codec).strip()
    scheme = _text(data, item.get(_CODE_SCHEME), codec).strip()
    judge_title(value, scheme, allowed)
    sop = top.get(_SOP_INSTANCE)
    if type(sop) is not tuple or sop[0] != "UI":
        raise Defer  # absent or odd: let pydicom say so
    uid = bytes(data[sop[1] : sop[1] + sop[2]]).decode("latin_1").rstrip("\0 ")
    if "\\" in uid:
        raise Defer  # multi-valued: pydicom's MultiValue, compared as its str()
    return uid


def _top_level(scanner: _Scanner, pos: int, size: int) -> Item:
    """Every top-level element walked; the title sequence kept with its items, the values
    needed here by position."""
    found: Item = {}
    last = 0x0007FFFF  # group 0002 is the File Meta; a dataset starts at group 0008
    while pos < size:
        tag, vr, at, length = scanner.header(pos, size)
        if tag <= last:
            raise Defer
        last = tag
        if length == UNDEFINED_LENGTH:
            if vr != "SQ":
                raise Defer  # encapsulated pixel data or SQ-as-UN: not in a KOS of ours
            items, pos = scanner.sequence(at, None, 1, keep=tag == _TITLE)
            if tag == _TITLE:
                found[tag] = items
            continue
        end = at + length
        if end > size or length > _LIMITS.max_element_length:
            raise Defer
        if vr == "SQ":
            items = scanner.sequence(at, end, 1, keep=tag == _TITLE)[0]
            if tag == _TITLE:
                found[tag] = items
        elif tag in (_TITLE, _CHARSET, _SOP_INSTANCE):
            found[tag] = (vr, at, length)
        pos = end
    return found


def _codec(data: ByteSource, element: Element | list[Item] | None) -> str:
    if element is None:
        return CHARSET_CODECS[""]
    if type(element) is not tuple or element[0] != "CS":
        raise Defer
    _vr, at, length = element
    name = bytes(data[at : at + length]).decode("ascii", "replace").rstrip(" \0")
    codec = CHARSET_CODECS.get(name)
    if codec is None or not name:
        raise Defer  # ISO 2022, multi-valued, or a set not handled here
    return codec


def _text(data: ByteSource, element: Element | list[Item] | None, codec: str) -> str:
    """An SH value as pydicom converts it (decoded, trailing spaces and nulls removed)."""
    if element is None:
        return ""
    if type(element) is not tuple or element[0] != "SH":
        raise Defer  # a sequence, or a VR pydicom would convert its own way
    _vr, at, length = element
    try:
        value = bytes(data[at : at + length]).decode(codec)
    except UnicodeDecodeError:
        raise Defer from None
    if "\\" in value or "\x1b" in value:
        raise Defer  # multi-valued or an escape sequence: pydicom's converter decides
    return value.rstrip("\0 ")
