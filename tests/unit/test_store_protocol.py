"""Issue 8: the workflow is typed against ``adapter.store.protocol``; the store implements it.

``mypy --strict adapter`` proves the implementation satisfies the protocols (the checks at the
end of ``protocol.py``). This test says the same at run time, member by member, with the
parameter names (which a keyword call depends on), and checks the workflow names the protocol.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from adapter.store import protocol
from adapter.store.labels import LabelStore
from adapter.store.notes import NoteStore
from adapter.store.outbox import Batch, Outbox
from adapter.store.reviews import ReviewVersions
from adapter.store.timers import Timers

ADAPTER = Path(__file__).resolve().parents[2] / "adapter"
IMPLEMENTATIONS = [
    (protocol.Store, Outbox),
    (protocol.RowQueue, Outbox),
    (protocol.RowBatch, Batch),
    (protocol.EscalationTimers, Timers),
    (protocol.ReviewRecords, ReviewVersions),
    (protocol.LabelRecords, LabelStore),
    (protocol.NoteRecords, NoteStore),
]


def members(proto: type) -> dict[str, object]:
    found: dict[str, object] = {}
    for cls in reversed(proto.__mro__):
        if cls in (object,) or cls.__module__ == "typing":
            continue
        found.update({k: v for k, v in vars(cls).items() if not k.startswith("_")})
    return found


def parameters(member: object) -> list[str]:
    target = member.fget if isinstance(member, property) else member
    return list(inspect.signature(target).parameters)  # type: ignore[arg-type]


@pytest.mark.parametrize(("proto", "impl"), IMPLEMENTATIONS)
def test_the_implementation_has_every_member_with_the_same_parameters(
    proto: type, impl: type
) -> None:
    wanted = members(proto)
    assert len(wanted) >= 3
    for name, member in wanted.items():
        if not hasattr(impl, name):  # a property met by an attribute the instance sets
            assert isinstance(member, property), f"{impl.__name__} lacks {name}"
            assert f"self.{name}: " in inspect.getsource(impl.__init__), name
            continue
        if callable(member) or isinstance(member, property):
            found = inspect.getattr_static(impl, name)
            if isinstance(found, property) or callable(found):
                assert parameters(found) == parameters(member), name


def test_workflow_code_names_the_protocol_not_the_class() -> None:
    """Outside the store, ``Outbox`` is constructed (or checked for, at the API's edge), never
    used as a parameter or return type."""
    annotated: list[str] = []
    for path in sorted(ADAPTER.rglob("*.py")):
        if path.parent.name == "store":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                hints = [a.annotation for a in (*node.args.args, *node.args.kwonlyargs)]
                for hint in [*hints, node.returns]:
                    if hint is not None and "Outbox" in ast.unparse(hint):
                        annotated.append(f"{path.relative_to(ADAPTER)}:{node.lineno}")
    assert annotated == []
