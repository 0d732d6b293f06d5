"""Private files: everything that may hold patient data is created owner-only and never
written through a symlink.

- Files are created ``0600`` and folders ``0700`` whatever the process umask (the modes are
  passed to ``open``/``mkdir`` and then set explicitly, so a umask of 022 cannot widen them).
- A write opens the final path component with ``O_NOFOLLOW`` and refuses a path whose folder
  is a symlink inside the output tree, so a link planted in ``--out`` cannot redirect patient
  data (or overwrite a file elsewhere).
- Existing folders that the adapter did not create (``/tmp``, a user's ``--out``) keep their
  mode: the adapter never chmods what it does not own; the files inside are still 0600.

``rtplan`` also sets its umask to 077 at start (``adapter.cli``), so files that third-party
code creates (SQLite's ``-wal``/``-shm``, temporary files) are private too.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from adapter.errors import ConfigError

__all__ = [
    "FILE_MODE",
    "FOLDER_MODE",
    "private_dir",
    "replace_private",
    "state_dir",
    "touch_private",
    "write_private",
]

FILE_MODE = 0o600
FOLDER_MODE = 0o700


def log_key(identifier: str) -> str:
    """A stable, PHI-free stand-in for an identifier (a UID, a review id) in logs, row labels
    and file names: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(identifier.encode()).hexdigest()[:16]


def state_dir() -> Path:
    """The per-user state folder: ``$XDG_STATE_HOME/rtplan``, else ``~/.local/state/rtplan``."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "rtplan"


def private_dir(path: Path) -> Path:
    """Create ``path`` (and missing parents) as 0700 folders; refuse a symlink or a file.

    Raises:
        ConfigError: the path exists and is not a folder, is a symlink, or cannot be made.
    """
    missing: list[Path] = []
    probe = path
    while not probe.exists() and not probe.is_symlink():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.is_symlink() and not missing:
        raise ConfigError(str(path), "is a symlink; refusing to write patient data through it")
    if probe.exists() and not probe.is_dir():
        raise ConfigError(str(probe), "is not a folder")
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=FOLDER_MODE)
        except FileExistsError:
            pass
        except OSError as exc:
            raise ConfigError(str(folder), f"cannot create the folder: {exc.strerror}") from None
        folder.chmod(FOLDER_MODE)
    return path


def _open_flags() -> int:
    return os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _check_parent(path: Path) -> None:
    if path.parent.is_symlink():
        raise ConfigError(str(path.parent), "is a symlink; refusing to write patient data there")


def write_private(
    path: Path, data: bytes | str, *, encoding: str = "utf-8", sync: bool = False
) -> None:
    """Write ``data`` to ``path`` as a 0600 file, replacing its content; never via a symlink.

    Raises:
        ConfigError: ``path`` (or its folder) is a symlink, or it cannot be written.
    """
    raw = data.encode(encoding) if isinstance(data, str) else data
    _check_parent(path)
    try:
        fd = os.open(path, _open_flags() | os.O_TRUNC, FILE_MODE)
    except OSError as exc:
        if path.is_symlink():
            raise ConfigError(str(path), "is a symlink; refusing to write through it") from None
        raise ConfigError(str(path), f"cannot write: {exc.strerror}") from None
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != FILE_MODE:
            os.fchmod(fd, FILE_MODE)
        view = memoryview(raw)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def touch_private(path: Path) -> None:
    """Make sure ``path`` exists as a 0600 regular file (an empty one if new), not a symlink.

    An existing file is checked and its mode fixed by path, never opened: the file may be a
    SQLite database this process already has open, and closing *any* descriptor of a file
    drops every POSIX lock the process holds on it. SQLite's locks then no longer tell another
    process that this one is using the database; that process, closing what it believes is
    the last connection, checkpoints and removes the WAL under this one's feet, and the
    database is corrupted (sqlite.org/howtocorrupt.html, 2.2). That happened to ``rtplan
    serve`` with a second process on the same store.
    """
    _check_parent(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        _create_private(path)
        return
    except OSError as exc:
        raise ConfigError(str(path), f"cannot open: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(str(path), "is a symlink; refusing to open it")
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(str(path), "is not a regular file")
    if stat.S_IMODE(info.st_mode) & 0o077 and info.st_uid == os.getuid():
        try:
            path.chmod(FILE_MODE)  # Linux has no lchmod; the lstat above saw a regular file
        except OSError as exc:
            raise ConfigError(str(path), f"cannot make it private: {exc.strerror}") from None


def _create_private(path: Path) -> None:
    """A new empty 0600 file (``O_EXCL``: if another process made it first, check that one)."""
    try:
        fd = os.open(path, _open_flags() | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        touch_private(path)
        return
    except OSError as exc:
        if path.is_symlink():
            raise ConfigError(str(path), "is a symlink; refusing to open it") from None
        raise ConfigError(str(path), f"cannot open: {exc.strerror}") from None
    os.close(fd)  # new this instant: nothing in this process holds a lock on it yet


def replace_private(target: Path, data: bytes | str) -> None:
    """Write ``target`` atomically (a private temporary file, fsync, rename): a crash never
    leaves half a file, and a symlink at ``target`` is replaced, never followed."""
    tmp = target.with_name(f".{target.name}.tmp")
    write_private(tmp, data, sync=True)
    try:
        tmp.replace(target)
    except OSError as exc:
        raise ConfigError(str(target), f"cannot write: {exc.strerror}") from None
