"""One DICOM file -> :class:`InstanceHeader` or :class:`Rejection`, by one of two paths.

``read_header`` never raises for bad input. What it decides itself, before either path:

* **Not a regular file.** Opened with ``O_NOFOLLOW | O_NONBLOCK``: a symbolic link is
  quarantined ("symbolic link not followed"), as are directories, FIFOs and devices; an
  empty file is NOT_DICOM; a file above ``max_file_size`` is quarantined.
* **No 'DICM' prefix.** If the first bytes look like a raw group-0008 dataset (pydicom's
  ``no_meta.dcm``) the file is QUARANTINED: it may be DICOM, but without PS3.10 meta its
  transfer syntax is a guess, so it is kept aside for a human. Anything else is NOT_DICOM.
  Files are never accepted on the preamble magic alone (CVE-2019-11687 polyglots): the
  whole header must also parse.
* **Meta without Transfer Syntax UID** (``meta_missing_tsyntax.dcm``): QUARANTINED.
* **Deflated Explicit VR LE**: accepted only if it inflates within ``ReadLimits``
  (see :func:`adapter.dicom.limits.check_inflated_size`), else QUARANTINED as a bomb.

Then the file (memory-mapped, never read into memory whole) goes to:

1. the **fast path** (``adapter.dicom.fast``): a bounded scanner over the raw bytes of plain
   Explicit VR Little Endian files. It only accepts; on anything unusual it defers;
2. the **pydicom path** (``adapter.dicom.pydicom_path``) for every deferred file. It holds
   every policy on lengths, truncation, nesting and invalid values, and words every
   quarantine reason. pydicom is imported the first time a file needs it.

A header or rejection that came from the pydicom path after a deferral carries the fast
path's reason in ``deferred``; ``run_ingest`` counts them for the report.
Rejection reasons name tags, keywords and sizes; they never contain a value from the file.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from collections.abc import Callable
from dataclasses import replace
from datetime import tzinfo
from pathlib import Path
from typing import Final, TypeVar

from adapter.dicom.fast import Defer, read_fast
from adapter.dicom.limits import (
    DEFAULT_LIMITS,
    DEFLATED_TS,
    FileMeta,
    Problem,
    ReadLimits,
    check_inflated_size,
    looks_like_raw_dataset,
    parse_file_meta,
)
from adapter.dicom.models import InstanceHeader, Rejection, RejectionKind
from adapter.dicom.summary import tag_text

__all__ = ["read_header", "tag_text"]

_OPEN_FLAGS: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def read_header(
    path: Path, *, default_tz: tzinfo, limits: ReadLimits = DEFAULT_LIMITS, fast: bool = True
) -> InstanceHeader | Rejection:
    """Read one file's DICOM header (pixels stay on disk) and summarise it.

    Parameters:
        path: The file. Symbolic links are not followed.
        default_tz: IANA zone applied to study/series times without (0008,0201).
        limits: Size, depth and strictness bounds (``DEFAULT_LIMITS``).
        fast: Try the fast path first (the default). ``False`` reads with the pydicom path
            only; the differential test compares the two.

    Returns:
        An :class:`InstanceHeader`, or a :class:`Rejection` whose reason names the field
        at fault and carries no patient data. Never raises for bad input.
    """
    name = str(path)
    opened = _verdict(name, lambda: _open(path, limits))
    if isinstance(opened, Rejection):
        return opened
    buf, size, meta = opened
    try:
        deferred = ""
        if fast:
            try:
                return read_fast(buf, size, meta, name, default_tz, limits)
            except Defer as defer:
                deferred = defer.reason
            except Exception as exc:  # a fast-path bug must not decide a file: defer it
                deferred = f"fast path failed ({type(exc).__name__})"
        result = _verdict(name, lambda: _pydicom_path(buf, size, meta, name, default_tz, limits))
        return replace(result, deferred=deferred) if deferred else result
    finally:
        buf.close()


_T = TypeVar("_T")


def _verdict(name: str, step: Callable[[], _T]) -> _T | Rejection:
    """Run ``step``; a :class:`Problem` or any error becomes a Rejection naming no value."""
    try:
        return step()
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


def _open(path: Path, limits: ReadLimits) -> tuple[mmap.mmap, int, FileMeta]:
    """Map the file and decide what needs no dataset parser: meta, raw datasets, Deflate."""
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
        if meta.transfer_syntax == DEFLATED_TS:
            check_inflated_size(buf, meta.dataset_offset, limits)
    except BaseException:
        buf.close()
        raise
    return buf, size, meta


def _pydicom_path(
    buf: mmap.mmap, size: int, meta: FileMeta, name: str, default_tz: tzinfo, limits: ReadLimits
) -> InstanceHeader:
    from adapter.dicom.pydicom_path import read_with_pydicom  # imports pydicom (~0.3 s)

    return read_with_pydicom(buf, size, meta, name, default_tz, limits)
