"""A review patch is a read-modify-write with If-Match on the real servers: when radiology
writes between the adapter's read and its write, the server refuses the stale version (Medplum
4.5.2: 412; HAPI FHIR JPA 8.8: 409), the adapter reads again, and both changes survive."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from adapter.fhir.client import FhirClient, FhirResponse
from adapter.fhir.delivery import FhirDeliverer
from adapter.mapping.review_bundle import PLACER_SYSTEM, patch_entry
from adapter.outbox.worker import Verdict
from adapter.store.outbox import Row, State

OPS = [
    {"op": "replace", "path": "/status", "value": "revoked"},
    {"op": "add", "path": "/note/-", "value": {"text": "Concern withdrawn (test)."}},
]


class RadiologyWritesFirst(FhirClient):
    """Before the adapter's first transaction, radiology updates the same resource."""

    def __init__(self, base_url: str, interfere: Any) -> None:
        super().__init__(base_url)
        self.interfere = interfere
        self.transactions: list[FhirResponse] = []

    async def transaction(self, bundle: dict[str, Any]) -> FhirResponse:
        if not self.transactions:
            self.interfere()
        response = await super().transaction(bundle)
        self.transactions.append(response)
        return response


def test_patch_re_reads_after_412(fhir_url: str) -> None:
    placer = f"RT{uuid.uuid4().hex[:16].upper()}"
    request = {
        "resourceType": "ServiceRequest",
        "identifier": [{"system": PLACER_SYSTEM, "value": placer}],
        "status": "active",
        "intent": "order",
        "authoredOn": "2026-03-04T14:20:00+00:00",
        "subject": {"identifier": {"system": "urn:test", "value": "p1"}},
        "note": [{"text": "v1 finding"}],
    }
    created = httpx.post(f"{fhir_url}/ServiceRequest", json=request, timeout=30)
    assert created.status_code == 201, created.text
    sr_id = created.json()["id"]

    def radiology_note() -> None:
        current = httpx.get(f"{fhir_url}/ServiceRequest/{sr_id}", timeout=30).json()
        current["note"].append({"text": "radiology: protocolled"})
        current.pop("meta", None)
        answer = httpx.put(f"{fhir_url}/ServiceRequest/{sr_id}", json=current, timeout=30)
        assert answer.status_code == 200, answer.text

    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [patch_entry("ServiceRequest", PLACER_SYSTEM, placer, OPS)],
    }
    row = Row(1, "fhir", fhir_url, "k", "fhir-review-transaction", "l", bundle,
              State.IN_FLIGHT, 1, 0.0, "", None, 0.0, 0.0)  # fmt: skip

    async def go() -> tuple[Any, list[FhirResponse]]:
        async with RadiologyWritesFirst(fhir_url, radiology_note) as client:
            attempt = await FhirDeliverer(client, reconcile=False).deliver(row)
            return attempt, client.transactions

    attempt, transactions = asyncio.run(go())
    assert attempt.verdict is Verdict.DELIVERED, attempt
    # The stale version is refused (Medplum: 412; HAPI: 409 version conflict), then it works.
    assert transactions[0].status in (409, 412)
    assert len(transactions) == 2
    assert transactions[-1].ok
    final = httpx.get(f"{fhir_url}/ServiceRequest/{sr_id}", timeout=30).json()
    assert final["status"] == "revoked"
    assert [n["text"] for n in final["note"]] == [
        "v1 finding",
        "radiology: protocolled",
        "Concern withdrawn (test).",
    ]
    assert final["authoredOn"].startswith("2026-03-04T14:20:00")
