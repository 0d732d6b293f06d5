"""Only ``adapter/store/`` talks to a database: no other module imports a driver or connects."""

from __future__ import annotations

import ast
from pathlib import Path

ADAPTER = Path(__file__).resolve().parents[2] / "adapter"
DRIVERS = {"sqlite3", "psycopg", "psycopg_binary", "psycopg2", "psycopg_pool", "sqlalchemy"}


def database_uses(source: str) -> list[str]:
    """Imports of a database driver and ``*.connect(...)`` calls on one, in a module's source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in DRIVERS]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in DRIVERS:
            found.append(f"from {node.module}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "connect"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in DRIVERS
        ):
            found.append(f"{node.func.value.id}.connect()")
    return found


def test_the_check_finds_what_it_looks_for() -> None:
    assert database_uses("import sqlite3\nsqlite3.connect('x')") == ["sqlite3", "sqlite3.connect()"]
    assert database_uses("from psycopg import connect") == ["from psycopg"]
    assert database_uses("import json") == []


def test_no_module_outside_the_store_uses_a_database_driver() -> None:
    offenders = {
        str(path.relative_to(ADAPTER)): uses
        for path in sorted(ADAPTER.rglob("*.py"))
        if "store" not in path.relative_to(ADAPTER).parts[:1]
        and (uses := database_uses(path.read_text(encoding="utf-8")))
    }
    assert offenders == {}
