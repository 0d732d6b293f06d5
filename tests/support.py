"""Shared test helpers: the fixture generators (plain scripts under fixtures/) as modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"


def load_fixture_module(name: str) -> ModuleType:
    """Import ``fixtures/<name>.py`` once (registered in sys.modules so dataclasses resolve)."""
    key = f"rtplan_fixtures_{name}"
    if key in sys.modules:
        return sys.modules[key]
    spec = importlib.util.spec_from_file_location(key, FIXTURES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
    return module


synth = load_fixture_module("synth")
hostile = load_fixture_module("hostile")
