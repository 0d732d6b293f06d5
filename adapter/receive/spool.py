"""The receive spool: each C-STORE instance as the bytes received, on disk before we say yes.

Layout (all folders 0700, files 0600: they hold patient data)::

    <spool>/incoming/<study key>/<instance key>.dcm   received, not yet processed
    <spool>/expected/<study key>                      (0020,1208) as last received, if any
    <spool>/studies/<study key>/<instance key>.dcm    processed: the header only (the bytes
                                                      before Pixel Data), kept so that a late
                                                      instance re-maps the whole study
    <spool>/quarantine/<instance key>.dcm             received but refused by ingest (kept)

Keys are hashes of the UIDs (never the UIDs themselves) so a hostile UID cannot name a path.
A file is written to a temporary name, fsynced, renamed and its folder fsynced: once
:meth:`Spool.store` returns, the instance survives a crash. An instance whose SOP Instance UID
is already spooled (incoming or processed) is a duplicate and is dropped.

The spool is the receiver's only state: after a restart, :meth:`Spool.pending` finds the
studies still waiting, with their last-arrival time from the files' modification times.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path
from typing import Final

from pydicom import dcmread
from pydicom.filereader import read_file_meta_info

from adapter.dicom.limits import DEFLATED_TS

INCOMING: Final = "incoming"
STUDIES: Final = "studies"
EXPECTED: Final = "expected"  # outside the study folders: ingest reads every file there
QUARANTINE: Final = "quarantine"
_SUFFIX: Final = ".dcm"
_EXPECTED_CACHE: Final = 10_000


def uid_key(uid: str) -> str:
    """A path-safe name for a UID."""
    return hashlib.sha256(uid.encode()).hexdigest()[:32]


class NotStorable(ValueError):
    """The received data set lacks what the spool needs (one line, no patient data)."""


@dataclass(frozen=True, slots=True)
class Identity:
    """What the spool reads from a received instance (and nothing else)."""

    study_uid: str
    sop_instance_uid: str
    expected: int | None  # Number of Study Related Instances (0020,1208)


@dataclass(frozen=True, slots=True)
class PendingStudy:
    key: str
    received: int  # instances waiting in incoming/
    processed: int  # instances of the same study already processed (headers kept)
    last_received: float  # epoch seconds of the newest incoming file
    expected: int | None

    @property
    def total(self) -> int:
        return self.received + self.processed


def identify(raw: bytes) -> Identity:
    """Read the study and instance UIDs (and the expected count) from a Part 10 byte string.

    Only these three elements are parsed; the bytes stay as they are.

    Raises:
        NotStorable: not DICOM, or a UID is missing.
    """
    try:
        ds = dcmread(
            BytesIO(raw),
            stop_before_pixels=True,
            specific_tags=[(0x0008, 0x0018), (0x0020, 0x000D), (0x0020, 0x1208)],
        )
        study = str(ds.get("StudyInstanceUID", "") or "").strip()
        sop = str(ds.get("SOPInstanceUID", "") or "").strip()
        expected_raw = ds.get((0x0020, 0x1208))
        expected = _count(expected_raw.value if expected_raw is not None else None)
    except Exception as exc:  # pydicom on hostile bytes: NotImplementedError, struct.error,
        # zlib.error, RecursionError as well as its own errors; the answer is the same C000.
        raise NotStorable(f"cannot read the data set: {type(exc).__name__}") from None
    if not study:
        raise NotStorable("Study Instance UID (0020,000D) is missing")
    if not sop:
        raise NotStorable("SOP Instance UID (0008,0018) is missing")
    return Identity(study, sop, expected)


def _count(value: object) -> int | None:
    try:
        number = int(str(value).strip()) if value not in (None, "") else None
    except ValueError:
        return None
    return number if number is not None and number > 0 else None


class Spool:
    """Thread-safe: the receiver calls :meth:`store` from one thread per association."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lock = threading.Lock()
        self._index: dict[str, PendingStudy] | None = None
        # (0020,1208) as on disk, per study key: every instance of a study usually repeats the
        # same count, and rewriting it durably each time doubled the fsyncs per instance.
        self._expected_known: dict[str, int | None] = {}
        for folder in (root, root / INCOMING, root / STUDIES, root / EXPECTED):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            folder.chmod(0o700)

    def store(self, raw: bytes, identity: Identity) -> bool:
        """Write one instance durably; False if its SOP Instance UID is already spooled.

        Raises:
            OSError: the instance could not be written (the caller answers a failure status).
        """
        study = uid_key(identity.study_uid)
        name = uid_key(identity.sop_instance_uid) + _SUFFIX
        incoming = self.root / INCOMING / study
        with self._lock:
            if (incoming / name).exists() or (self.root / STUDIES / study / name).exists():
                return False
            _make_private_dir(incoming)
            _write_durably(incoming / name, raw)
            if identity.expected is not None and self._expected(study) != identity.expected:
                _write_durably(self.root / EXPECTED / study, str(identity.expected).encode())
                self._expected_known[study] = identity.expected
            if self._index is not None:
                entry = self._index.get(study)
                if entry is None:
                    self._rescan(study)
                else:
                    self._index[study] = replace(
                        entry,
                        received=entry.received + 1,
                        last_received=time.time(),
                        expected=identity.expected or entry.expected,
                    )
            return True

    def _expected(self, study: str) -> int | None:
        if study not in self._expected_known:
            if len(self._expected_known) >= _EXPECTED_CACHE:
                self._expected_known.clear()  # bounded: re-read from disk when needed
            path = self.root / EXPECTED / study
            text = path.read_text(encoding="ascii") if path.exists() else ""
            self._expected_known[study] = _count(text)
        return self._expected_known[study]

    def pending(self) -> list[PendingStudy]:
        """Studies with instances waiting, oldest activity first (from an index kept in
        memory, built from the disk once: the receiver asks after every instance)."""
        with self._lock:
            if self._index is None:
                self._index = {}
                for folder in sorted((self.root / INCOMING).iterdir()):
                    self._rescan(folder.name)
            found = list(self._index.values())
        return sorted(found, key=lambda s: s.last_received)

    def _rescan(self, key: str) -> None:
        """Read one study's entry from the disk (at start, and after it was settled)."""
        assert self._index is not None
        files = [p for p in (self.root / INCOMING / key).glob(f"*{_SUFFIX}") if p.is_file()]
        if not files:
            self._index.pop(key, None)
            return
        expected_file = self.root / EXPECTED / key
        expected = (
            _count(expected_file.read_text(encoding="ascii")) if expected_file.exists() else None
        )
        done = len(list((self.root / STUDIES / key).glob(f"*{_SUFFIX}")))
        last = max(p.stat().st_mtime for p in files)
        self._index[key] = PendingStudy(key, len(files), done, last, expected)

    def ready(self, now: float, quiet_seconds: float) -> list[PendingStudy]:
        """Studies idle for ``quiet_seconds``, or whose expected count has arrived."""
        return [
            s
            for s in self.pending()
            if now - s.last_received >= quiet_seconds
            or (s.expected is not None and s.total >= s.expected)
        ]

    def kept(self, key: str) -> list[Path]:
        """The headers kept from the study's earlier processing (ingested with a late batch)."""
        return sorted((self.root / STUDIES / key).glob(f"*{_SUFFIX}"))

    def incoming_files(self, key: str) -> list[Path]:
        return sorted((self.root / INCOMING / key).glob(f"*{_SUFFIX}"))

    def settle(self, key: str, files: list[Path], quarantined: Sequence[Path] = ()) -> None:
        """The store holds the study's result: keep each instance's header for late arrivals,
        then remove the spool entry (``files``: those that were processed). ``quarantined``
        files (ingest rejected them) move whole to ``<spool>/quarantine/``."""
        kept = self.root / STUDIES / key
        with self._lock:
            _make_private_dir(kept)
            for path in files:
                _write_durably(kept / path.name, header_bytes(path))
                path.unlink()
            if quarantined:
                _make_private_dir(self.root / QUARANTINE)
                for path in quarantined:
                    path.replace(self.root / QUARANTINE / path.name)
            _fsync_dir(kept)
            folder = self.root / INCOMING / key
            if not any(folder.glob(f"*{_SUFFIX}")):
                shutil.rmtree(folder, ignore_errors=True)
            _fsync_dir(self.root / INCOMING)
            if self._index is not None:
                self._rescan(key)  # instances that arrived while it was processed stay


def header_bytes(path: Path) -> bytes:
    """The file's bytes up to its Pixel Data element: what ingest reads, a fraction of the
    size. Cut, not re-encoded; a deflated or unreadable file is kept whole."""
    raw = path.read_bytes()
    try:
        if str(read_file_meta_info(path).get("TransferSyntaxUID", "")) == DEFLATED_TS:
            return raw  # not inflated here: ingest inflates it within its limits
        with path.open("rb") as handle:
            ds = dcmread(handle, stop_before_pixels=True)
            offset = handle.tell()
    except Exception:  # whatever pydicom raises on bytes it cannot read: kept whole
        return raw
    if "PixelData" in ds or offset >= len(raw):
        return raw
    return raw[:offset]


def _make_private_dir(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)


def _write_durably(target: Path, data: bytes) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    tmp.replace(target)
    _fsync_dir(target.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
