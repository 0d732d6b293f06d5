"""The fault-injecting FHIR peer itself (tests/peers/fault_fhir.py), driven with plain httpx.

Run: pytest -q -p tests.peers.fault_fixture tests/unit/test_fault_peer.py
"""

from __future__ import annotations

import email.utils
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import trustme

from tests.peers.fault_fhir import (
    FaultServer,
    commit_then_drop,
    commit_then_hang,
    commit_then_status,
    delay,
    drop,
    hapi_0550,
    http_date,
    make_assertion,
    make_client_keys,
    multiple_matches,
    operation_outcome,
    race,
    slow_drip,
    status,
)

JSON = dict[str, Any]
FHIR = {"Content-Type": "application/fhir+json"}
STUDY_SYS = "urn:dicom:uid"
STUDY_VAL = "urn:oid:1.2.826.0.1.3680043.2.1125.1"
PAT_SYS = "urn:oid:2.16.840.1.113883.2.1.4.1"
PAT_URL = "urn:uuid:9f0e4c5a-0000-5000-8000-000000000001"
ENDPOINT_URL = "urn:uuid:9f0e4c5a-0000-5000-8000-000000000002"


def study_bundle(study_val: str = STUDY_VAL, patient_id: str = "CANARY123") -> JSON:
    """Shaped like adapter.mapping.bundle.study_bundle: Patient?, Endpoint, ImagingStudy."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": PAT_URL,
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": PAT_SYS, "value": patient_id}],
                },
                "request": {
                    "method": "POST",
                    "url": "Patient",
                    "ifNoneExist": f"identifier={PAT_SYS}|{patient_id}",
                },
            },
            {
                "fullUrl": ENDPOINT_URL,
                "resource": {
                    "resourceType": "Endpoint",
                    "identifier": [{"system": "urn:ietf:rfc:3986", "value": "http://pacs/wado"}],
                    "status": "active",
                    "address": "http://pacs/wado",
                },
                "request": {
                    "method": "PUT",
                    "url": "Endpoint?identifier=urn:ietf:rfc:3986|http://pacs/wado",
                },
            },
            {
                "fullUrl": "urn:uuid:9f0e4c5a-0000-5000-8000-000000000003",
                "resource": {
                    "resourceType": "ImagingStudy",
                    "identifier": [{"system": STUDY_SYS, "value": study_val}],
                    "status": "available",
                    "subject": {"reference": PAT_URL},
                    "endpoint": [{"reference": ENDPOINT_URL}],
                },
                "request": {
                    "method": "PUT",
                    "url": f"ImagingStudy?identifier={STUDY_SYS}|{study_val}",
                },
            },
        ],
    }


# One CA-store context for every plain-HTTP client (httpx builds a new one per Client otherwise).
_DEFAULT_TLS = ssl.create_default_context()


def _client(**kwargs: Any) -> httpx.Client:
    kwargs.setdefault("verify", _DEFAULT_TLS)
    return httpx.Client(**kwargs)


def statuses(bundle: JSON) -> list[str]:
    return [e["response"]["status"] for e in bundle["entry"]]


@pytest.fixture
def client(fault_fhir: FaultServer) -> Iterator[httpx.Client]:
    with _client(base_url=fault_fhir.base_url, timeout=5.0) as c:
        yield c


# ---- normal behaviour ----------------------------------------------------------------------


def test_metadata_is_r4_with_transaction(client: httpx.Client, fault_fhir: FaultServer) -> None:
    cap = client.get("/metadata").json()
    assert cap["resourceType"] == "CapabilityStatement"
    assert cap["fhirVersion"] == "4.0.1"
    assert {"code": "transaction"} in cap["rest"][0]["interaction"]
    token_ext = cap["rest"][0]["security"]["extension"][0]["extension"][0]
    assert token_ext["valueUri"] == fault_fhir.token_url


def test_transaction_creates_then_updates_idempotently(
    client: httpx.Client, fault_fhir: FaultServer
) -> None:
    first = client.post("", json=study_bundle(), headers=FHIR)
    assert first.status_code == 200
    body = first.json()
    assert body["type"] == "transaction-response"
    assert statuses(body) == ["201 Created"] * 3
    loc = body["entry"][2]["response"]["location"]
    assert loc.startswith("ImagingStudy/") and loc.endswith("/_history/1")
    assert body["entry"][2]["response"]["etag"] == 'W/"1"'

    study = next(iter(fault_fhir.resources["ImagingStudy"].values()))
    patient_id = next(iter(fault_fhir.resources["Patient"]))
    endpoint_id = next(iter(fault_fhir.resources["Endpoint"]))
    assert study["subject"]["reference"] == f"Patient/{patient_id}"  # urn:uuid rewritten
    assert study["endpoint"][0]["reference"] == f"Endpoint/{endpoint_id}"

    again = client.post("", json=study_bundle(), headers=FHIR).json()
    assert statuses(again) == ["200 OK", "200 OK", "200 OK"]
    assert again["entry"][2]["response"]["location"].endswith("/_history/2")
    assert again["entry"][0]["response"]["location"] == f"Patient/{patient_id}/_history/1"
    assert [fault_fhir.count(t) for t in ("Patient", "Endpoint", "ImagingStudy")] == [1, 1, 1]


def test_search_by_identifier_and_summary_count(
    client: httpx.Client, fault_fhir: FaultServer
) -> None:
    client.post("", json=study_bundle(), headers=FHIR)
    found = client.get("/ImagingStudy", params={"identifier": f"{STUDY_SYS}|{STUDY_VAL}"}).json()
    assert found["type"] == "searchset" and found["total"] == 1
    assert found["entry"][0]["resource"]["identifier"][0]["value"] == STUDY_VAL
    counted = client.get(
        "/ImagingStudy", params={"identifier": f"{STUDY_SYS}|{STUDY_VAL}", "_summary": "count"}
    ).json()
    assert counted["total"] == 1 and "entry" not in counted
    none = client.get("/ImagingStudy", params={"identifier": f"{STUDY_SYS}|other"}).json()
    assert none["total"] == 0
    assert client.get("/ImagingStudy", params={"bogus": "x"}).status_code == 400


def test_plain_rest_create_read_and_if_none_exist(
    client: httpx.Client, fault_fhir: FaultServer
) -> None:
    patient = {"resourceType": "Patient", "identifier": [{"system": "s", "value": "v"}]}
    created = client.post("/Patient", json=patient, headers=FHIR)
    assert created.status_code == 201
    assert created.headers["location"].startswith(f"{fault_fhir.base_url}/Patient/")
    assert created.headers["etag"] == 'W/"1"'
    pid = created.json()["id"]
    matched = client.post(
        "/Patient", json=patient, headers={**FHIR, "If-None-Exist": "identifier=s|v"}
    )
    assert matched.status_code == 200 and matched.json()["id"] == pid
    assert client.get(f"/Patient/{pid}").json()["identifier"][0]["value"] == "v"
    assert client.get("/Patient/nope").status_code == 404
    stale = client.put(f"/Patient/{pid}", json=patient, headers={**FHIR, "If-Match": 'W/"9"'})
    assert stale.status_code == 412
    assert fault_fhir.count("Patient") == 1


def test_more_than_one_match_is_412_and_transaction_is_atomic(
    client: httpx.Client, fault_fhir: FaultServer
) -> None:
    dup = {
        "resourceType": "ImagingStudy",
        "identifier": [{"system": STUDY_SYS, "value": STUDY_VAL}],
    }
    fault_fhir.seed(dup)
    fault_fhir.seed(dup)
    response = client.post("", json=study_bundle(), headers=FHIR)
    assert response.status_code == 412
    assert response.json()["resourceType"] == "OperationOutcome"
    assert "matched 2 resources" in response.json()["issue"][0]["diagnostics"]
    # all-or-nothing: the Patient and Endpoint of the failed transaction were not kept
    assert fault_fhir.count("Patient") == 0 and fault_fhir.count("Endpoint") == 0


def test_unresolvable_conditional_reference_fails_transaction(
    client: httpx.Client, fault_fhir: FaultServer
) -> None:
    bundle = study_bundle()
    del bundle["entry"][0]
    bundle["entry"][1]["resource"]["subject"] = {"reference": f"Patient?identifier={PAT_SYS}|X"}
    response = client.post("", json=bundle, headers=FHIR)
    assert response.status_code == 400
    assert fault_fhir.count("ImagingStudy") == 0 and fault_fhir.count("Endpoint") == 0


# ---- scripted faults ------------------------------------------------------------------------


def test_status_503_retry_after_does_not_touch_store_and_is_fifo(
    client: httpx.Client, fault_fhir: FaultServer
) -> None:
    fault_fhir.script(
        status(503, {"Retry-After": "2"}),
        status(429, {"Retry-After": http_date(3)}),
        method="POST",
        path="/fhir",
    )
    assert client.get("/metadata").status_code == 200  # GET does not consume POST faults
    first = client.post("", json=study_bundle(), headers=FHIR)
    assert first.status_code == 503 and first.headers["retry-after"] == "2"
    assert first.json()["resourceType"] == "OperationOutcome"
    second = client.post("", json=study_bundle(), headers=FHIR)
    assert second.status_code == 429
    when = email.utils.parsedate_to_datetime(second.headers["retry-after"])
    assert 1 <= when.timestamp() - time.time() <= 4
    assert fault_fhir.count("ImagingStudy") == 0
    assert client.post("", json=study_bundle(), headers=FHIR).status_code == 200
    assert fault_fhir.count("ImagingStudy") == 1
    log = fault_fhir.requests.filter(method="POST")
    assert [(r.status, r.action) for r in log] == [
        (503, "status"),
        (429, "status"),
        (200, "normal"),
    ]
    assert log[0].json()["type"] == "transaction"
    assert log[0].headers["content-type"] == "application/fhir+json"
    assert len(fault_fhir.requests.gaps(method="POST")) == 2
    assert fault_fhir.pending() == []


def test_status_with_custom_outcome_body(client: httpx.Client, fault_fhir: FaultServer) -> None:
    fault_fhir.script(status(422, body=operation_outcome("bad code", "code-invalid")))
    fault_fhir.script(multiple_matches())
    response = client.post("", json=study_bundle(), headers=FHIR)
    assert response.status_code == 422
    assert response.json()["issue"][0]["code"] == "code-invalid"
    response = client.post("", json=study_bundle(), headers=FHIR)
    assert response.status_code == 412 and "matched 2" in response.text
    assert fault_fhir.count("ImagingStudy") == 0


def test_commit_then_status_really_stores(client: httpx.Client, fault_fhir: FaultServer) -> None:
    fault_fhir.script(commit_then_status(502), method="POST")
    response = client.post("", json=study_bundle(), headers=FHIR)
    assert response.status_code == 502
    assert fault_fhir.count("ImagingStudy", f"{STUDY_SYS}|{STUDY_VAL}") == 1
    retry = client.post("", json=study_bundle(), headers=FHIR).json()  # retry: match, no dup
    assert statuses(retry)[2] == "200 OK"
    assert fault_fhir.count("ImagingStudy") == 1


def test_commit_then_hang_outlives_read_timeout(fault_fhir: FaultServer) -> None:
    fault_fhir.script(commit_then_hang(0.8), method="POST")
    timeout = httpx.Timeout(5.0, read=0.2)
    with _client(base_url=fault_fhir.base_url, timeout=timeout) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.post("", json=study_bundle(), headers=FHIR)
        assert fault_fhir.count("ImagingStudy") == 1
        assert statuses(c.post("", json=study_bundle(), headers=FHIR).json())[2] == "200 OK"
    assert fault_fhir.count("ImagingStudy") == 1


def test_commit_then_hang_forever_is_released_by_stop() -> None:
    with FaultServer() as srv:
        srv.script(commit_then_hang(None))
        with (
            _client(base_url=srv.base_url, timeout=httpx.Timeout(5.0, read=0.2)) as c,
            pytest.raises(httpx.ReadTimeout),
        ):
            c.post("", json=study_bundle(), headers=FHIR)
        started = time.monotonic()
    assert time.monotonic() - started < 2.0
    assert srv.requests[0].status is None


def test_drop_and_commit_then_drop(client: httpx.Client, fault_fhir: FaultServer) -> None:
    fault_fhir.script(drop(), commit_then_drop(), method="POST")
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("", json=study_bundle(), headers=FHIR)
    assert fault_fhir.count("ImagingStudy") == 0
    with pytest.raises(httpx.RemoteProtocolError):
        client.post("", json=study_bundle(), headers=FHIR)
    assert fault_fhir.count("ImagingStudy") == 1


def test_delay_then_normal(client: httpx.Client, fault_fhir: FaultServer) -> None:
    fault_fhir.script(delay(0.2), path="/fhir/metadata")
    started = time.monotonic()
    assert client.get("/metadata").status_code == 200
    assert time.monotonic() - started >= 0.2


def test_slow_drip_beats_read_timeout(fault_fhir: FaultServer) -> None:
    body = b'{"ok":1}'  # 8 bytes x 0.08 s
    fault_fhir.script(slow_drip(0.08, body), method="GET")
    with _client(base_url=fault_fhir.base_url, timeout=httpx.Timeout(5.0, read=0.3)) as c:
        started = time.monotonic()
        response = c.get("/metadata")
        elapsed = time.monotonic() - started
    assert response.status_code == 200 and response.content == body
    assert elapsed >= 0.08 * len(body)


def test_hapi_0550_is_a_409_conflict_without_store_change(
    client: httpx.Client, fault_fhir: FaultServer
) -> None:
    assert client.post("", json=study_bundle(), headers=FHIR).status_code == 200
    fault_fhir.script(hapi_0550(), method="POST")
    response = client.post("", json=study_bundle(), headers=FHIR)
    assert response.status_code == 409
    diagnostics = response.json()["issue"][0]["diagnostics"]
    assert "HAPI-0550" in diagnostics and "HFJ_RES_SEARCH_URL" in diagnostics
    version = next(iter(fault_fhir.resources["ImagingStudy"].values()))["meta"]["versionId"]
    assert version == "1"


def _post_concurrently(base_url: str, n: int) -> list[int]:
    codes: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n)

    def one() -> None:
        with _client(base_url=base_url, timeout=5.0) as c:
            barrier.wait()
            code = c.post("", json=study_bundle(), headers=FHIR).status_code
        with lock:
            codes.append(code)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return codes


def test_race_window_makes_duplicates(fault_fhir: FaultServer) -> None:
    fault_fhir.script(*[race(0.15) for _ in range(4)], method="POST")
    assert _post_concurrently(fault_fhir.base_url, 4) == [200] * 4
    assert fault_fhir.count("ImagingStudy", f"{STUDY_SYS}|{STUDY_VAL}") == 4
    assert fault_fhir.count("Patient") == 4
    with _client(base_url=fault_fhir.base_url) as c:  # now conditional ops see >1 match
        assert c.post("", json=study_bundle(), headers=FHIR).status_code == 412


def test_without_race_concurrent_conditional_ops_do_not_duplicate(
    fault_fhir: FaultServer,
) -> None:
    assert _post_concurrently(fault_fhir.base_url, 4) == [200] * 4
    assert fault_fhir.count("ImagingStudy") == 1 and fault_fhir.count("Patient") == 1


def test_reset_forgets_everything(client: httpx.Client, fault_fhir: FaultServer) -> None:
    client.post("", json=study_bundle(), headers=FHIR)
    fault_fhir.script(status(500))
    fault_fhir.reset()
    assert fault_fhir.count("ImagingStudy") == 0
    assert len(fault_fhir.requests) == 0 and fault_fhir.pending() == []


# ---- SMART Backend Services token endpoint and bearer auth --------------------------------


@pytest.fixture(scope="module")
def rs_keys() -> tuple[bytes, JSON]:
    return make_client_keys("RS384", kid="rk1")


@pytest.fixture(scope="module")
def es_keys() -> tuple[bytes, JSON]:
    return make_client_keys("ES384", kid="ek1")


@pytest.fixture
def auth_server(
    fault_fhir_factory: Callable[..., FaultServer],
    rs_keys: tuple[bytes, JSON],
    es_keys: tuple[bytes, JSON],
) -> FaultServer:
    server = fault_fhir_factory(require_bearer=True)
    server.register_client("rs-client", rs_keys[1])
    server.register_client("es-client", es_keys[1])
    return server


def _token_form(assertion: str, scope: str = "system/ImagingStudy.cruds") -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
        "scope": scope,
    }


def test_token_endpoint_accepts_rs384_and_es384(
    auth_server: FaultServer, rs_keys: tuple[bytes, JSON], es_keys: tuple[bytes, JSON]
) -> None:
    with _client(timeout=5.0) as c:
        for client_id, (pem, _), alg, kid in (
            ("rs-client", rs_keys, "RS384", "rk1"),
            ("es-client", es_keys, "ES384", "ek1"),
        ):
            jwt_ = make_assertion(
                pem, client_id=client_id, token_url=auth_server.token_url, alg=alg, kid=kid
            )
            response = c.post(auth_server.token_url, data=_token_form(jwt_))
            assert response.status_code == 200, response.text
            token = response.json()
            assert token["token_type"] == "bearer" and token["expires_in"] == 300
            assert token["scope"] == "system/ImagingStudy.cruds"
            search = c.get(
                f"{auth_server.base_url}/ImagingStudy",
                headers={"Authorization": f"Bearer {token['access_token']}"},
            )
            assert search.status_code == 200
    accepted = [a for a in auth_server.assertions if a.accepted]
    assert [a.header["alg"] for a in accepted] == ["RS384", "ES384"]
    assert accepted[0].claims["iss"] == accepted[0].claims["sub"] == "rs-client"
    assert accepted[0].claims["aud"] == auth_server.token_url


@pytest.mark.parametrize(
    ("case", "overrides"),
    [
        ("exp too far", {"lifetime_s": 600}),
        ("wrong aud", {"token_url": "https://elsewhere.example/token"}),
        ("unknown kid", {"kid": "nope"}),
        ("no kid", {"kid": None}),
        ("sub differs", {"claims": {"sub": "someone-else"}}),
        ("no jti", {"claims": {"jti": None}}),
        ("expired", {"now": time.time() - 600}),
        ("RS256", {"alg": "RS256"}),
        ("no typ", {"headers": {"typ": None}}),
        ("foreign jku", {"headers": {"jku": "https://attacker.example/jwks"}}),
    ],
)
def test_token_endpoint_rejects_bad_assertions(
    auth_server: FaultServer, rs_keys: tuple[bytes, JSON], case: str, overrides: JSON
) -> None:
    kwargs: JSON = {
        "client_id": "rs-client",
        "token_url": auth_server.token_url,
        "alg": "RS384",
        "kid": "rk1",
        **overrides,
    }
    jwt_ = make_assertion(rs_keys[0], **kwargs)
    with _client(timeout=5.0) as c:
        response = c.post(auth_server.token_url, data=_token_form(jwt_))
    assert response.status_code == 400, case
    assert response.json()["error"] == "invalid_client", case
    assert auth_server.assertions[-1].accepted is False


def test_token_endpoint_rejects_reused_jti_and_hs256(
    auth_server: FaultServer, rs_keys: tuple[bytes, JSON]
) -> None:
    jti = str(uuid.uuid4())
    good = make_assertion(
        rs_keys[0], client_id="rs-client", token_url=auth_server.token_url, kid="rk1", jti=jti
    )
    replay = make_assertion(
        rs_keys[0], client_id="rs-client", token_url=auth_server.token_url, kid="rk1", jti=jti
    )
    hs = make_assertion(
        b"k" * 48, client_id="rs-client", token_url=auth_server.token_url, alg="HS256", kid="rk1"
    )
    with _client(timeout=5.0) as c:
        assert c.post(auth_server.token_url, data=_token_form(good)).status_code == 200
        reused = c.post(auth_server.token_url, data=_token_form(replay))
        assert reused.status_code == 400 and reused.json()["error"] == "invalid_client"
        assert "jti" in reused.json()["error_description"]
        rejected = c.post(auth_server.token_url, data=_token_form(hs))
        assert rejected.status_code == 400 and rejected.json()["error"] == "invalid_client"
        bad_grant = c.post(auth_server.token_url, data={**_token_form(good), "grant_type": "x"})
        assert bad_grant.json()["error"] == "unsupported_grant_type"


def test_bearer_required_and_tokens_expire(
    fault_fhir_factory: Callable[..., FaultServer], rs_keys: tuple[bytes, JSON]
) -> None:
    server = fault_fhir_factory(require_bearer=True, token_ttl_s=0.4)
    server.register_client("rs-client", rs_keys[1])
    with _client(base_url=server.base_url, timeout=5.0) as c:
        assert c.get("/metadata").status_code == 200  # discovery needs no token
        denied = c.get("/ImagingStudy")
        assert denied.status_code == 401
        assert 'error="invalid_token"' in denied.headers["www-authenticate"]
        server.script(status(503), method="GET", path="/fhir/ImagingStudy")
        assert c.get("/ImagingStudy").status_code == 401  # auth first: fault not consumed
        assert len(server.pending()) == 1
        server.clear_script()

        jwt_ = make_assertion(
            rs_keys[0], client_id="rs-client", token_url=server.token_url, kid="rk1"
        )
        token = c.post(server.token_url, data=_token_form(jwt_)).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        assert c.get("/ImagingStudy", headers=auth).status_code == 200
        time.sleep(0.5)
        assert c.get("/ImagingStudy", headers=auth).status_code == 401  # expired by ttl

        server.token_ttl_s = 60
        fresh = {"Authorization": f"Bearer {server.issue_token()}"}
        assert c.get("/ImagingStudy", headers=fresh).status_code == 200
        server.expire_tokens()
        assert c.get("/ImagingStudy", headers=fresh).status_code == 401


# ---- TLS -------------------------------------------------------------------------------------


def test_tls_serves_https_and_refuses_untrusted_and_plaintext(
    fault_fhir_factory: Callable[..., FaultServer],
) -> None:
    ca = trustme.CA()
    server = fault_fhir_factory(tls=ca.issue_cert("127.0.0.1"))
    assert server.base_url.startswith("https://127.0.0.1:")
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    with _client(verify=trusted, timeout=5.0) as c:
        assert c.get(f"{server.base_url}/metadata").status_code == 200

    other = ssl.create_default_context()
    trustme.CA().configure_trust(other)
    with _client(verify=other, timeout=5.0) as c, pytest.raises(httpx.ConnectError):
        c.get(f"{server.base_url}/metadata")

    plain = server.base_url.replace("https://", "http://")
    with _client(timeout=2.0) as c, pytest.raises(httpx.HTTPError):
        c.get(f"{plain}/metadata")
    assert len(server.requests) == 1  # only the trusted HTTPS request got through
