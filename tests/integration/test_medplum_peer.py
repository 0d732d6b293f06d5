"""Smoke tests of the Medplum FHIR R4 peer itself (tests/peers/medplum/server.js): the behaviours
the adapter relies on, checked against the real process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.peers.launch import PeerProcess

pytestmark = pytest.mark.peer

STUDY_IDENT = "urn:dicom:uid|urn:oid:1.2.3"
PATIENT_UUID = "urn:uuid:6f1c1b9e-2f43-4c4e-9a57-0d4b8f7c2a11"
FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


@pytest.fixture
def client(medplum: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=medplum, headers=FHIR_JSON, timeout=30.0, trust_env=False) as c:
        yield c


def study(description: str, subject: str) -> dict[str, Any]:
    return {
        "resourceType": "ImagingStudy",
        "status": "available",
        "description": description,
        "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3"}],
        "subject": {"reference": subject},
    }


def transaction(description: str, subject: str, *, with_patient: bool = True) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    if with_patient:
        entries.append(
            {
                "fullUrl": PATIENT_UUID,
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": "sys", "value": "val"}],
                },
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": "identifier=sys|val",
                },
            }
        )
    entries.append(
        {
            "resource": study(description, subject),
            "request": {"method": "PUT", "url": f"ImagingStudy?identifier={STUDY_IDENT}"},
        }
    )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def studies(client: httpx.Client) -> list[dict[str, Any]]:
    resp = client.get("/ImagingStudy", params={"identifier": STUDY_IDENT})
    assert resp.status_code == 200
    return [e["resource"] for e in resp.json().get("entry", [])]


def test_metadata_is_r4_capability_statement(client: httpx.Client) -> None:
    resp = client.get("/metadata")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/fhir+json")
    cap = resp.json()
    assert cap["resourceType"] == "CapabilityStatement"
    assert cap["fhirVersion"] == "4.0.1"
    rest = cap["rest"][0]
    assert rest["mode"] == "server"
    assert {"transaction", "batch"} <= {i["code"] for i in rest["interaction"]}
    by_type = {r["type"]: r for r in rest["resource"]}
    wanted = {"ImagingStudy", "Patient", "Endpoint", "DiagnosticReport", "Task", "ServiceRequest"}
    assert wanted <= set(by_type)
    assert by_type["ImagingStudy"]["conditionalUpdate"] is True
    assert by_type["Patient"]["conditionalCreate"] is True


def test_conditional_update_in_transaction_twice_gives_one_resource(client: httpx.Client) -> None:
    first = client.post("", json=transaction("first", PATIENT_UUID))
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in body["entry"]]
    assert statuses == ["201 Created", "201 Created"]
    patient_ref = body["entry"][0]["response"]["location"].split("/_history/")[0]
    study_loc = body["entry"][1]["response"]["location"]
    assert study_loc.startswith("ImagingStudy/") and "/_history/" in study_loc

    second = client.post("", json=transaction("second", PATIENT_UUID))
    assert second.status_code == 200, second.text
    entries = second.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["200 OK", "200 OK"]
    new_loc = entries[1]["response"]["location"]
    assert new_loc.split("/_history/")[0] == study_loc.split("/_history/")[0]
    assert new_loc != study_loc  # a new version

    found = studies(client)
    assert len(found) == 1
    assert found[0]["description"] == "second"
    assert found[0]["subject"]["reference"] == patient_ref  # urn:uuid rewritten to Patient/<id>

    count = client.get("/ImagingStudy", params={"identifier": STUDY_IDENT, "_summary": "count"})
    assert count.json()["total"] == 1


def test_conditional_reference_resolved_in_transaction(client: httpx.Client) -> None:
    # Same Bundle creates the Patient (ifNoneExist) and refers to it by identifier.
    resp = client.post("", json=transaction("a", "Patient?identifier=sys|val"))
    assert resp.status_code == 200, resp.text
    patient_ref = resp.json()["entry"][0]["response"]["location"].split("/_history/")[0]
    assert studies(client)[0]["subject"]["reference"] == patient_ref

    # Patient already stored: resolved by search.
    resp = client.post("", json=transaction("b", "Patient?identifier=sys|val", with_patient=False))
    assert resp.status_code == 200, resp.text
    assert studies(client)[0]["subject"]["reference"] == patient_ref

    # No match: the whole transaction fails and nothing changes.
    resp = client.post("", json=transaction("c", "Patient?identifier=sys|nope", with_patient=False))
    assert resp.status_code == 400
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert studies(client)[0]["description"] == "b"


def test_reset_empties_the_repository(medplum_peer: PeerProcess, client: httpx.Client) -> None:
    assert client.post("", json=transaction("x", PATIENT_UUID)).status_code == 200
    assert len(studies(client)) == 1
    reset = httpx.post(f"http://127.0.0.1:{medplum_peer.port}/$reset", trust_env=False)
    assert reset.status_code == 200
    assert studies(client) == []


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Task", "intent": "order"},  # missing required Task.status
        {"resourceType": "Patient", "notAnElement": True},
        {
            "resourceType": "ImagingStudy",
            "status": "available",
            "subject": {"reference": "x"},
            "numberOfSeries": "one",
        },
    ],
    ids=["missing-required", "unknown-element", "wrong-type"],
)
def test_invalid_resource_is_400_with_operation_outcome(
    client: httpx.Client, resource: dict[str, Any]
) -> None:
    resp = client.post(f"/{resource['resourceType']}", json=resource)
    assert resp.status_code == 400
    outcome = resp.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["severity"] == "error"  # errors listed before warnings


def test_invalid_entry_fails_whole_transaction(client: httpx.Client) -> None:
    bundle = transaction("y", PATIENT_UUID)
    bundle["entry"][1]["resource"]["numberOfSeries"] = "one"
    resp = client.post("", json=bundle)
    assert resp.status_code == 400
    assert resp.json()["resourceType"] == "OperationOutcome"
    assert client.get("/Patient", params={"_summary": "count"}).json()["total"] == 0


def test_create_returns_versioned_location(client: httpx.Client) -> None:
    resp = client.post("/Patient", json={"resourceType": "Patient", "active": True})
    assert resp.status_code == 201
    patient = resp.json()
    assert resp.headers["location"].endswith(
        f"/fhir/R4/Patient/{patient['id']}/_history/{patient['meta']['versionId']}"
    )
    assert client.get(f"/Patient/{patient['id']}").json()["id"] == patient["id"]


def test_identifier_search_semantics(client: httpx.Client) -> None:
    # The peer indexes identifier values; system, value-only and changed identifiers must behave
    # exactly as Medplum's own matcher does.
    assert client.post("", json=transaction("x", PATIENT_UUID)).status_code == 200

    def total(query: str) -> int:
        resp = client.get("/ImagingStudy", params={"identifier": query, "_summary": "count"})
        assert resp.status_code == 200
        return int(resp.json()["total"])

    assert total(STUDY_IDENT) == 1
    assert total("urn:oid:1.2.3") == 1  # value only, any system
    assert total("other|urn:oid:1.2.3") == 0
    assert total("urn:dicom:uid|urn:oid:1.2.3.4") == 0

    stored = studies(client)[0]
    stored["identifier"] = [{"system": "urn:dicom:uid", "value": "urn:oid:9.9"}]
    assert client.put(f"/ImagingStudy/{stored['id']}", json=stored).status_code == 200
    assert total(STUDY_IDENT) == 0
    assert total("urn:dicom:uid|urn:oid:9.9") == 1


def test_conditional_update_with_two_matches_is_412(client: httpx.Client) -> None:
    duplicate = study("dup", "Patient/p1")
    for _ in range(2):
        assert client.post("/ImagingStudy", json=duplicate).status_code == 201
    resp = client.post("", json=transaction("z", "Patient/p1", with_patient=False))
    assert resp.status_code == 412
    assert resp.json()["issue"][0]["code"] == "multiple-matches"
