"""What the DICOM reader accepts: size limits, UID syntax, and raw-byte guards.

pydicom is lenient by design (reliability.md §3.5): it parses truncated files silently, asks
the OS for whatever length a file declares, inflates a Deflated dataset without bound and
recurses once per nested sequence. The guards here run on the raw bytes *around* pydicom so
that a hostile or broken file becomes a :class:`Problem` (later a ``Rejection``) instead of
an allocation, a hang or a crash:

* :func:`parse_file_meta` reads group 0002 ourselves, so the transfer syntax is known before
  pydicom starts (missing Transfer Syntax UID and Deflate are decided here);
* :func:`check_inflated_size` streams a Deflated dataset through ``zlib`` with a budget;
* :func:`check_pixel_header` looks at the Pixel Data element header that
  ``stop_before_pixels`` leaves unread and checks that its value fits in the file.

Nothing here ever echoes a value read from the file: problems name tags and sizes only.
"""

from __future__ import annotations

import mmap
import re
import struct
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, TypeAlias

ByteSource: TypeAlias = bytes | memoryview | mmap.mmap
"""What the guards read from: the memory-mapped file (or bytes in tests)."""

KiB: Final = 1024
MiB: Final = 1024 * KiB
GiB: Final = 1024 * MiB

UNDEFINED_LENGTH: Final = 0xFFFFFFFF

DEFLATED_TS: Final = "1.2.840.10008.1.2.1.99"
IMPLICIT_LE_TS: Final = "1.2.840.10008.1.2"
EXPLICIT_LE_TS: Final = "1.2.840.10008.1.2.1"
EXPLICIT_BE_TS: Final = "1.2.840.10008.1.2.2"
NATIVE_TS: Final = frozenset({IMPLICIT_LE_TS, EXPLICIT_LE_TS, EXPLICIT_BE_TS})

# VRs whose explicit-VR encoding has 2 reserved bytes and a 4-byte length (PS3.5 §7.1.2).
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
_ITEM: Final = 0xFFFEE000
_SEQ_DELIMITER: Final = 0xFFFEE0DD
_MAX_FRAGMENTS: Final = 1_000_000  # bounds the encapsulated-fragment walk on a crafted file


@dataclass(frozen=True, slots=True)
class ReadLimits:
    """Bounds the reader enforces on every file and archive.

    Attributes:
        max_file_size: Bytes; a larger file is quarantined before it is opened by pydicom.
        max_element_length: Bytes; a header element declaring more is refused. An element
            declaring more than the bytes left in the file is refused as truncated whatever
            this says, and is never allocated.
        max_sequence_depth: Nesting levels of SQ allowed (pydicom itself recurses about 4
            Python frames per level and fails near 250).
        max_inflated_size: Bytes a Deflated Explicit VR dataset may expand to.
        max_inflate_ratio: Inflated/compressed ratio allowed once the inflated size passes
            ``ratio_floor``; small datasets compress very well legitimately.
        ratio_floor: Bytes below which compression ratios are not judged.
        strict: ``True`` quarantines a file with an invalid number in an optional attribute
            (e.g. InstanceNumber "1A") or a pydicom parser warning; ``False`` drops the value
            and logs the tag. Required and pixel-geometry attributes are always strict.
        max_archive_members: Entries (files, dirs, links) allowed in one zip/tar input.
        max_archive_bytes: Total uncompressed bytes extracted from one archive.
    """

    max_file_size: int = 4 * GiB
    max_element_length: int = 64 * MiB
    max_sequence_depth: int = 32
    max_inflated_size: int = 128 * MiB
    max_inflate_ratio: int = 200
    ratio_floor: int = 16 * MiB
    strict: bool = True
    max_archive_members: int = 20_000
    max_archive_bytes: int = 4 * GiB

    def __post_init__(self) -> None:
        for name in (
            "max_file_size",
            "max_element_length",
            "max_sequence_depth",
            "max_inflated_size",
            "max_inflate_ratio",
            "max_archive_members",
            "max_archive_bytes",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"ReadLimits.{name} must be positive")


DEFAULT_LIMITS: Final = ReadLimits()


class Problem(Exception):
    """A file-level verdict found by a guard. ``reason`` names tags/sizes, never values."""

    def __init__(self, reason: str, *, not_dicom: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.not_dicom = not_dicom


# PS3.5 §9.1: components of digits, no leading zero unless the component is "0", <= 64 chars.
_UID_RE: Final = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")


@lru_cache(maxsize=4096)  # study, series, class and frame UIDs repeat on every slice
def is_valid_uid(value: str) -> bool:
    """True if ``value`` is a syntactically valid UID (PS3.5 §9.1).

    UIDs end up in identifiers, URLs and potentially file names, so a value such as
    ``../../x`` or ``/etc/y`` must never get past the reader (CVE-2026-32711 class).
    """
    return 0 < len(value) <= 64 and _UID_RE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class FileMeta:
    """What :func:`parse_file_meta` learnt from group 0002."""

    transfer_syntax: str
    dataset_offset: int  # first byte after the meta group


def parse_file_meta(buf: ByteSource, size: int) -> FileMeta:
    """Read the preamble and the explicit-VR-LE group 0002 without pydicom.

    Raises:
        Problem: ``not_dicom`` when there is no 'DICM' prefix (the reader then decides
            between "not DICOM" and "raw dataset without meta"); otherwise for a missing or
            truncated meta group or a missing Transfer Syntax UID (0002,0010).
    """
    if size < 132 or bytes(buf[128:132]) != b"DICM":
        raise Problem("no 'DICM' prefix", not_dicom=True)
    pos = 132
    transfer_syntax = ""
    while pos + 8 <= size:
        group, elem = struct.unpack_from("<HH", buf, pos)
        if group != 0x0002:
            break
        vr = bytes(buf[pos + 4 : pos + 6])
        if vr in _LONG_VRS:
            if pos + 12 > size:
                raise Problem("truncated: file meta information ends mid-element")
            (length,) = struct.unpack_from("<L", buf, pos + 8)
            value_at = pos + 12
        else:
            (length,) = struct.unpack_from("<H", buf, pos + 6)
            value_at = pos + 8
        if length == UNDEFINED_LENGTH or value_at + length > size:
            raise Problem(f"truncated: file meta element (0002,{elem:04X}) exceeds the file")
        if elem == 0x0010:
            transfer_syntax = (
                bytes(buf[value_at : value_at + length]).decode("ascii", "replace").rstrip("\0 ")
            )
        pos = value_at + length
    if not transfer_syntax:
        raise Problem("file meta information lacks TransferSyntaxUID (0002,0010)")
    if not is_valid_uid(transfer_syntax):
        raise Problem("invalid UID in TransferSyntaxUID (0002,0010)")
    return FileMeta(transfer_syntax, pos)


_RAW_DATASET_MARKERS: Final = tuple(
    struct.pack(fmt, 0x0008, elem) for fmt in ("<HH", ">HH") for elem in (0x0005, 0x0008, 0x0016)
)


def looks_like_raw_dataset(head: bytes) -> bool:
    """True if ``head`` (the first bytes) holds a group-0008 tag a dataset starts with.

    Datasets written without preamble and meta (pydicom's ``no_meta.dcm``, ``rtstruct.dcm``)
    start with (0008,0005), (0008,0008) or (0008,0016) in little or big endian. Text files
    never contain these bytes; for other binary files a false hit only turns NOT_DICOM into
    QUARANTINED, both of which are rejections.
    """
    return any(marker in head for marker in _RAW_DATASET_MARKERS)


def check_inflated_size(buf: ByteSource, start: int, limits: ReadLimits) -> None:
    """Stream the raw-deflate dataset at ``buf[start:]`` and enforce size and ratio limits.

    Policy: Deflated Explicit VR Little Endian is accepted only if it inflates within
    ``max_inflated_size`` (and ``max_inflate_ratio`` above ``ratio_floor``); pydicom then
    inflates it again, knowing the result is bounded. Output is counted, never kept.

    Raises:
        Problem: if the stream is corrupt or expands beyond the limits.
    """
    compressed = max(len(buf) - start, 1)
    cap = min(
        limits.max_inflated_size, max(compressed * limits.max_inflate_ratio, limits.ratio_floor)
    )
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    chunk = 1 * MiB
    try:
        for offset in range(start, len(buf), chunk):
            data: bytes = bytes(buf[offset : offset + chunk])
            while data:
                total += len(inflater.decompress(data, chunk))
                if total > cap:
                    raise Problem(
                        f"deflated dataset expands beyond {cap} bytes (decompression bomb)"
                    )
                data = inflater.unconsumed_tail
        total += len(inflater.flush())
    except zlib.error:
        raise Problem("deflated dataset is corrupt") from None
    if total > cap:
        raise Problem(f"deflated dataset expands beyond {cap} bytes (decompression bomb)")


def check_pixel_header(
    buf: ByteSource, pos: int, size: int, *, little: bool, implicit: bool
) -> tuple[int, int] | None:
    """Check the element at ``pos`` (where ``stop_before_pixels`` stopped) fits in the file.

    Returns:
        ``(tag, length)`` of a defined-length pixel element, ``None`` for encapsulated
        (undefined-length) pixel data whose fragments were walked to the delimiter.

    Raises:
        Problem: "truncated" if the element header, its value or a fragment ends past the
            end of the file, or the encapsulated sequence has no delimiter.
    """
    end = "<" if little else ">"
    if pos + 8 > size:
        raise Problem("truncated: pixel data element header is cut off")
    group, elem = struct.unpack_from(f"{end}HH", buf, pos)
    if implicit:
        (length,) = struct.unpack_from(f"{end}L", buf, pos + 4)
        value_at = pos + 8
    elif bytes(buf[pos + 4 : pos + 6]) in _LONG_VRS:
        if pos + 12 > size:
            raise Problem("truncated: pixel data element header is cut off")
        (length,) = struct.unpack_from(f"{end}L", buf, pos + 8)
        value_at = pos + 12
    else:
        (length,) = struct.unpack_from(f"{end}H", buf, pos + 6)
        value_at = pos + 8
    tag_text = f"({group:04X},{elem:04X})"
    if length != UNDEFINED_LENGTH:
        if value_at + length > size:
            raise Problem(
                f"truncated: {tag_text} declares {length} bytes, "
                f"{size - value_at} remain in the file"
            )
        return (group << 16 | elem, length)
    at = value_at
    for _ in range(_MAX_FRAGMENTS):
        if at + 8 > size:
            break
        tag_g, tag_e, item_len = struct.unpack_from(f"{end}HHL", buf, at)
        tag = tag_g << 16 | tag_e
        if tag == _SEQ_DELIMITER:
            return None
        if tag != _ITEM or item_len == UNDEFINED_LENGTH or at + 8 + item_len > size:
            break
        at += 8 + item_len
    raise Problem(f"truncated: encapsulated {tag_text} has no complete fragment sequence")
