"""Issue 8: workflow code learns facts from the store's records, not from stored payloads.

A static check over the workflow modules: every read of an outbox row's ``payload`` is
counted, and only the reads listed in ``REMAINING`` (each with the reason it is still there)
are allowed. A new ``row.payload[...]`` in the review workflow, the inbound handler, the
escalation check, the HTTP API or the safety report fails here; so does any SQL that looks
inside a payload (``json_extract``) anywhere in the adapter.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = ROOT / "adapter"
WORKFLOW = [
    *sorted((ADAPTER / "review").glob("*.py")),
    *sorted((ADAPTER / "review" / "note").glob("*.py")),
    *sorted((ADAPTER / "api").glob("*.py")),
    *sorted((ADAPTER / "safety").glob("*.py")),
    ADAPTER / "service" / "inbound.py",
    ADAPTER / "service" / "escalate.py",
]
# Reads still there, by module: none is of a stored payload (the review note too reads the
# study record and its own version and message records).
REMAINING = {
    # The note's HL7 document rows as just built, in memory, before they are stored: their
    # records (event, document number, MSH-10) are written beside them.
    "adapter/review/note/service.py": 1,
}


def payload_reads(path: Path) -> int:
    tree = ast.parse(path.read_text(), filename=str(path))
    return sum(
        1
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "payload"
        and isinstance(node.ctx, ast.Load)
    )  # fmt: skip


def test_workflow_modules_do_not_read_facts_from_stored_payloads() -> None:
    found = {}
    for path in WORKFLOW:
        count = payload_reads(path)
        if count:
            found[str(path.relative_to(ROOT))] = count
    over = {name: n for name, n in found.items() if n > REMAINING.get(name, 0)}
    assert not over, f"workflow code reads stored payloads (use the store's records): {over}"


def test_the_check_sees_a_payload_read() -> None:
    sample = ADAPTER.parent / "tests" / "unit" / "_payload_sample.py"
    try:
        sample.write_text("def f(row):\n    return row.payload['order']['placer_order_number']\n")
        assert payload_reads(sample) == 1
    finally:
        sample.unlink(missing_ok=True)


# Where SQL may still reach into a payload: the helper that spells it per engine (db.py),
# migration 3 (history; migration 5 drops its index), and the PACS label store (issue 12), which
# still finds a KOS's rows by the SOP Instance UID inside the payload; issue 16's owner is
# changing that module, so it is left to them (named, not hidden).
SQL_REMAINING = {"adapter/store/db.py", "adapter/store/migrations.py", "adapter/store/labels.py"}


def test_no_sql_looks_inside_a_payload() -> None:
    offenders = {
        str(path.relative_to(ROOT))
        for path in sorted(ADAPTER.rglob("*.py"))
        if "json_extract" in path.read_text() or "json_text(" in path.read_text()
    }
    assert offenders <= SQL_REMAINING, offenders - SQL_REMAINING
    for module in ("outbox.py", "orders.py", "studies.py", "reviews.py"):
        text = (ADAPTER / "store" / module).read_text()
        assert "json_extract" not in text and "json_text(" not in text, module
