"""``rtplan serve``'s log: one JSON object per line on stderr, level from ``log.level``.

Our log calls name studies by key (a hash), rows by id and peers by address, never patient
data; libraries that could print values (pydicom, pynetdicom's data set dumps, httpx URLs)
are held at WARNING whatever the level, and uvicorn's access log is off (the API logs route
templates instead).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import TextIO

from adapter.config import LogSettings

QUIET = ("pydicom", "pynetdicom", "httpx", "httpcore", "uvicorn.access")
# Below ERROR these say what they parsed ("Invalid value for VR UI: '<the value>'"); the filter
# sits on the handler because pydicom sets its own logger's level when it is first imported.
VALUE_LOGGERS = ("pydicom",)
WARNINGS_LOGGER = "py.warnings"  # warnings.warn, once logging.captureWarnings(True)


class NoParsedValues(logging.Filter):
    """Drops library records that may quote parsed values: pydicom below ERROR, and Python
    warnings (pydicom also says it all through ``warnings.warn``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == WARNINGS_LOGGER:
            return False
        root = record.name.split(".", 1)[0]
        return not (root in VALUE_LOGGERS and record.levelno < logging.ERROR)


FIELDS = "fields"
"""A record's structured values: ``log.info("...", extra={"fields": {...}})``. The standard
library's ``extra`` keeps the callers (API, receiver) free of this module; JSON lines carry the
fields as keys of their own, text lines as ``key=value`` after the message."""


def _fields(record: logging.LogRecord) -> dict[str, object]:
    found = getattr(record, FIELDS, None)
    return dict(found) if isinstance(found, dict) else {}


def _utc(record: logging.LogRecord) -> str:
    return datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": _utc(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _fields(record).items():
            entry.setdefault(key, value)  # the four keys above are never replaced
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__  # the type only: values may be PHI
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextLines(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        return _utc(record)  # with its offset, as the JSON lines have it

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = " ".join(f"{key}={value}" for key, value in _fields(record).items())
        return f"{line} {pairs}" if pairs else line


class CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the stream of the
    moment it was set up: an embedding program (or a test harness) that swaps or closes
    stderr must not leave the root logger writing to a dead stream."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always the current sys.stderr


def configure_service_logging(settings: LogSettings) -> None:
    handler = CurrentStderr()
    if settings.format == "json":
        handler.setFormatter(JsonLines())
    else:
        handler.setFormatter(TextLines())
    handler.addFilter(NoParsedValues())
    logging.captureWarnings(True)  # to the log, where the filter drops them, not raw stderr
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level)
    for name in QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
