"""Fuzzing with Hypothesis: short in CI, long on demand (fixtures/fuzz/README.md).

``RTPLAN_FUZZ=long`` switches to the long settings: many more examples, no per-example
deadline shorter than the CI one, and the corpus of found examples kept in
``fixtures/fuzz/corpus`` (Hypothesis' example database) so a later run replays them first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.database import DirectoryBasedExampleDatabase

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ROOT / "fixtures" / "fuzz" / "seeds"
CORPUS = ROOT / "fixtures" / "fuzz" / "corpus"
MEMORY_LIMIT = 256 * 1024 * 1024
"""Growth of the test process's RSS allowed over one fuzz test (a leak or a bomb fails it)."""

CI_RUN = settings(
    max_examples=120,
    deadline=2000,
    derandomize=True,  # CI runs the same examples every time: a red run is reproducible
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _long_run() -> settings:
    return settings(
        max_examples=20_000,
        deadline=5000,
        database=DirectoryBasedExampleDatabase(str(CORPUS)),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


FUZZ = _long_run() if os.environ.get("RTPLAN_FUZZ") == "long" else CI_RUN
"""Applied to each fuzz test (not loaded as a global profile: other tests keep theirs)."""


@pytest.fixture(autouse=True)
def bounded_memory() -> Iterator[None]:
    process = psutil.Process()
    before = process.memory_info().rss
    yield
    grown = process.memory_info().rss - before
    assert grown < MEMORY_LIMIT, f"RSS grew {grown // (1024 * 1024)} MiB during the fuzz run"
