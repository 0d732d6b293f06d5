"""serve's log handler follows the current stderr (a swapped or closed stream is never used)."""

from __future__ import annotations

import io
import json
import logging

import pytest

from adapter.config import Settings
from adapter.service.logs import configure_service_logging


def test_log_lines_go_to_the_current_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    first = io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    try:
        configure_service_logging(Settings().log)
        first.close()  # the stream of set-up time is gone (a test harness, a re-opened log)
        second = io.StringIO()
        monkeypatch.setattr("sys.stderr", second)
        logging.getLogger("adapter.test").warning("study abc: held")
        line = json.loads(second.getvalue())
        assert line["message"] == "study abc: held" and line["level"] == "WARNING"
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
