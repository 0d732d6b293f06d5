"""The hazard log names only tests that exist, and maps every row of the reliability matrix."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOG = ROOT / "docs" / "safety" / "hazard-log.md"
# `unit/test_x.py::test_y` or, continuing the last named file, `::test_z`
REFERENCE = re.compile(r"`(?:((?:unit|integration|golden)/test_\w+\.py))?::(test_\w+)`")


def references(text: str) -> list[tuple[str, str]]:
    found, current = [], ""
    for match in REFERENCE.finditer(text):
        current = match.group(1) or current
        assert current, f"{match.group(0)} names no file before it"
        found.append((current, match.group(2)))
    return found


def test_every_named_test_exists() -> None:
    named = references(LOG.read_text(encoding="utf-8"))
    assert len(named) > 80
    missing = []
    for file, test in named:
        source = (ROOT / "tests" / file).read_text(encoding="utf-8")
        if not re.search(rf"^(async )?def {test}\(", source, re.MULTILINE):
            missing.append(f"{file}::{test}")
    assert missing == []


def test_the_matrix_table_has_all_forty_rows() -> None:
    text = LOG.read_text(encoding="utf-8")
    table = text.split("## Reliability matrix coverage", 1)[1]
    rows = [int(m) for m in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)]
    assert rows == list(range(1, 41))


def test_every_hazard_has_cause_or_controls_and_a_risk() -> None:
    text = LOG.read_text(encoding="utf-8")
    hazards = re.split(r"^### ", text, flags=re.MULTILINE)[1:]
    assert len(hazards) >= 19
    for hazard in hazards:
        title = hazard.splitlines()[0]
        assert "**Controls" in hazard, title
        assert "Risk" in hazard or "risk" in hazard, title
