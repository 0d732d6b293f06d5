"""Issue 8: every kind of row the adapter can store has a payload codec, and a payload that does
not fit its kind is refused with one line naming the kind and the field: when it is stored
(the producer's bug, or an analyst's corrected replay), and when a row in the store was edited
by hand and is delivered."""

from __future__ import annotations

import ast
import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapter.cli import main
from adapter.fhir.transaction_payload import (
    KIND_NOTE,
    KIND_REVIEW,
    KIND_TRANSACTION,
    TransactionPayload,
)
from adapter.hl7.document_payload import KIND_DOCUMENT, DocumentPayload
from adapter.hl7.order_payload import KIND_CANCEL, KIND_CHANGE, KIND_ORDER, OrderPayload
from adapter.jobs import payload_codecs
from adapter.jobs.deliver import FILES, FileDeliverer
from adapter.label.kos_payload import KosPayload
from adapter.outbox.worker import Worker
from adapter.review.note_job_payload import CONTEXT_FIELDS as NOTE_JOB_CONTEXT
from adapter.review.note_job_payload import KIND_NOTE_JOB
from adapter.store import payloads
from adapter.store.db import open_database
from adapter.store.labels import KIND_KOS
from adapter.store.outbox import NewRow, Outbox, State
from tests.store_backend import StoreUnderTest

pytestmark = pytest.mark.store  # the rows are stored: each test on SQLite and on PostgreSQL

ADAPTER = Path(__file__).resolve().parents[2] / "adapter"
ROW_CLASSES = {"NewRow": 3, "HeldRow": 3}  # class -> position of its ``kind`` argument
JSON = dict[str, Any]


def _kind_argument(call: ast.Call) -> ast.expr | None:
    name = call.func.id if isinstance(call.func, ast.Name) else None
    attr = call.func.attr if isinstance(call.func, ast.Attribute) else None
    for keyword in call.keywords:
        if keyword.arg == "kind" and (name in ROW_CLASSES or attr == "enqueue"):
            return keyword.value
    if name in ROW_CLASSES and len(call.args) > ROW_CLASSES[name]:
        return call.args[ROW_CLASSES[name]]
    return None


def enqueued_kinds() -> tuple[set[str], list[str]]:
    """The kinds the adapter's code can store, read from its source: every ``KIND_*`` constant,
    and every literal kind given to a row (``NewRow``, ``HeldRow``, ``enqueue(kind=...)``).
    Also the places where a row's kind is neither (to be looked at: they must copy a stored
    row's kind, ``row.kind``)."""
    kinds: set[str] = set()
    other: list[str] = []
    for path in sorted(ADAPTER.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
                if any(n.startswith("KIND_") for n in names) and isinstance(node.value.value, str):
                    kinds.add(node.value.value)
            if not isinstance(node, ast.Call):
                continue
            kind = _kind_argument(node)
            if kind is None:
                continue
            if isinstance(kind, ast.Constant) and isinstance(kind.value, str):
                kinds.add(kind.value)
            elif not (isinstance(kind, ast.Name) and kind.id.startswith("KIND_")):
                place = path.relative_to(ADAPTER.parent)
                other.append(f"{place}:{node.lineno} {ast.unparse(kind)}")
    return kinds, other


def test_every_kind_the_code_can_store_has_a_codec_in_a_fresh_process() -> None:
    kinds, other = enqueued_kinds()
    # The scan finds the kinds of each family (so it is not reading nothing).
    assert {KIND_TRANSACTION, KIND_ORDER, KIND_DOCUMENT, KIND_KOS} <= kinds
    # A kind not named by a constant or a literal is passed on (``Outbox.enqueue(kind=...)``)
    # or copied from a row built with one (replay, released identity holds, prepared orders).
    assert all(place.endswith((".kind", " kind")) for place in other), other
    # What a worker or ``rtplan outbox replay`` knows: only adapter.jobs.payload_codecs loaded.
    script = (
        "import json, adapter.jobs.payload_codecs\n"
        "from adapter.store import payloads\n"
        "print(json.dumps({k: c.__name__ for k, c in payloads.kinds().items()}))"
    )
    found = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    registered = json.loads(found.stdout)
    assert sorted(kinds - registered.keys()) == []
    assert registered == {k: c.__name__ for k, c in payloads.kinds().items()}
    assert len(payload_codecs.CODEC_MODULES) == len(set(registered.values()))


def test_the_three_fhir_kinds_share_the_transaction_codec() -> None:
    for kind in (KIND_TRANSACTION, KIND_REVIEW, KIND_NOTE):
        assert payloads.codec_for(kind) is TransactionPayload
    assert payloads.codec_for(KIND_CHANGE) is OrderPayload
    assert payloads.codec_for(KIND_DOCUMENT) is DocumentPayload
    assert payloads.codec_for(KIND_KOS) is KosPayload


# -- one good payload per codec family, and misfits of it ---------------------------------------


def bundle() -> JSON:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {"resourceType": "Task", "status": "requested"},
                "request": {"method": "PUT", "url": "Task?identifier=urn:x|1"},
            },
            {"request": {"method": "PATCH", "url": "Task?identifier=urn:x|2"},
             "resource": {"resourceType": "Parameters"}},
            {"request": {"method": "DELETE", "url": "Task?identifier=urn:x|3"}},
        ],
    }  # fmt: skip


def order() -> JSON:
    return OrderPayload("default-ris", {"placer_order_number": "P1", "control": "NW"}).to_json()


def document() -> JSON:
    return DocumentPayload(
        "note-ris", "R1", 2, "T02", "R1-DOC", "RT0001", b"MSH|^~\\&|RTPLAN\r"
    ).to_json()


def kos() -> JSON:
    part10 = b"\0" * 128 + b"DICM" + b"\x02\x00\x00\x00UL\x04\x00\x00\x00\x00\x00"
    return KosPayload("1.2.3", "2.25.42", 1, part10, supersedes="2.25.41").to_json()


def note_job() -> JSON:
    context = dict.fromkeys(NOTE_JOB_CONTEXT, "")
    return {"review": {"review_id": "r1"}, "content_hash": "abc", "outputs": [], "context": context}


def edit(make: Callable[[], JSON], change: Callable[[JSON], object]) -> JSON:
    data = make()
    change(data)
    return data


MISFITS = [
    (KIND_TRANSACTION, edit(bundle, lambda b: b.update(resourceType="Patient")), "resourceType"),
    (KIND_TRANSACTION, edit(bundle, lambda b: b.update(type="batch")), "type"),
    (KIND_REVIEW, edit(bundle, lambda b: b.update(entry={})), "entry"),
    (KIND_NOTE, edit(bundle, lambda b: b["entry"][1]["request"].update(method="FETCH")),
     "entry[1].request.method"),
    (KIND_TRANSACTION, edit(bundle, lambda b: b["entry"][2]["request"].pop("url")),
     "entry[2].request.url"),
    (KIND_TRANSACTION, edit(bundle, lambda b: b["entry"][0].pop("resource")),
     "entry[0].resource.resourceType"),
    (KIND_ORDER, edit(order, lambda o: o.pop("order")), "missing field 'order'"),
    (KIND_CANCEL, edit(order, lambda o: o["order"].pop("placer_order_number")), "order"),
    (KIND_CHANGE, edit(order, lambda o: o.update(on_ack=[{"kind": "x"}])), "on_ack[0]"),
    (KIND_ORDER, edit(order, lambda o: o.update(message="MSH|")), "message"),
    (KIND_DOCUMENT, edit(document, lambda d: d.update(version="2")), "version"),
    (KIND_DOCUMENT, edit(document, lambda d: d.update(event="A01")), "event"),
    (KIND_DOCUMENT, edit(document, lambda d: d.update(message="not base64!")), "message"),
    (KIND_DOCUMENT, edit(document, lambda d: d.pop("control_id")), "missing field 'control_id'"),
    (KIND_KOS, edit(kos, lambda k: k.update(document="AAAA")), "document"),
    (KIND_KOS, edit(kos, lambda k: k.update(sop_instance_uid="2.25.x")), "sop_instance_uid"),
    (KIND_KOS, edit(kos, lambda k: k.pop("instance_number")), "missing field 'instance_number'"),
    (KIND_NOTE_JOB, edit(note_job, lambda j: j.update(review=[])), "review"),
    (KIND_NOTE_JOB, edit(note_job, lambda j: j["context"].pop("accession")),
     "context: missing accession"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "good"), [
    (KIND_TRANSACTION, bundle()), (KIND_REVIEW, bundle()), (KIND_NOTE, bundle()),
    (KIND_ORDER, order()), (KIND_CHANGE, order()), (KIND_DOCUMENT, document()), (KIND_KOS, kos()),
    (KIND_NOTE_JOB, note_job()),
])  # fmt: skip
def test_a_payload_that_fits_its_kind_is_stored_as_its_codec_writes_it(
    tmp_path: Path, kind: str, good: JSON, store: StoreUnderTest
) -> None:
    with Outbox(store.at(tmp_path / "outbox.sqlite")) as outbox:
        row_id = outbox.enqueue(
            destination="files", target="t", key="k", kind=kind, label="l", payload=good
        )
        stored = outbox.get(row_id).payload
    assert stored == payloads.decode(kind, good).to_json() == good


@pytest.mark.parametrize(("kind", "bad", "field"), MISFITS)
def test_a_payload_that_does_not_fit_is_refused_naming_the_kind_and_field(
    tmp_path: Path, kind: str, bad: JSON, field: str, store: StoreUnderTest
) -> None:
    with pytest.raises(payloads.PayloadError) as refused:
        payloads.decode(kind, bad)
    message = str(refused.value)
    assert message.startswith(f"{kind} payload: ") and field in message
    assert "\n" not in message
    with Outbox(store.at(tmp_path / "outbox.sqlite")) as outbox:
        # In one transaction with a good row: neither is stored.
        with (
            pytest.raises(payloads.PayloadError, match=f"^{kind} payload: "),
            outbox.batch() as batch,
        ):
            batch.enqueue(NewRow("files", "t", "k0", KIND_TRANSACTION, "ok", bundle()))
            batch.enqueue(NewRow("files", "t", "k", kind, "l", bad))
        assert outbox.rows() == [] and outbox.audit_records() == []


def test_a_misfit_replay_changes_nothing_on_either_backend(store_url: Path | str) -> None:
    """The replay's hold lift, its event and the new row are one transaction."""
    with Outbox(store_url) as outbox:
        row_id = outbox.enqueue(
            destination="files", target="t", key="k", kind=KIND_DOCUMENT, label="l",
            payload=document(),
        )  # fmt: skip
        outbox.hold_key(outbox.get(row_id), "held by a test")
        events = outbox.events(row_id)
        with pytest.raises(payloads.PayloadError, match=r"^hl7-document payload: event: "):
            outbox.replay(row_id, edit(document, lambda d: d.update(event="T99")))
        assert [r.id for r in outbox.rows()] == [row_id] and len(outbox.holds()) == 1
        assert outbox.events(row_id) == events
        new_id = outbox.replay(row_id)
        assert outbox.get(new_id).payload == document() and outbox.holds() == []


def test_a_kind_without_a_codec_is_not_stored(tmp_path: Path, store: StoreUnderTest) -> None:
    with Outbox(store.at(tmp_path / "outbox.sqlite")) as outbox:
        with pytest.raises(payloads.PayloadError, match="no payload codec for kind 'fhir'"):
            outbox.enqueue(
                destination="files", target="t", key="k", kind="fhir", label="l", payload={}
            )
        assert outbox.rows() == []


def hand_edit(location: Path | str, row_id: int, payload: JSON) -> None:
    """An operator edits a stored payload with a database tool (what the store never does)."""
    db = open_database(location)
    try:
        db.execute("UPDATE outbox SET payload=? WHERE id=?", (json.dumps(payload), row_id))
    finally:
        db.close()


def test_a_hand_edited_row_that_does_not_fit_is_a_dead_letter_naming_kind_and_field(
    tmp_path: Path, store: StoreUnderTest
) -> None:
    path, out = store.at(tmp_path / "outbox.sqlite"), tmp_path / "out"
    with Outbox(path) as outbox:
        target = (FILES, str(out))
        row_id = outbox.enqueue(
            destination=FILES, target=str(out), key="k", kind=KIND_TRANSACTION, label="l",
            payload=bundle(),
        )  # fmt: skip
        hand_edit(path, row_id, edit(bundle, lambda b: b.update(type="batch")))
        report = asyncio_run(Worker(outbox, {target: FileDeliverer(out)}).drain())
        row = outbox.get(row_id)
    assert (report.dead, report.retries, report.delivered) == (1, 0, 0)
    assert row.state is State.DEAD and row.attempts == 1
    assert row.last_error == "fhir-transaction payload: type: not 'transaction'"
    assert not (out / "fhir" / "l.json").exists()


@pytest.mark.parametrize(("kind", "good", "bad", "reason"), [
    (KIND_ORDER, order(), edit(order, lambda o: o["order"].pop("placer_order_number")),
     "hl7-order payload: order: missing or without placer_order_number"),
    (KIND_DOCUMENT, document(), edit(document, lambda d: d.update(version=0)),
     "hl7-document payload: version: not a positive whole number"),
    (KIND_KOS, kos(), edit(kos, lambda k: k.update(document="AAAA")),
     "dicom-kos payload: document: not a DICOM file (no DICM preamble)"),
])  # fmt: skip
def test_a_hand_edited_hl7_or_kos_row_is_a_dead_letter_too(
    tmp_path: Path, kind: str, good: JSON, bad: JSON, reason: str, store: StoreUnderTest
) -> None:
    from adapter.hl7.deliverer import Hl7FileDeliverer
    from adapter.hl7.profiles import load_profiles
    from adapter.label.delivery import KosFileDeliverer

    path, out = store.at(tmp_path / "outbox.sqlite"), tmp_path / "out"
    profile = load_profiles(ADAPTER.parent / "mappings" / "receivers")["default-ris"]
    deliverer = KosFileDeliverer(out, frozenset()) if kind == KIND_KOS else (
        Hl7FileDeliverer(out, profile)
    )  # fmt: skip
    with Outbox(path) as outbox:
        row_id = outbox.enqueue(
            destination="d", target="t", key="k", kind=kind, label="l", payload=good
        )
        hand_edit(path, row_id, bad)
        report = asyncio_run(Worker(outbox, {("d", "t"): deliverer}).drain())
        row = outbox.get(row_id)
    assert (report.dead, report.retries) == (1, 0)
    assert row.state is State.DEAD and row.last_error == reason
    assert not out.exists() or list(out.rglob("*")) == []


def asyncio_run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def test_replay_with_a_corrected_payload_that_does_not_fit_exits_2_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], store: StoreUnderTest
) -> None:
    path, out = tmp_path / "outbox.sqlite", tmp_path / "out"
    db = store.db_option(path)
    with Outbox(store.at(path)) as outbox:
        row_id = outbox.enqueue(
            destination=FILES, target=str(out), key="study:1.2.3", kind=KIND_TRANSACTION,
            label="l", payload=bundle(),
        )  # fmt: skip
        outbox.mark_dead(row_id, "rejected by the server")
        before = (outbox.counts(), len(outbox.audit_records()))
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps(edit(bundle, lambda b: b["entry"][0].pop("request"))))
    code = main(["outbox", *db, "replay", str(row_id), "--payload", str(fixed)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err == (
        "rtplan: fhir-transaction payload: entry[0].request: missing or not an object\n"
    )
    with Outbox(store.at(path)) as outbox:  # no new row, no audit record of a replay
        assert (outbox.counts(), len(outbox.audit_records())) == before
    fixed.write_text(json.dumps(bundle()))
    code = main(["outbox", *db, "replay", str(row_id), "--payload", str(fixed)])
    assert code == 0 and f"replayed row {row_id} as row {row_id + 1}" in capsys.readouterr().out
    assert json.loads((out / "fhir" / "l.json").read_text()) == bundle()


def test_the_note_document_payload_round_trips() -> None:
    data = document()
    assert data["message"] == base64.b64encode(b"MSH|^~\\&|RTPLAN\r").decode()
    decoded = payloads.decode(KIND_DOCUMENT, data)
    assert isinstance(decoded, DocumentPayload)
    assert (decoded.version, decoded.event, decoded.control_id) == (2, "T02", "RT0001")
