"""Encode a whole label KOS as bytes, without pydicom, when that is certain to be exact.

The reference builder (:func:`adapter.label.kos.build_kos` + ``encode``) and the fast encoder
(``adapter.label.fast_kos``) need pydicom for the head of the document: the copied Patient and
Study attributes in the study's character set, the title, the TEXT item and the File Meta.
Importing pydicom (and numpy with it) costs more than everything else a default ingest does,
so this module writes the head too, in Explicit VR Little Endian with defined lengths, byte
for byte as pydicom does (a differential test compares every fixture, and a property test
generated names and character sets).

It only handles what it can copy exactly, and raises :class:`Defer` for the rest, so that the
caller builds the document with pydicom instead (never a different document):

* the source file must be Explicit VR Little Endian (or one of the image compressions, whose
  dataset is), with a File Meta and no structural oddity before (0020,0010);
* Specific Character Set absent, or one single-byte ISO 8859 set (ISO_IR 100, 101, 109, 110,
  126, 127, 138, 144, 148), Thai (ISO_IR 166) or UTF-8 (ISO_IR 192): no code extensions
  (ISO 2022), no multi-byte set that is not UTF-8;
* every copied value must be in the form pydicom writes back unchanged: decodable strictly in
  that character set, no escape or control characters, padded to an even length with one
  space (a null for UI) and no other trailing padding, with the VR of the data dictionary;
* a copied sequence must be empty (one with items is copied by pydicom);
* every text of the vocabulary must encode strictly in the character set and keep within its
  VR's length; every UID must be valid (PS3.5 9.1).

The title is checked here as :func:`adapter.label.kos.build_head` checks it
(:func:`adapter.label.titles.judge_title`).
"""

from __future__ import annotations

import mmap
import re
import struct
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Final

from adapter.classify import Classification
from adapter.dicom.fast import EXPLICIT_LE_DATASETS, Item, _Scanner
from adapter.dicom.fast import Defer as ScanDefer
from adapter.dicom.limits import UNDEFINED_LENGTH, Problem, ReadLimits, parse_file_meta
from adapter.dicom.models import SeriesSummary, StudySummary
from adapter.errors import MappingError
from adapter.label.copied import COPIED_TAGS, TYPE2_KEYWORDS, SourceUnavailable
from adapter.label.plan import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION,
    KOS_MODALITY,
    KOS_SOP_CLASS,
    TEMPLATE_ID,
    TEMPLATE_RESOURCE,
    KosPlan,
    image_series,
    in_study_offset,
    label_text,
)
from adapter.label.titles import DicomCode, LabelVocabulary, judge_title

__all__ = ["CHARSET_CODECS", "CopiedElements", "Defer", "kos_bytes", "read_copied"]

# The character sets handled here and their Python codecs (pydicom's ``python_encoding``).
# "" is no (0008,0005): pydicom decodes and encodes it as ISO 8859-1.
CHARSET_CODECS: Final = {
    "": "latin_1",
    "ISO_IR 100": "latin_1",
    "ISO_IR 101": "iso8859_2",
    "ISO_IR 109": "iso8859_3",
    "ISO_IR 110": "iso8859_4",
    "ISO_IR 126": "iso_ir_126",
    "ISO_IR 127": "iso_ir_127",
    "ISO_IR 138": "iso_ir_138",
    "ISO_IR 144": "iso_ir_144",
    "ISO_IR 148": "iso_ir_148",
    "ISO_IR 166": "iso_ir_166",
    "ISO_IR 192": "utf_8",
}
# VRs whose value is decoded with the character set (the others are ASCII by definition).
_CHARSET_VRS: Final = frozenset({"LO", "LT", "PN", "SH", "ST", "UC", "UT"})
_MAX_CHARS: Final = {"SH": 16, "LO": 64, "CS": 16}
# No control character in a copied value (ESC would make pydicom look for ISO 2022 escape
# sequences); LT, ST and UT may hold TAB, LF, FF and CR (PS3.5 6.2), which round-trip unchanged.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_IN_TEXT: Final = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_LONG_TEXT_VRS: Final = frozenset({"LT", "ST", "UT"})
_PLAIN_UID: Final = re.compile(r"(?=.{1,64}$)(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_LONG_VRS: Final = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR",
                              "UT", "UV"})  # fmt: skip
_ITEM: Final = b"\xfe\xff\x00\xe0"  # (FFFE,E000)
_LAST_COPIED: Final = max(tag for tag, _ in COPIED_TAGS.values())
_VR_OF: Final = dict(COPIED_TAGS.values())
_TYPE2: Final = frozenset(COPIED_TAGS[k][0] for k in TYPE2_KEYWORDS)
_CHARSET_TAG, _TIMEZONE_TAG, _STUDY_UID_TAG = 0x00080005, 0x00080201, 0x0020000D
_READ_LIMITS: Final = ReadLimits()
_EVIDENCE_TAG: Final = 0x0040A375  # Current Requested Procedure Evidence Sequence
_CONTENT_TAG: Final = 0x0040A730  # Content Sequence
_CODE_VALUE, _CODE_SCHEME, _CODE_MEANING = 0x00080100, 0x00080102, 0x00080104
_CONCEPT_NAME: Final = 0x0040A043
# (0040,A010) Relationship Type "CONTAINS" and (0040,A040) Value Type "IMAGE " (CS, space-padded)
_IMAGE_TAIL: Final = b"\x40\x00\x10\xa0CS\x08\x00CONTAINS" + b"\x40\x00\x40\xa0CS\x06\x00IMAGE "


class Defer(Exception):
    """This document is not one the raw encoder writes exactly: build it with pydicom.
    ``reason`` is fixed wording, never a value."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class CopiedElements:
    """The copied elements of one source file, as the bytes pydicom would write for them."""

    def __init__(self, values: dict[int, bytes], charset: str) -> None:
        self.values = values  # tag -> value bytes (already padded), for present elements
        self.charset = charset
        self.codec = CHARSET_CODECS[charset]

    def text(self, tag: int) -> str:
        """A copied value as pydicom reads it (trailing padding removed)."""
        return self.values.get(tag, b"").rstrip(b" \0").decode(self.codec)


def read_copied(path: str, study_uid: str) -> CopiedElements:
    """The attributes a KOS copies from ``path``, read without pydicom.

    Raises:
        SourceUnavailable: as :func:`adapter.label.source.read_study_attributes` does (the
            file is gone, is an archive member, or belongs to another study).
        Defer: the file or a value is not one this module copies exactly.
    """
    source = Path(path)
    if "::" in path or not source.is_file() or source.is_symlink():
        raise SourceUnavailable(
            "the study's files are not on disk (archive members are expanded into a temporary "
            "folder); ingest the extracted folder to label it"
        )
    try:
        with (
            source.open("rb") as handle,
            mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buf,
        ):
            raw = _scan(buf, len(buf))
    except (OSError, ValueError):  # unreadable, or empty (mmap of 0 bytes): pydicom words it
        raise Defer("source file not readable here") from None
    charset_bytes = raw.get(_CHARSET_TAG, b"")
    charset = charset_bytes.rstrip(b" ").decode("ascii", "replace")
    if charset not in CHARSET_CODECS or charset_bytes != _padded(charset_bytes.rstrip(b" "), b" "):
        raise Defer("character set")
    codec = CHARSET_CODECS[charset]
    values = {tag: _canonical(tag, value, codec) for tag, value in raw.items()}
    copied = CopiedElements(values, charset)
    if copied.text(_STUDY_UID_TAG) != study_uid:
        raise SourceUnavailable("a file of the study changed since it was read")
    return copied


def _scan(buf: mmap.mmap, size: int) -> dict[int, bytes]:
    """Raw values of the copied tags present in the top-level dataset."""
    try:
        meta = parse_file_meta(buf, size)
    except Problem:
        raise Defer("file meta") from None
    if meta.transfer_syntax not in EXPLICIT_LE_DATASETS:
        raise Defer("transfer syntax")
    scanner = _Scanner(buf, size, _READ_LIMITS)
    found: dict[int, bytes] = {}
    pos, last = meta.dataset_offset, 0x0007FFFF
    try:
        while pos < size:
            tag, vr, at, length = scanner.header(pos, size)
            if tag > _LAST_COPIED:
                break
            if tag <= last:
                raise Defer("structure")
            last = tag
            wanted = _VR_OF.get(tag)
            if wanted is not None and vr != wanted:
                raise Defer("VR")
            if length == UNDEFINED_LENGTH:
                if vr != "SQ":
                    raise Defer("structure")
                items, pos = scanner.sequence(at, None, 1, keep=wanted is not None)
                if wanted is not None:
                    _check_items(items)
                    found[tag] = bytes(buf[at : pos - 8])  # the items, not the delimiter
                continue
            end = at + length
            if end > size or length > _READ_LIMITS.max_element_length:
                raise Defer("length")
            if wanted is not None:
                if vr == "SQ":
                    _check_items(scanner.sequence(at, end, 1, keep=True)[0])
                found[tag] = bytes(buf[at:end])
            pos = end
    except ScanDefer as exc:
        raise Defer(exc.reason) from None
    return found


def _check_items(items: list[Item]) -> None:
    """A copied sequence is written back by pydicom as read (its items' elements are raw),
    except that pydicom drops group lengths (gggg,0000): defer when there is one."""
    for item in items:
        for tag, value in item.items():
            if tag & 0xFFFF == 0:
                raise Defer("group length in a copied sequence")
            if type(value) is list:
                _check_items(value)


def _padded(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _canonical(tag: int, value: bytes, codec: str) -> bytes:
    """``value`` when pydicom would write it back unchanged (read, then written), else Defer."""
    vr = _VR_OF[tag]
    if vr == "SQ":
        return value
    pad = b"\0" if vr == "UI" else b" "
    core = value.rstrip(b" \0")
    if value != _padded(core, pad):
        raise Defer("padding")
    try:
        text = core.decode(codec if vr in _CHARSET_VRS else "ascii")
    except UnicodeDecodeError:
        raise Defer("undecodable value") from None
    if (_CONTROL_IN_TEXT if vr in _LONG_TEXT_VRS else _CONTROL).search(text):
        raise Defer("control character")
    if vr not in _LONG_TEXT_VRS and any(part != part.rstrip(" ") for part in text.split("\\")):
        raise Defer("padding inside a multi-value")
    if vr == "UI" and core and not _PLAIN_UID.fullmatch(text):
        raise Defer("UID")
    return value


def _header(tag: int, vr: str, length: int) -> bytes:
    if vr in _LONG_VRS:
        return struct.pack("<HH2sHL", tag >> 16, tag & 0xFFFF, vr.encode(), 0, length)
    if length > 0xFFFF:
        raise Defer("value too long for its VR")
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), length)


def _value(tag: int, vr: str, value: bytes) -> bytes:
    return _header(tag, vr, len(value)) + value


class _Encoder:
    """Elements of the head in the document's character set, as pydicom writes them."""

    def __init__(self, codec: str) -> None:
        self.codec = codec

    def text(self, tag: int, vr: str, value: str) -> bytes:
        if vr in _MAX_CHARS and len(value) > _MAX_CHARS[vr]:
            raise Defer("vocabulary text longer than its VR")  # pydicom would warn
        if (_CONTROL_IN_TEXT if vr in _LONG_TEXT_VRS else _CONTROL).search(value):
            raise Defer("control character in the vocabulary")
        if vr not in _LONG_TEXT_VRS and "\\" in value:
            raise Defer("backslash in the vocabulary")
        try:
            raw = value.encode(self.codec if vr in _CHARSET_VRS else "ascii")
        except UnicodeEncodeError:
            raise Defer("vocabulary text outside the character set") from None
        return _value(tag, vr, _padded(raw, b" "))

    @staticmethod
    def uid(tag: int, value: str) -> bytes:
        if not _PLAIN_UID.fullmatch(value):
            raise Defer("UID")
        return _value(tag, "UI", _padded(value.encode("ascii"), b"\0"))

    def code(self, code: DicomCode) -> bytes:
        return (
            self.text(_CODE_VALUE, "SH", code.value)
            + self.text(_CODE_SCHEME, "SH", code.scheme)
            + self.text(_CODE_MEANING, "LO", code.meaning)
        )


def _item(dataset: bytes) -> bytes:
    return _ITEM + struct.pack("<L", len(dataset)) + dataset


def sequence_element(tag: int, *datasets: bytes) -> bytes:
    """A sequence element of defined length holding ``datasets`` (one item each)."""
    body = b"".join(_item(d) for d in datasets)
    return _header(tag, "SQ", len(body)) + body


def _ui(tag: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    return _value(tag, "UI", _padded(value, b"\0"))


def image_item(sop_class: str, sop_instance: str) -> bytes:
    """One IMAGE content item (the whole item, with its item header)."""
    reference = sequence_element(
        0x00081199, _ui(0x00081150, sop_class) + _ui(0x00081155, sop_instance)
    )
    return _item(reference + _IMAGE_TAIL)


def evidence_item(study_uid: str, series: Iterable[SeriesSummary]) -> bytes:
    """The one item (without item header) of the Current Requested Procedure Evidence
    Sequence: Referenced Series Sequence (0008,1115), then Study Instance UID (0020,000D)."""
    entries = [
        sequence_element(
            0x00081199,
            *(
                _ui(0x00081150, i.sop_class_uid) + _ui(0x00081155, i.sop_instance_uid)
                for i in s.instances
            ),
        )
        + _ui(0x0020000E, s.series_instance_uid)
        for s in series
    ]
    return sequence_element(0x00081115, *entries) + _ui(0x0020000D, study_uid)


def kos_bytes(
    study: StudySummary,
    classification: Classification,
    copied: CopiedElements,
    vocabulary: LabelVocabulary,
    plan: KosPlan,
    now: datetime,
) -> bytes:
    """The Part 10 bytes :func:`adapter.label.kos.encode` gives for
    :func:`adapter.label.kos.build_kos` with the same arguments (``copied`` read by
    :func:`read_copied` from the file ``adapter.label.source`` reads), or :class:`Defer`.

    Raises:
        MappingError: as ``build_head``: not a planning scan, or no image instance.
        RejectionTitleRefused: the title is a rejection title or not on the allow-list.
        Defer: something here is not written exactly as pydicom would; use pydicom.
    """
    if not classification.is_planning:
        raise MappingError("not a planning scan: no label KOS is built")
    series = image_series(study)
    if not series:
        raise MappingError("the study has no CT, MR or PET instance for the KOS to reference")
    if copied.text(_STUDY_UID_TAG) != study.study_instance_uid:
        raise MappingError("the copied attributes belong to another study")
    judge_title(vocabulary.title.value.strip(), vocabulary.title.scheme.strip(),
                vocabulary.allowed_titles)  # fmt: skip
    instances = [i for s in series for i in s.instances]
    for s in series:
        if not _PLAIN_UID.fullmatch(s.series_instance_uid):
            raise Defer("UID")
    for instance in instances:
        if not (_PLAIN_UID.fullmatch(instance.sop_class_uid)
                and _PLAIN_UID.fullmatch(instance.sop_instance_uid)):  # fmt: skip
            raise Defer("UID")

    enc = _Encoder(copied.codec)
    local = in_study_offset(now, copied.text(_TIMEZONE_TAG).strip())
    elements: dict[int, bytes] = {}
    for tag in _TYPE2:
        elements[tag] = _header(tag, _VR_OF[tag], 0)
    for tag, value in copied.values.items():
        elements[tag] = _value(tag, _VR_OF[tag], value)
    elements[0x00080016] = enc.uid(0x00080016, KOS_SOP_CLASS)
    elements[0x00080018] = enc.uid(0x00080018, plan.sop_instance_uid)
    elements[0x00080060] = enc.text(0x00080060, "CS", KOS_MODALITY)
    elements[0x0020000E] = enc.uid(0x0020000E, plan.series_uid)
    elements[0x00200011] = enc.text(0x00200011, "IS", str(plan.series_number))
    elements[0x0008103E] = enc.text(0x0008103E, "LO", vocabulary.series_description)
    elements[0x00081111] = sequence_element(0x00081111)
    elements[0x00080070] = enc.text(0x00080070, "LO", vocabulary.manufacturer)
    elements[0x00200013] = enc.text(0x00200013, "IS", str(plan.instance_number))
    elements[0x00080023] = enc.text(0x00080023, "DA", local.strftime("%Y%m%d"))
    elements[0x00080033] = enc.text(0x00080033, "TM", local.strftime("%H%M%S"))
    elements[0x0040A040] = enc.text(0x0040A040, "CS", "CONTAINER")
    elements[_CONCEPT_NAME] = sequence_element(_CONCEPT_NAME, enc.code(vocabulary.title))
    elements[0x0040A050] = enc.text(0x0040A050, "CS", "SEPARATE")
    template = enc.text(0x00080105, "CS", TEMPLATE_RESOURCE) + enc.text(
        0x0040DB00, "CS", TEMPLATE_ID
    )
    elements[0x0040A504] = sequence_element(0x0040A504, template)
    elements[_EVIDENCE_TAG] = sequence_element(
        _EVIDENCE_TAG, evidence_item(study.study_instance_uid, series)
    )
    text_item = _item(
        enc.text(0x0040A010, "CS", "CONTAINS")
        + enc.text(0x0040A040, "CS", "TEXT")
        + sequence_element(_CONCEPT_NAME, enc.code(vocabulary.description_concept))
        + enc.text(0x0040A160, "UT", label_text(classification, vocabulary))
    )
    content = b"".join(
        [text_item, *(image_item(i.sop_class_uid, i.sop_instance_uid) for i in instances)]
    )
    elements[_CONTENT_TAG] = _header(_CONTENT_TAG, "SQ", len(content)) + content
    dataset = b"".join(elements[tag] for tag in sorted(elements))
    return _file_meta(plan.sop_instance_uid) + dataset


def _file_meta(sop_instance_uid: str) -> bytes:
    """Preamble, 'DICM' and the File Meta group as pydicom writes them for the KOS."""
    enc = _Encoder("ascii")
    group = b"".join(
        [
            _value(0x00020001, "OB", b"\x00\x01"),
            enc.uid(0x00020002, KOS_SOP_CLASS),
            enc.uid(0x00020003, sop_instance_uid),
            enc.uid(0x00020010, "1.2.840.10008.1.2.1"),
            enc.uid(0x00020012, IMPLEMENTATION_CLASS_UID),
            enc.text(0x00020013, "SH", IMPLEMENTATION_VERSION),
        ]
    )
    length = _value(0x00020000, "UL", struct.pack("<L", len(group)))
    return b"\0" * 128 + b"DICM" + length + group
