"""FhirDeliverer's classification table (reliability.md §2) at the transport seam, and the
boundary rule that no httpx exception escapes the FHIR client untranslated."""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from adapter.fhir.client import NOT_SENT, UNKNOWN, FhirClient, NoAnswer, NotSent
from adapter.fhir.delivery import FhirDeliverer, conditionals, is_idempotent, retry_after_seconds
from adapter.outbox.worker import Verdict
from adapter.store.outbox import Row, State

BUNDLE: dict[str, Any] = {
    "resourceType": "Bundle",
    "type": "transaction",
    "entry": [
        {
            "fullUrl": "urn:uuid:1",
            "resource": {"resourceType": "ImagingStudy"},
            "request": {
                "method": "PUT",
                "url": "ImagingStudy?identifier=urn:dicom:uid|urn:oid:1.2",
            },
        }
    ],
}
OK_RESPONSE = {
    "resourceType": "Bundle",
    "type": "transaction-response",
    "entry": [{"response": {"status": "201 Created", "location": "ImagingStudy/9/_history/1"}}],
}


def row(payload: dict[str, Any] = BUNDLE) -> Row:
    return Row(
        1,
        "fhir",
        "http://x/fhir",
        "study:1.2",
        "fhir-transaction",
        "label",
        payload,
        State.IN_FLIGHT,
        1,
        0.0,
        "",
        None,
        0.0,
        0.0,
    )


def deliver(
    handler: Callable[[httpx.Request], httpx.Response], payload: dict[str, Any] = BUNDLE
) -> Any:
    async def go() -> Any:
        async with FhirClient("http://x/fhir", transport=httpx.MockTransport(handler)) as client:
            return await FhirDeliverer(client).deliver(row(payload))

    return asyncio.run(go())


def count(total: int) -> httpx.Response:
    return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "total": total})


def is_search(request: httpx.Request) -> bool:
    """A reconciliation search: a batch of GETs (or a plain GET when the batch is refused)."""
    if request.method == "GET":
        return True
    return bool(request.content) and json.loads(request.content).get("type") == "batch"


def counts(request: httpx.Request, total: int) -> httpx.Response:
    if request.method == "GET":
        return count(total)
    entries = json.loads(request.content)["entry"]
    answer = {
        "resource": {"resourceType": "Bundle", "type": "searchset", "total": total},
        "response": {"status": "200 OK"},
    }
    return httpx.Response(
        200,
        json={
            "resourceType": "Bundle",
            "type": "batch-response",
            "entry": [answer for _ in entries],
        },
    )


def outcome(code: str, diagnostics: str = "Patient ZZCANARY has an error") -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": code,
                "diagnostics": diagnostics,
                "expression": ["ImagingStudy.status"],
            }
        ],
    }


def test_delivered_keeps_server_ids_and_versions() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return counts(request, 1) if is_search(request) else httpx.Response(200, json=OK_RESPONSE)

    attempt = deliver(handler)
    assert attempt.verdict is Verdict.DELIVERED
    assert attempt.result["entries"][0] == {
        "status": "201 Created",
        "type": "ImagingStudy",
        "id": "9",
        "version": "1",
    }
    assert attempt.alert == ""


def test_duplicates_found_after_a_write_raise_an_alert() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return counts(request, 2) if is_search(request) else httpx.Response(200, json=OK_RESPONSE)

    attempt = deliver(handler)
    assert attempt.verdict is Verdict.DELIVERED and "more than one" in attempt.alert


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_honours_retry_after(status: int) -> None:
    attempt = deliver(lambda r: httpx.Response(status, headers={"Retry-After": "2"}))
    assert attempt.verdict is Verdict.RETRY and attempt.retry_after == 2.0


def test_retry_after_http_date() -> None:
    assert retry_after_seconds("Thu, 01 Jan 2026 00:00:10 GMT", 1767225600.0) == 10.0
    assert retry_after_seconds("soon", 0.0) is None


@pytest.mark.parametrize("status", [500, 502, 504])
def test_unknown_outcome_reconciles_before_resending(status: int) -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append("search" if is_search(request) else request.method)
        return counts(request, 1) if is_search(request) else httpx.Response(status)

    attempt = deliver(handler)
    assert attempt.verdict is Verdict.RETRY and "reconciled" in attempt.reason
    assert seen == ["POST", "search"]  # searched by identifier before any resend


def test_unknown_outcome_with_duplicates_holds_the_key() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return counts(request, 3) if is_search(request) else httpx.Response(502)

    attempt = deliver(handler)
    assert attempt.verdict is Verdict.HOLD and attempt.alert


def test_unknown_outcome_never_resends_a_non_idempotent_bundle() -> None:
    plain_post = {
        **BUNDLE,
        "entry": [
            {"resource": {"resourceType": "Task"}, "request": {"method": "POST", "url": "Task"}}
        ],
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return counts(request, 0) if is_search(request) else httpx.Response(504)

    attempt = deliver(handler, plain_post)
    assert attempt.verdict is Verdict.DEAD and "not idempotent" in attempt.reason


def test_412_holds_the_key_with_a_data_quality_alert() -> None:
    attempt = deliver(lambda r: httpx.Response(412, json=outcome("duplicate")))
    assert attempt.verdict is Verdict.HOLD and "data quality" in attempt.alert


def test_hapi_unique_constraint_is_a_conflict_to_reconcile() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if is_search(request):
            return counts(request, 1)
        body = outcome("processing", "HAPI-0550: could not execute statement HFJ_RES_SEARCH_URL")
        return httpx.Response(500, json=body)

    attempt = deliver(handler)
    assert attempt.verdict is Verdict.RETRY and "conflict" in attempt.reason


@pytest.mark.parametrize("status", [400, 403, 404, 422])
def test_rejections_are_dead_letters_without_diagnostics_text(status: int) -> None:
    attempt = deliver(lambda r: httpx.Response(status, json=outcome("invalid")))
    assert attempt.verdict is Verdict.DEAD
    assert attempt.reason == f"rejected: HTTP {status} (error/invalid@ImagingStudy.status)"
    assert "ZZCANARY" not in attempt.reason  # diagnostics can echo patient data


def test_401_after_refresh_is_dead() -> None:
    attempt = deliver(lambda r: httpx.Response(401))
    assert attempt.verdict is Verdict.DEAD and "unauthorised" in attempt.reason


def test_connect_error_is_retried_without_reconciling() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.method)
        raise httpx.ConnectError("refused", request=request)

    attempt = deliver(handler)
    assert attempt.verdict is Verdict.RETRY and seen == ["POST"]


def test_read_timeout_is_an_unknown_outcome() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if is_search(request):
            return counts(request, 1)
        raise httpx.ReadTimeout("slow", request=request)

    attempt = deliver(handler)
    assert attempt.verdict is Verdict.RETRY and "ReadTimeout" in attempt.reason


def test_helpers_on_bundle_shapes() -> None:
    assert [c.resource_type for c in conditionals(BUNDLE)] == ["ImagingStudy"]
    assert is_idempotent(BUNDLE)
    create = {
        "entry": [
            {"request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=a|b"}}
        ]
    }
    assert is_idempotent(create) and conditionals(create)[0].params == (("identifier", "a|b"),)


def test_every_httpx_transport_exception_is_mapped() -> None:
    """httpx's test_httpcore_all_exceptions_mapped, for our boundary."""
    exceptions = [
        obj
        for _, obj in inspect.getmembers(httpx)
        if inspect.isclass(obj) and issubclass(obj, httpx.TransportError)
    ]
    assert exceptions
    for exc in exceptions:
        assert issubclass(exc, NOT_SENT + UNKNOWN), exc
    assert issubclass(NotSent, Exception) and issubclass(NoAnswer, Exception)


def test_reconciliation_is_one_batch_request_with_fallback() -> None:
    seen: list[str] = []

    def batch_ok(request: httpx.Request) -> httpx.Response:
        seen.append("search" if is_search(request) else request.method)
        return counts(request, 1) if is_search(request) else httpx.Response(200, json=OK_RESPONSE)

    assert deliver(batch_ok).verdict is Verdict.DELIVERED
    assert seen == ["POST", "search"]
    seen.clear()

    def batch_refused(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            seen.append("GET")
            return count(2)
        if is_search(request):
            seen.append("batch")
            return httpx.Response(405)
        return httpx.Response(200, json=OK_RESPONSE)

    attempt = deliver(batch_refused)
    assert seen == ["batch", "GET"] and "more than one" in attempt.alert


def test_request_bodies_are_compact_json() -> None:
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        return counts(request, 1) if is_search(request) else httpx.Response(200, json=OK_RESPONSE)

    deliver(handler)
    assert json.loads(bodies[0]) == BUNDLE
