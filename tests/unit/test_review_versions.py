"""Review versions are ordered (adapter/review/versions.py, adapter/store/reviews.py), the
amendment/withdrawal patches are applied read-modify-write with If-Match
(adapter/fhir/patches.py), and unconfirmed codes are withheld."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter.cli import main
from adapter.fhir.client import FhirClient
from adapter.fhir.delivery import PATCH_ATTEMPTS, FhirDeliverer
from adapter.fhir.patches import apply_idempotent
from adapter.mapping.review_bundle import patch_entry
from adapter.mapping.review_input import parse_review
from adapter.outbox.worker import Verdict
from adapter.review.versions import Decision, StaleReviewError, content_hash, decide
from adapter.store.outbox import NewRow, Outbox, Row, State
from adapter.store.reviews import AcceptedReview
from adapter.tables import concept, confirmed, load_tables
from tests.peers.postgres_fixture import CliStore
from tests.support import tx

ROOT = Path(__file__).resolve().parents[2]
REVIEWS = ROOT / "fixtures" / "reviews"
TABLES = load_tables(ROOT / "mappings")


def review(name: str, **changes: Any) -> Any:
    data = json.loads((REVIEWS / f"{name}.json").read_text())
    data.update(changes)
    return parse_review(data, TABLES)


def stored(version: int, digest: str) -> AcceptedReview:
    return AcceptedReview("REV-2026-0002", "1.2", version, digest, "final")


def test_versions_are_ordered() -> None:
    v2 = review("concern-amended")
    digest = content_hash(v2)
    assert decide(None, v2, digest) is Decision.ACCEPT
    assert decide(stored(1, "x"), v2, digest) is Decision.ACCEPT
    assert decide(stored(2, digest), v2, digest) is Decision.UNCHANGED
    with pytest.raises(StaleReviewError) as older:
        decide(stored(3, "x"), v2, digest)
    assert str(older.value) == (
        "invalid review: /version: version 2 is older than version 3 already accepted for "
        "this review; nothing was sent"
    )
    with pytest.raises(StaleReviewError, match="already accepted with different content"):
        decide(stored(2, "other"), v2, digest)


def test_content_hash_ignores_key_order_and_whitespace() -> None:
    data = json.loads((REVIEWS / "concern.json").read_text())
    shuffled = dict(reversed(list(data.items())))
    assert content_hash(parse_review(data, TABLES)) == content_hash(parse_review(shuffled, TABLES))
    assert content_hash(review("concern")) != content_hash(review("concern", notes="other"))


def test_version_record_commits_with_its_rows_or_not_at_all(store_url: Path | str) -> None:
    record = stored(1, "h")
    with Outbox(store_url) as outbox:
        with pytest.raises(RuntimeError, match=r"inside Outbox\.transaction"):
            outbox.reviews().accept(record)
        new = NewRow("files", "t", "study:1.2", "fhir-transaction", "l", tx(a=1))
        with pytest.raises(ZeroDivisionError), outbox.transaction():
            outbox.enqueue_many([new])
            outbox.reviews().accept(record)
            _ = 1 / 0  # a failure after both writes: neither may stay
        assert outbox.rows() == [] and outbox.reviews().get(record.review_id) is None
        with outbox.transaction():
            (row_id,) = outbox.enqueue_many([new])
            outbox.reviews().accept(record)
        assert outbox.get(row_id).state is State.PENDING
        assert outbox.reviews().get(record.review_id) == record


def test_stale_and_repeated_versions_on_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cli_store: CliStore
) -> None:
    out = tmp_path / "out"
    store = cli_store.location(out / "outbox.sqlite")
    assert (
        main(["ingest", str(ROOT / "fixtures" / "dicom" / "planning-ct"), "--out", str(out)]) == 0
    )
    amended = str(REVIEWS / "concern-amended.json")
    assert main(["review", "submit", str(REVIEWS / "concern.json"), "--out", str(out)]) == 0
    assert main(["review", "submit", amended, "--out", str(out)]) == 0
    with Outbox(store) as outbox:
        rows = len(outbox.rows())
    capsys.readouterr()
    assert main(["review", "submit", amended, "--out", str(out)]) == 0
    assert "already accepted with the same content: nothing sent" in capsys.readouterr().out
    assert main(["review", "submit", amended, "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary == {"version": 2, "unchanged": True, "rows": []}
    assert main(["review", "submit", str(REVIEWS / "concern.json"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/version: version 1 is older than version 2" in err
    changed = tmp_path / "changed.json"
    data = json.loads((REVIEWS / "concern-amended.json").read_text())
    changed.write_text(json.dumps({**data, "notes": "different"}))
    assert main(["review", "submit", str(changed), "--out", str(out)]) == 2
    with Outbox(store) as outbox:
        assert len(outbox.rows()) == rows  # nothing enqueued for a refused or repeated version


# -- read-modify-write of the patches ----------------------------------------------------

REQUEST = {
    "resourceType": "ServiceRequest",
    "id": "sr1",
    "meta": {"versionId": "3", "lastUpdated": "2026-03-04T14:21:00Z"},
    "status": "active",
    "authoredOn": "2026-03-04T14:20:00+00:00",
    "note": [{"text": "v1"}],
}
OPS = [
    {"op": "replace", "path": "/status", "value": "revoked"},
    {"op": "add", "path": "/note/-", "value": {"text": "withdrawn"}},
]


def test_patch_is_idempotent_and_keeps_the_rest() -> None:
    once = apply_idempotent(REQUEST, OPS)
    assert once["status"] == "revoked" and once["authoredOn"] == REQUEST["authoredOn"]
    assert once["note"] == [{"text": "v1"}, {"text": "withdrawn"}]
    assert apply_idempotent(once, OPS) == once  # a resend appends nothing
    done = apply_idempotent({**REQUEST, "status": "completed"}, [*OPS, OPS[0]])
    assert done["status"] == "completed" and done["note"][-1] == {"text": "withdrawn"}
    bare = {k: v for k, v in REQUEST.items() if k != "note"}
    assert apply_idempotent(bare, OPS)["note"] == [{"text": "withdrawn"}]


def patch_row() -> Row:
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [patch_entry("ServiceRequest", "urn:rtplan:placer-order", "RT1", OPS)],
    }
    state = State.IN_FLIGHT
    return Row(1, "fhir", "http://x/fhir", "study:1", "k", "l", bundle, state, 1, 0, "", None, 0, 0)


def run(handler: Any) -> Any:
    async def go() -> Any:
        async with FhirClient("http://x/fhir", transport=httpx.MockTransport(handler)) as client:
            return await FhirDeliverer(client, reconcile=False).deliver(patch_row())

    return asyncio.run(go())


def searchset(*resources: dict[str, Any]) -> httpx.Response:
    entries = [{"resource": r} for r in resources]
    return httpx.Response(
        200, json={"resourceType": "Bundle", "type": "searchset", "entry": entries}
    )


TRANSACTION_OK = {
    "resourceType": "Bundle",
    "type": "transaction-response",
    "entry": [{"response": {"status": "200 OK"}}],
}


@pytest.mark.parametrize("conflict", [412, 409])  # Medplum's and HAPI's answer
def test_patch_is_sent_as_put_with_if_match_and_a_conflict_re_reads(conflict: int) -> None:
    sent: list[dict[str, Any]] = []
    versions = iter(["3", "4"])

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            assert request.url.params["identifier"] == "urn:rtplan:placer-order|RT1"
            return searchset({**REQUEST, "meta": {"versionId": next(versions)}})
        body = json.loads(request.content)
        sent.append(body)
        if len(sent) == 1:  # radiology wrote in between our read and our write
            return httpx.Response(conflict, json={"resourceType": "OperationOutcome", "issue": []})
        return httpx.Response(200, json=TRANSACTION_OK)

    attempt = run(handler)
    assert attempt.verdict is Verdict.DELIVERED
    assert [b["entry"][0]["request"] for b in sent] == [
        {"method": "PUT", "url": "ServiceRequest/sr1", "ifMatch": 'W/"3"'},
        {"method": "PUT", "url": "ServiceRequest/sr1", "ifMatch": 'W/"4"'},
    ]
    written = sent[-1]["entry"][0]["resource"]
    assert written["status"] == "revoked" and written["authoredOn"] == REQUEST["authoredOn"]
    assert "versionId" not in written.get("meta", {})


def test_patch_target_missing_several_or_always_changing() -> None:
    assert run(lambda r: searchset()).verdict is Verdict.DEAD
    assert run(lambda r: searchset(REQUEST, {**REQUEST, "id": "sr2"})).verdict is Verdict.HOLD
    calls = []

    def always_412(request: httpx.Request) -> httpx.Response:
        calls.append(request.method)
        if request.method == "GET":
            return searchset(REQUEST)
        return httpx.Response(412, json={"resourceType": "OperationOutcome", "issue": []})

    assert run(always_412).verdict is Verdict.RETRY
    assert calls.count("POST") == PATCH_ATTEMPTS


# -- unconfirmed codes ---------------------------------------------------------------------


def test_unconfirmed_codes_are_not_emitted(capsys: pytest.CaptureFixture[str]) -> None:
    procedures = TABLES.conceptmap("procedure-codes")
    assert confirmed(procedures.lookup("PT")) == ()  # LOINC 82126-4 is verify: true
    assert [c.code for c in confirmed(procedures.lookup("CT"))] == ["30582-1"]
    code = TABLES.labels_table("review-codes").coding("review_task_code")
    assert concept([code], "Oncologist review") == {"text": "Oncologist review"}
    assert main(["mappings", "check"]) == 0
    out = capsys.readouterr().out
    # exactly the lines docs/mappings.md shows
    assert (
        "  procedure-codes.yaml rows[4] (code 'PT'): http://loinc.org|82126-4 'PT Guidance for "
        "radiation treatment of Unspecified body region': OFF (not emitted until confirmed)\n"
    ) in out
    assert (
        "  identifier-systems.yaml rows[0] (code 'HOSP-MRN'): urn:rtplan:identifier-system|"
        "https://hospital.example.org/fhir/sid/mrn 'Example Hospital MRN': used (identifier)\n"
    ) in out
    assert "Confirm a code in a terminology browser, then remove its 'verify: true'" in out
