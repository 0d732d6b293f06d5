"""serve's log handler follows the current stderr (a swapped or closed stream is never used) and
never carries values a library quotes from what it parsed."""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import replace

import pytest

from adapter.config import Settings
from adapter.service.logs import configure_service_logging


@pytest.fixture
def service_logging() -> Iterator[None]:
    """serve's logging for one test; the root logger as it was afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


@pytest.mark.usefixtures("service_logging")
def test_log_lines_go_to_the_current_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    first = io.StringIO()
    monkeypatch.setattr("sys.stderr", first)
    configure_service_logging(Settings().log)
    first.close()  # the stream of set-up time is gone (a test harness, a re-opened log)
    second = io.StringIO()
    monkeypatch.setattr("sys.stderr", second)
    logging.getLogger("adapter.test").warning("study abc: held")
    line = json.loads(second.getvalue())
    assert line["message"] == "study abc: held" and line["level"] == "WARNING"


@pytest.mark.usefixtures("service_logging")
def test_values_pydicom_quotes_never_reach_the_log(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_service_logging(Settings().log)
    # pydicom sets its logger to WARNING when it is first imported, after this set-up.
    logging.getLogger("pydicom").setLevel(logging.WARNING)
    logging.getLogger("pydicom").warning("Invalid value for VR UI: '1.2.5.PATIENTSMITH'")
    with warnings.catch_warnings():
        warnings.simplefilter("always")  # as in production, not pytest's "error"
        warnings.warn("Invalid value for VR PN: 'SMITH^JOHN'", UserWarning, stacklevel=1)
    logging.getLogger("adapter.receive.scp").warning("C-STORE refused: cannot read")
    text = stream.getvalue()
    assert "PATIENTSMITH" not in text and "SMITH^JOHN" not in text
    assert "C-STORE refused: cannot read" in text  # our own lines still pass


@pytest.mark.usefixtures("service_logging")
@pytest.mark.parametrize("form", ["json", "text"])
def test_a_lines_fields_are_its_own_keys(monkeypatch: pytest.MonkeyPatch, form: str) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    configure_service_logging(replace(Settings().log, format=form))
    fields = {"method": "GET", "route": "/studies/{study_uid}", "status": 200, "message": "x"}
    logging.getLogger("rtplan.access").info(
        "GET /studies/{study_uid} 200", extra={"fields": fields}
    )
    text = stream.getvalue().strip()
    if form == "json":
        line = json.loads(text)
        assert line["route"] == "/studies/{study_uid}" and line["status"] == 200
        assert line["message"] == "GET /studies/{study_uid} 200"  # never replaced by a field
    else:
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 INFO ", text)  # UTC
        assert text.endswith(
            "rtplan.access: GET /studies/{study_uid} 200 method=GET "
            "route=/studies/{study_uid} status=200 message=x"
        )
