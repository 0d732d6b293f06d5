"""The pydicom header path: every file the fast path does not accept is read here.

``read_with_pydicom`` runs on a memory-mapped file whose file meta has already been parsed
(``adapter.dicom.header`` opens it and decides links, empty files, missing meta and Deflate
bombs). Its policies, in the order they apply:

* **Lengths.** The file is memory-mapped and handed to pydicom, so a read never returns
  more than the file holds and a declared 0xFFFFFFF0 length allocates nothing. Any element
  whose declared length passes the end of the file, or ``max_element_length``, is
  QUARANTINED ("truncated" / "exceeds"), at any sequence depth.
* **Truncation.** ``stop_before_pixels`` leaves Pixel Data unread; its element header (and
  for encapsulated data, its fragment items) must fit in the file, and for native transfer
  syntaxes its length must cover Rows x Columns x SamplesPerPixel x BitsAllocated x Frames.
* **Nesting** deeper than ``max_sequence_depth`` (or deep enough for pydicom's recursion
  to fail) is QUARANTINED.
* **Invalid values.** pydicom reports invalid values as warnings; they are captured here
  (never left to the caller's warning filters). Missing or invalid required UIDs/Modality
  and invalid pixel-geometry numbers always quarantine. Invalid optional numbers
  (InstanceNumber, SeriesNumber, (0020,1208)) and parser warnings quarantine when
  ``ReadLimits.strict`` (the default), else are dropped and logged by tag. Text-value
  warnings (over-long LO, undecodable bytes) and bad dates/times never quarantine.

Importing this module imports pydicom (about 0.3 s); ``header`` does so only when a file
needs it. Rejection reasons name tags, keywords and sizes; never a value from the file.
"""

from __future__ import annotations

import logging
import mmap
import re
import warnings
from datetime import tzinfo
from functools import lru_cache
from typing import Any, BinaryIO, Final, cast

from pydicom import dcmread
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement

from adapter.dicom.charset import person_name, text
from adapter.dicom.fast import FAST_CODECS, TEXT_VRS, UNSPLIT_VRS, WANTED
from adapter.dicom.limits import (
    DEFLATED_TS,
    EXPLICIT_BE_TS,
    IMPLICIT_LE_TS,
    NATIVE_TS,
    UNDEFINED_LENGTH,
    FileMeta,
    Problem,
    ReadLimits,
    check_pixel_header,
    is_valid_uid,
)
from adapter.dicom.models import InstanceHeader, PersonName
from adapter.dicom.summary import PIXEL_DATA, check_pixel_length, instance_header, tag_text

__all__ = ["read_with_pydicom"]

log = logging.getLogger(__name__)

# Top-level attributes read below. pydicom seeks past every other top-level value, which is
# most of the saving over a plain dcmread (sequence items are always read in full).
_WANTED: Final = sorted(WANTED)


def read_with_pydicom(
    buf: mmap.mmap, size: int, meta: FileMeta, name: str, default_tz: tzinfo, limits: ReadLimits
) -> InstanceHeader:
    """Parse the mapped file with pydicom and summarise it; raises :class:`Problem`."""
    buf.seek(0)
    deflated = meta.transfer_syntax == DEFLATED_TS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ds = dcmread(
                cast(BinaryIO, buf),
                stop_before_pixels=True,
                defer_size=limits.max_element_length,
                specific_tags=_WANTED,
            )
        except (ValueError, OSError, EOFError):
            # The mmap refuses to seek past its end (a skipped element is cut off), or
            # pydicom found no item/tag where one was due: the file is truncated.
            _diagnose(buf, size, limits)
            raise Problem("truncated: an element extends past the end of the file") from None
        stopped_at = buf.tell()
        _check_structure(ds, size, limits)
        if size > limits.max_element_length:
            # specific_tags made pydicom seek past every other top-level element unchecked;
            # only a file this large can hold one over the limit, so only it pays a full walk.
            _check_skipped_elements(buf, size, limits)
        _judge_parse_warnings(caught, name, limits)
        pixel = None
        if not deflated and stopped_at < size:
            pixel = check_pixel_header(
                buf,
                stopped_at,
                size,
                little=meta.transfer_syntax != EXPLICIT_BE_TS,
                implicit=meta.transfer_syntax == IMPLICIT_LE_TS,
            )
        values = _Values(ds, caught, name, limits.strict)
        if pixel is not None and pixel[0] == PIXEL_DATA and meta.transfer_syntax in NATIVE_TS:
            check_pixel_length(values, pixel[1])
        return instance_header(values, name, default_tz)


def _check_skipped_elements(buf: mmap.mmap, size: int, limits: ReadLimits) -> None:
    """Refuse a top-level element over ``max_element_length`` that the specific-tags read
    skipped. Values over the limit are deferred (never allocated), so this stays bounded."""
    resume = buf.tell()
    buf.seek(0)
    try:
        ds = dcmread(
            cast(BinaryIO, buf), stop_before_pixels=True, defer_size=limits.max_element_length
        )
    except (ValueError, OSError, EOFError):
        raise Problem("truncated: an element extends past the end of the file") from None
    _check_structure(ds, size, limits)
    buf.seek(resume)


def _diagnose(buf: mmap.mmap, size: int, limits: ReadLimits) -> None:
    """Slow path after a failed read: parse everything to name the element at fault."""
    if size > limits.max_element_length:
        return
    buf.seek(0)
    try:
        ds = dcmread(cast(BinaryIO, buf), stop_before_pixels=True)
    except Exception:  # the caller reports the generic reason
        return
    _check_structure(ds, size, limits)


def _judge_parse_warnings(
    caught: list[warnings.WarningMessage], name: str, limits: ReadLimits
) -> None:
    """Turn warnings pydicom raised while *parsing* (not converting) into the policy."""
    if not caught:
        return
    texts = [str(w.message) for w in caught]
    if any("End of file" in t or "EOF" in t for t in texts):
        raise Problem("truncated: end of file inside a sequence or item")
    if limits.strict:
        raise Problem(f"parser warning while reading the dataset ({caught[0].category.__name__})")
    log.warning("%s: %d parser warning(s) accepted (strict=False)", name, len(caught))
    caught.clear()


@lru_cache(maxsize=4096)
def _dictionary_is_sq(tag: int) -> bool:
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return False


def _check_structure(ds: Any, size: int, limits: ReadLimits) -> None:
    """Refuse over-long, truncated or over-nested elements at every depth.

    Walks with an explicit stack (no recursion) and only converts sequence elements, so the
    large value elements (contour data, private blobs) stay raw bytes.
    """
    stack: list[tuple[Any, int]] = [(ds, 0)]
    while stack:
        dataset, depth = stack.pop()
        # items() yields the stored elements without converting (or deferred-reading) them.
        for tag, elem in list(dataset.items()):
            if type(elem) is RawDataElement:
                length = elem.length
                if length != UNDEFINED_LENGTH:
                    if depth == 0 and elem.value_tell + length > size:
                        raise Problem(
                            f"truncated: {tag_text(tag)} declares {length} bytes, "
                            f"{max(size - elem.value_tell, 0)} remain in the file"
                        )
                    if length > limits.max_element_length:
                        raise Problem(
                            f"{tag_text(tag)} declares {length} bytes, above the "
                            f"{limits.max_element_length} limit"
                        )
                    if elem.value is not None and len(elem.value) < length:
                        raise Problem(f"truncated: {tag_text(tag)} value is cut off")
                is_sq = elem.VR == "SQ" or (elem.VR is None and _dictionary_is_sq(tag))
            else:
                is_sq = elem.VR == "SQ"
            if not is_sq:
                continue
            if depth + 1 > limits.max_sequence_depth:
                raise Problem(
                    f"sequence nesting deeper than {limits.max_sequence_depth} "
                    f"levels at {tag_text(tag)}"
                )
            items = dataset[tag].value or ()
            stack.extend((item, depth + 1) for item in items)


_IS_RE: Final = re.compile(r"[+-]?[0-9]{1,12}")


@lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


class _Values:
    """Typed getters over one dataset that attribute pydicom's warnings to a tag.

    Plain text values in single-byte/UTF-8 datasets are decoded here from the raw bytes
    (pydicom's per-element converter is the reader's largest cost); everything else goes
    through pydicom with its warnings captured.
    """

    def __init__(
        self, ds: Any, caught: list[warnings.WarningMessage], name: str, strict: bool
    ) -> None:
        self.ds = ds
        self.caught = caught
        self.name = name
        self.strict = strict
        self.codec = self._codec(ds)

    def _codec(self, ds: Any) -> str | None:
        elem = ds.get_item(0x00080005, keep_deferred=True)
        if elem is None:
            return "latin_1"
        value = elem.value
        if isinstance(value, bytes):
            value = value.decode("ascii", "replace")
        if not isinstance(value, str):
            return None
        return FAST_CODECS.get(value.strip(" \0"))

    def raw(self, tag: int, ds: Any = None) -> tuple[Any, bool]:
        """``(value, warned)``; ``(None, False)`` when the element is absent."""
        before = len(self.caught)
        try:
            value = (self.ds if ds is None else ds)[tag].value
        except KeyError:
            return None, False
        return value, len(self.caught) > before

    def _fast_text(self, tag: int, ds: Any) -> str | None:
        """Decoded text straight from a raw element, ``""`` when the element is absent
        (what pydicom's path gives too), or ``None`` to use pydicom.

        Reads the dataset's element dict directly: ``get_item(keep_deferred=True)``
        without its tag normalisation, which costs more than the decoding here.
        """
        elements = ds._dict
        elem = elements.get(tag)
        if elem is None:
            return ""
        if type(elem) is not RawDataElement or elem.value is None:
            return None
        codec = (
            self.codec
            if ds is self.ds
            else (None if elements.get(0x00080005) is not None else self.codec)
        )
        vr = elem.VR or _dictionary_vr(tag)
        if codec is None or vr not in TEXT_VRS:
            return None
        value: str = elem.value.decode(codec, "replace")
        if vr in UNSPLIT_VRS:
            return value.rstrip(" \0")
        if "\\" in value:
            return "\\".join(part.strip(" \0") for part in value.split("\\"))
        return value.strip(" \0")

    def text(self, tag: int, ds: Any = None) -> str:
        ds = self.ds if ds is None else ds
        fast = self._fast_text(tag, ds)
        return fast if fast is not None else text(self.raw(tag, ds)[0])

    def person(self, tag: int) -> PersonName:
        """A top-level PN as :class:`PersonName` (first value of a multi-valued PN).

        Single-byte/UTF-8 datasets are decoded here as pydicom's ``convert_PN`` does
        (trailing NUL/space stripped, first ``\\`` value, ``=`` groups); pydicom's PN
        validation warnings never decided anything for a name, so skipping them changes
        no verdict. Other charsets, and values with ESC, go through pydicom.
        """
        elem = self.ds._dict.get(tag)
        if elem is None:
            return person_name(None)
        if (
            self.codec is not None
            and type(elem) is RawDataElement
            and elem.value is not None
            and (elem.VR or _dictionary_vr(tag)) == "PN"
            and b"\x1b" not in elem.value  # escape sequences: pydicom's decoder
        ):
            value: str = elem.value.rstrip(b"\x00 ").decode(self.codec, "replace")
            return person_name(value.split("\\", 1)[0])
        return person_name(self.raw(tag)[0])

    def uid(self, tag: int, ds: Any = None, *, required: bool = False) -> str:
        """A validated UID; "" when absent and optional. Invalid -> quarantine."""
        value = self.text(tag, ds).rstrip("\0")
        if not value:
            if required:
                raise Problem(f"missing required attribute {tag_text(tag)}")
            return ""
        if not is_valid_uid(value):
            raise Problem(f"invalid UID in {tag_text(tag)}")
        return value

    def integer(self, tag: int, ds: Any = None, *, always_strict: bool = False) -> int | None:
        """An IS/US value as ``int``; invalid -> quarantine (strict) or ``None`` + log."""
        ds = self.ds if ds is None else ds
        fast = self._fast_text(tag, ds)
        if fast is not None:  # IS in a text encoding: validate it ourselves
            if not fast:
                return None
            valid = _IS_RE.fullmatch(fast) is not None
            number = int(fast) if valid else None
        else:
            value, warned = self.raw(tag, ds)
            if value is None or value == "":
                return None
            valid = not warned and isinstance(value, int) and not isinstance(value, bool)
            number = int(value) if valid else None
        if number is not None:
            return number
        if always_strict or self.strict:
            raise Problem(f"invalid value in {tag_text(tag)}")
        log.warning("%s: invalid value in %s dropped (strict=False)", self.name, tag_text(tag))
        return None

    def items(self, tag: int, ds: Any = None) -> list[Any]:
        value = self.raw(tag, ds)[0]
        return list(value) if value else []

    def source_ae_title(self) -> str:
        """(0002,0016) from the file meta, decoded with the dataset's character set."""
        meta = getattr(self.ds, "file_meta", None)
        return self.text(0x00020016, meta) if meta is not None else ""
