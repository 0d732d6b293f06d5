"""Where the store lives, and opening it: the one place that turns settings into a database.

``store.url`` (``RTPLAN_STORE__URL``) names it: ``sqlite:///PATH`` or ``postgresql://...``.
When it is empty the store is the SQLite file of earlier releases: ``outbox.path``, else
``<out>/outbox.sqlite`` with ``--out``, else the per-user default. A command's ``--db FILE``
names a SQLite file and wins over both (it is the most specific).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from adapter.config import Settings
from adapter.errors import ConfigError
from adapter.private import state_dir
from adapter.store.outbox import Outbox
from adapter.store.studies import StudyRecord

Location = Path | str  # a SQLite file, or a ``sqlite:///`` / ``postgresql://`` URL


def default_outbox() -> Path:
    """``$XDG_STATE_HOME/rtplan/outbox.sqlite`` (``~/.local/state/rtplan/...``): a per-user,
    private folder, never the current directory (which may be shared or world-readable)."""
    return state_dir() / "outbox.sqlite"


def outbox_path(settings: Settings, out_dir: Path | None) -> Path:
    """The SQLite file used when ``store.url`` is empty."""
    if settings.outbox.path:
        return Path(settings.outbox.path)
    if out_dir is not None:
        return out_dir / "outbox.sqlite"
    return default_outbox()


def store_location(
    settings: Settings, out_dir: Path | None = None, db: Path | None = None
) -> Location:
    """What :class:`Outbox` opens: ``--db``, else ``store.url``, else :func:`outbox_path`."""
    if db is not None:
        return db
    url = settings.store.url
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    if url:
        return url
    return outbox_path(settings, out_dir)


def store_exists(location: Location) -> bool:
    """False only for a SQLite file not created yet (a database server is always there)."""
    return not isinstance(location, Path) or location.exists()


def open_outbox(settings: Settings, out_dir: Path | None = None) -> Outbox:
    """Open (and create or migrate) the store."""
    return Outbox(store_location(settings, out_dir))


def open_existing(
    settings: Settings, out_dir: Path | None = None, db: Path | None = None
) -> Outbox:
    """Open a store that must exist already (the read and repair commands).

    Raises:
        ConfigError: no SQLite file there (``outbox.path``, one line).
    """
    location = store_location(settings, out_dir, db)
    if not store_exists(location):
        raise ConfigError("outbox.path", f"no outbox at {location}")
    return Outbox(location)


@contextlib.contextmanager
def recorded_studies(location: Location) -> Iterator[Callable[[str], StudyRecord | None]]:
    """A lookup of the store's study records that never creates a SQLite file: a first ingest
    reads its files before the outbox file exists."""
    handle: list[Outbox] = []

    def lookup(study_uid: str) -> StudyRecord | None:
        if not handle:
            if not store_exists(location):
                return None
            handle.append(Outbox(location))
        return handle[0].study(study_uid)

    try:
        yield lookup
    finally:
        for outbox in handle:
            outbox.close()
