"""Reading a JSON document that a person or another system handed us (a review, a corrected
payload): every way it can be wrong is one :class:`~adapter.errors.ConfigError`, never a
traceback (invalid UTF-8, nesting deeper than the parser's stack, a 5,000-digit number)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from adapter.errors import ConfigError

__all__ = ["MAX_JSON_BYTES", "read_json"]

MAX_JSON_BYTES = 16 * 1024 * 1024
"""A review is a few kilobytes; anything this large is not one."""


def read_json(name: str, key: str = "file") -> object:
    """Parse the JSON in file ``name`` (``-``: standard input).

    Raises:
        ConfigError: ``key`` names the argument; the problem says what is wrong (no content).
    """
    try:
        if name == "-":
            raw = sys.stdin.buffer.read(MAX_JSON_BYTES + 1)
        else:
            with Path(name).open("rb") as handle:
                raw = handle.read(MAX_JSON_BYTES + 1)
    except OSError as exc:
        raise ConfigError(key, f"cannot read {name}: {exc.strerror}") from None
    if len(raw) > MAX_JSON_BYTES:
        raise ConfigError(key, f"{name}: larger than {MAX_JSON_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(key, f"{name}: not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise ConfigError(key, f"{name}: not JSON ({where})") from None
    except RecursionError:
        raise ConfigError(key, f"{name}: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer longer than Python's 4,300-digit limit
        raise ConfigError(key, f"{name}: JSON value out of range ({exc})") from None
