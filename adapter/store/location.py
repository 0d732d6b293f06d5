"""Where the store lives, and opening it: the one place that turns settings into a database."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from adapter.config import Settings
from adapter.private import state_dir
from adapter.store.outbox import Outbox
from adapter.store.studies import StudyRecord


def default_outbox() -> Path:
    """``$XDG_STATE_HOME/rtplan/outbox.sqlite`` (``~/.local/state/rtplan/...``): a per-user,
    private folder, never the current directory (which may be shared or world-readable)."""
    return state_dir() / "outbox.sqlite"


def outbox_path(settings: Settings, out_dir: Path | None) -> Path:
    if settings.outbox.path:
        return Path(settings.outbox.path)
    if out_dir is not None:
        return out_dir / "outbox.sqlite"
    return default_outbox()


def open_outbox(settings: Settings, out_dir: Path | None = None) -> Outbox:
    return Outbox(outbox_path(settings, out_dir))


@contextlib.contextmanager
def recorded_studies(path: Path) -> Iterator[Callable[[str], StudyRecord | None]]:
    """A lookup of the store's study records that never creates the store: a first ingest
    reads its files before the outbox file exists."""
    handle: list[Outbox] = []

    def lookup(study_uid: str) -> StudyRecord | None:
        if not handle:
            if not path.exists():
                return None
            handle.append(Outbox(path))
        return handle[0].study(study_uid)

    try:
        yield lookup
    finally:
        for outbox in handle:
            outbox.close()
