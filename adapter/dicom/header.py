"""One DICOM file -> :class:`InstanceHeader` or :class:`Rejection`; the only pydicom user.

``read_header`` never raises for bad input. Its policies, in the order they apply:

* **Not a regular file.** Opened with ``O_NOFOLLOW | O_NONBLOCK``: a symbolic link is
  quarantined ("symbolic link not followed"), as are directories, FIFOs and devices; an
  empty file is NOT_DICOM.
* **No 'DICM' prefix.** If the first bytes look like a raw group-0008 dataset (pydicom's
  ``no_meta.dcm``) the file is QUARANTINED: it may be DICOM, but without PS3.10 meta its
  transfer syntax is a guess, so it is kept aside for a human. Anything else is NOT_DICOM.
  Files are never accepted on the preamble magic alone (CVE-2019-11687 polyglots): the
  whole header must also parse.
* **Meta without Transfer Syntax UID** (``meta_missing_tsyntax.dcm``): QUARANTINED.
* **Deflated Explicit VR LE**: accepted only if it inflates within ``ReadLimits``
  (see :func:`adapter.dicom.limits.check_inflated_size`), else QUARANTINED as a bomb.
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

Rejection reasons name tags, keywords and sizes; they never contain a value from the file.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import re
import stat
import warnings
from datetime import tzinfo
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, Final, cast

from pydicom import dcmread
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import RawDataElement

from adapter.dicom.charset import person_name, text
from adapter.dicom.limits import (
    DEFAULT_LIMITS,
    DEFLATED_TS,
    EXPLICIT_BE_TS,
    IMPLICIT_LE_TS,
    NATIVE_TS,
    UNDEFINED_LENGTH,
    Problem,
    ReadLimits,
    check_inflated_size,
    check_pixel_header,
    is_valid_uid,
    looks_like_raw_dataset,
    parse_file_meta,
)
from adapter.dicom.models import (
    CodedValue,
    InstanceHeader,
    PatientSummary,
    PersonName,
    Rejection,
    RejectionKind,
    RTReferences,
)
from adapter.dicom.times import combine, parse_date

__all__ = ["read_header"]

log = logging.getLogger(__name__)

_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_PIXEL_DATA: Final = 0x7FE00010
# Top-level attributes read below. pydicom seeks past every other top-level value, which is
# most of the saving over a plain dcmread (sequence items are always read in full).
_WANTED: Final = [
    0x00080005,
    0x00080016,
    0x00080018,
    0x00080020,
    0x00080021,
    0x00080030,
    0x00080031,
    0x00080050,
    0x00080051,
    0x00080060,
    0x00080090,
    0x00080201,
    0x00081010,
    0x00081030,
    0x00081032,
    0x0008103E,
    0x00100010,
    0x00100020,
    0x00100021,
    0x00100030,
    0x00100040,
    0x00180010,
    0x00180015,
    0x00181030,
    0x0020000D,
    0x0020000E,
    0x00200010,
    0x00200011,
    0x00200013,
    0x00200052,
    0x00200060,
    0x00200062,
    0x00201208,
    0x00280002,
    0x00280004,
    0x00280008,
    0x00280010,
    0x00280011,
    0x00280100,
    0x00321064,
    0x00400275,
    0x00401001,
    0x00401002,
    0x30060010,
    0x30060020,
    0x300C0060,
]


def read_header(
    path: Path, *, default_tz: tzinfo, limits: ReadLimits = DEFAULT_LIMITS
) -> InstanceHeader | Rejection:
    """Read one file's DICOM header (pixels stay on disk) and summarise it.

    Parameters:
        path: The file. Symbolic links are not followed.
        default_tz: IANA zone applied to study/series times without (0008,0201).
        limits: Size, depth and strictness bounds (``DEFAULT_LIMITS``).

    Returns:
        An :class:`InstanceHeader`, or a :class:`Rejection` whose reason names the field
        at fault and carries no patient data. Never raises for bad input.
    """
    name = str(path)
    try:
        return _read(path, name, default_tz, limits)
    except Problem as problem:
        kind = RejectionKind.NOT_DICOM if problem.not_dicom else RejectionKind.QUARANTINED
        return Rejection(name, kind, problem.reason)
    except RecursionError:
        return Rejection(
            name,
            RejectionKind.QUARANTINED,
            "sequence nesting too deep for the parser (RecursionError)",
        )
    except MemoryError:
        return Rejection(name, RejectionKind.QUARANTINED, "memory exhausted while parsing")
    except Exception as exc:  # pydicom raises many types; none may escape (reason: type only)
        return Rejection(
            name, RejectionKind.QUARANTINED, f"unreadable DICOM dataset ({type(exc).__name__})"
        )


def _open_mapped(path: Path, limits: ReadLimits) -> tuple[mmap.mmap, int]:
    """Open without following links, check the file type and size, and map it read-only."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Problem("symbolic link not followed") from None
        raise Problem(
            f"cannot open file ({errno.errorcode.get(exc.errno or 0, 'OSError')})", not_dicom=True
        ) from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise Problem("a directory, not a regular file (could not be listed?)")
        if not stat.S_ISREG(info.st_mode):
            raise Problem("not a regular file (device, FIFO or socket)")
        size = info.st_size
        if size == 0:
            raise Problem("empty file", not_dicom=True)
        if size > limits.max_file_size:
            raise Problem(f"file is {size} bytes, above the {limits.max_file_size} limit")
        return mmap.mmap(fd, 0, access=mmap.ACCESS_READ), size
    finally:
        os.close(fd)


def _read(path: Path, name: str, default_tz: tzinfo, limits: ReadLimits) -> InstanceHeader:
    buf, size = _open_mapped(path, limits)
    try:
        try:
            meta = parse_file_meta(buf, size)
        except Problem as problem:
            if not problem.not_dicom:
                raise
            if looks_like_raw_dataset(buf[:256]):
                raise Problem(
                    "no DICOM file meta information (preamble and 'DICM' prefix "
                    "missing); raw datasets are quarantined"
                ) from None
            raise Problem("not a DICOM file", not_dicom=True) from None
        deflated = meta.transfer_syntax == DEFLATED_TS
        if deflated:
            check_inflated_size(buf, meta.dataset_offset, limits)
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
            if pixel is not None and pixel[0] == _PIXEL_DATA and meta.transfer_syntax in NATIVE_TS:
                _check_pixel_length(values, pixel[1])
            return _instance_header(values, name, default_tz)
    finally:
        buf.close()


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


def tag_text(tag: int) -> str:
    """``Keyword (gggg,eeee)`` for reasons and logs; never includes a value."""
    keyword = keyword_for_tag(tag) or "private/unknown"
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


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


def _check_pixel_length(values: _Values, length: int) -> None:
    """Native pixel data must hold every frame the geometry attributes promise."""
    rows = values.integer(0x00280010, always_strict=True)
    columns = values.integer(0x00280011, always_strict=True)
    bits = values.integer(0x00280100, always_strict=True)
    samples = values.integer(0x00280002, always_strict=True) or 1
    frames = values.integer(0x00280008, always_strict=True) or 1
    for tag, value in ((0x00280010, rows), (0x00280011, columns), (0x00280100, bits)):
        if value is None:
            raise Problem(f"pixel data present but {tag_text(tag)} is missing")
    assert rows is not None and columns is not None and bits is not None
    if values.text(0x00280004).upper() == "YBR_FULL_422":  # 2 chroma per 2 pixels
        samples = 2
    expected = (rows * columns * samples * frames * bits + 7) // 8
    if length < expected:
        raise Problem(
            f"truncated: PixelData (7FE0,0010) holds {length} bytes, the image "
            f"geometry needs {expected}"
        )


_TEXT_VRS: Final = frozenset(
    {"AE", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
_UNSPLIT_VRS: Final = frozenset({"LT", "ST", "UT", "UR"})
# Charsets decoded directly (pydicom decodes "no charset" as latin-1 too); others, notably
# ISO 2022 with escape sequences, go through pydicom's converter.
_FAST_CODECS: Final = {
    "": "latin_1",
    "ISO_IR 6": "latin_1",
    "ISO_IR 100": "latin_1",
    "ISO_IR 192": "utf_8",
}
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
        return _FAST_CODECS.get(value.strip(" \0"))

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
        if codec is None or vr not in _TEXT_VRS:
            return None
        value: str = elem.value.decode(codec, "replace")
        if vr in _UNSPLIT_VRS:
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

    def codes(self, tag: int, ds: Any = None) -> tuple[CodedValue, ...]:
        """Items of a code sequence; items with neither value nor meaning are skipped."""
        out = []
        for item in self.items(tag, ds):
            code = (
                self.text(0x00080100, item)
                or self.text(0x00080119, item)
                or self.text(0x00080120, item)
            )
            scheme, meaning = self.text(0x00080102, item), self.text(0x00080104, item)
            if code or meaning:
                out.append(CodedValue(code=code, scheme=scheme, meaning=meaning))
        return tuple(out)


_RT_MODALITIES: Final = frozenset({"RTSTRUCT", "RTPLAN", "RTDOSE", "RTIMAGE", "RTRECORD"})
_RT_SOP_PREFIX: Final = "1.2.840.10008.5.1.4.1.1.481."


def _rt_references(v: _Values, own_for: str) -> RTReferences:
    """Follow the RTSTRUCT chain (3006,0010)>(3006,0012)>(3006,0014)>(3006,0016), the ROI
    frames (3006,0020)>(3006,0024) and RTPLAN's (300C,0060). Referenced UIDs are validated
    like our own: they are later used as keys."""
    frames: dict[str, None] = {own_for: None} if own_for else {}
    series: dict[str, None] = {}
    instances: dict[str, None] = {}
    for ref_for in v.items(0x30060010):
        frames[v.uid(0x00200052, ref_for)] = None
        for study in v.items(0x30060012, ref_for):
            for ser in v.items(0x30060014, study):
                series[v.uid(0x0020000E, ser)] = None
                for image in v.items(0x30060016, ser):
                    instances[v.uid(0x00081155, image)] = None
    for roi in v.items(0x30060020):
        frames[v.uid(0x30060024, roi)] = None
    structure_sets = {v.uid(0x00081155, item): None for item in v.items(0x300C0060)}
    return RTReferences(
        frame_of_reference_uids=tuple(u for u in frames if u),
        series_uids=tuple(u for u in series if u),
        sop_instance_uids=tuple(u for u in instances if u),
        referenced_structure_set_uids=tuple(u for u in structure_sets if u),
    )


def _instance_header(v: _Values, name: str, default_tz: tzinfo) -> InstanceHeader:
    """Pick the attributes of standards.md §6a; required ones first so they fail fast."""
    study_uid = v.uid(0x0020000D, required=True)
    series_uid = v.uid(0x0020000E, required=True)
    sop_uid = v.uid(0x00080018, required=True)
    sop_class = v.uid(0x00080016, required=True)
    modality = v.text(0x00080060).upper()
    if not modality:
        raise Problem(f"missing required attribute {tag_text(0x00080060)}")
    frame_of_reference = v.uid(0x00200052)
    offset = v.text(0x00080201)
    issuers = v.items(0x00080051)
    accession_issuer = ""
    if issuers:
        accession_issuer = v.text(0x00400031, issuers[0]) or v.text(0x00400032, issuers[0])
    requests = v.items(0x00400275)
    requested_codes = list(v.codes(0x00321064))
    requested_id = v.text(0x00401001)
    reason = v.text(0x00401002)
    scheduled_step_id = ""
    for request in requests:
        requested_codes.extend(v.codes(0x00321064, request))
        requested_id = requested_id or v.text(0x00401001, request)
        reason = reason or v.text(0x00401002, request)
        scheduled_step_id = scheduled_step_id or v.text(0x00400009, request)
    is_rt = modality in _RT_MODALITIES or sop_class.startswith(_RT_SOP_PREFIX)
    meta = getattr(v.ds, "file_meta", None)
    return InstanceHeader(
        path=name,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        instance_number=v.integer(0x00200013),
        series_instance_uid=series_uid,
        series_number=v.integer(0x00200011),
        modality=modality,
        series_description=v.text(0x0008103E),
        series_started=combine(v.text(0x00080021), v.text(0x00080031), offset, default_tz),
        body_part_examined=v.text(0x00180015),
        laterality=v.text(0x00200060) or v.text(0x00200062),
        frame_of_reference_uid=frame_of_reference,
        protocol_name=v.text(0x00181030),
        station_name=v.text(0x00081010),
        contrast_agent=v.text(0x00180010),
        study_instance_uid=study_uid,
        study_id=v.text(0x00200010),
        accession_number=v.text(0x00080050),
        accession_issuer=accession_issuer,
        study_description=v.text(0x00081030),
        study_started=combine(v.text(0x00080020), v.text(0x00080030), offset, default_tz),
        referring_physician=v.person(0x00080090),
        procedure_codes=v.codes(0x00081032),
        requested_procedure_codes=tuple(dict.fromkeys(requested_codes)),
        requested_procedure_id=requested_id,
        reason_for_request=reason,
        number_of_study_related_instances=v.integer(0x00201208),
        source_ae_title=v.text(0x00020016, meta) if meta is not None else "",
        patient=PatientSummary(
            patient_id=v.text(0x00100020),
            issuer=v.text(0x00100021),
            name=v.person(0x00100010),
            birth_date=parse_date(v.text(0x00100030)),
            sex=v.text(0x00100040).upper(),
        ),
        rt=_rt_references(v, frame_of_reference) if is_rt else None,
        scheduled_step_id=scheduled_step_id,
    )
