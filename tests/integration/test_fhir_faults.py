"""Reliability matrix rows 15-25: the outbox + FHIR client against the fault-injecting peer.

Each test delivers a real planning-study Bundle through the same path production uses
(``adapter.jobs.deliver.deliver``) and asserts attempt counts, wait gaps and what the
server ends up holding.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trustme

from adapter.config import FhirSettings, Settings
from adapter.jobs.deliver import FHIR, KIND_TRANSACTION, deliver
from adapter.store.outbox import Outbox, State
from tests.peers import fault_fhir as fault
from tests.peers.fault_fhir import FaultServer
from tests.store_backend import StoreUnderTest
from tests.support import FIXTURES

pytestmark = pytest.mark.store  # every test here reaches the store: both backends

BUNDLE: dict[str, Any] = json.loads((FIXTURES / "expected" / "planning-ct.bundle.json").read_text())
STUDY = next(e for e in BUNDLE["entry"] if e["resource"]["resourceType"] == "ImagingStudy")
STUDY_TOKEN = STUDY["request"]["url"].split("identifier=", 1)[1]
FAST = FhirSettings(initial_wait=0.05, max_wait=0.2, max_attempts=6, read_timeout=1.0, deadline=3.0)


def settings(server: FaultServer, **fhir: Any) -> Settings:
    return Settings(fhir=replace(FAST, base_url=server.base_url, **fhir))


def enqueue(
    outbox: Outbox, server: FaultServer, payload: dict[str, Any] = BUNDLE, key: str = "study:1"
) -> int:
    return outbox.enqueue(
        destination=FHIR,
        target=server.base_url,
        key=key,
        kind=KIND_TRANSACTION,
        label="ImagingStudy-test",
        payload=payload,
    )


def run(outbox: Outbox, config: Settings) -> Any:
    return asyncio.run(deliver(outbox, config))


def posts(server: FaultServer) -> list[Any]:
    """The transaction POSTs (reconciliation searches travel as batch POSTs too)."""
    return [r for r in server.requests.filter("POST", "/fhir") if _bundle_type(r) == "transaction"]


def searches(server: FaultServer) -> list[Any]:
    return [r for r in server.requests if r.method == "GET" or _bundle_type(r) == "batch"]


def gaps(requests: list[Any]) -> list[float]:
    return [b.time - a.time for a, b in itertools.pairwise(requests)]


def _bundle_type(request: Any) -> str:
    try:
        return str(json.loads(request.body).get("type", ""))
    except ValueError:
        return ""


def studies(server: FaultServer) -> int:
    return server.count("ImagingStudy", STUDY_TOKEN.replace("%7C", "|"))


def test_row15_503_retry_after_is_waited_for(
    tmp_path: Path, fault_fhir: FaultServer, store: StoreUnderTest
) -> None:
    outbox = Outbox(store.at(tmp_path / "o.sqlite"))
    row = enqueue(outbox, fault_fhir)
    fault_fhir.script(
        fault.status(503, {"Retry-After": "2"}),
        fault.status(503, {"Retry-After": "2"}),
        method="POST",
    )
    report = run(outbox, settings(fault_fhir))
    assert report.delivered == 1 and outbox.get(row).state is State.DELIVERED
    assert len(posts(fault_fhir)) == 3
    assert all(gap >= 2.0 for gap in gaps(posts(fault_fhir)))
    assert studies(fault_fhir) == 1


def test_row16_http_date_and_absurd_retry_after(
    tmp_path: Path, fault_fhir: FaultServer, store: StoreUnderTest
) -> None:
    outbox = Outbox(store.at(tmp_path / "o.sqlite"))
    dated = enqueue(outbox, fault_fhir, key="study:dated")
    fault_fhir.script(fault.status(429, {"Retry-After": fault.http_date(2)}), method="POST")
    run(outbox, settings(fault_fhir))
    assert outbox.get(dated).state is State.DELIVERED
    # The HTTP-date was parsed (it has one-second resolution).
    assert gaps(posts(fault_fhir))[0] >= 0.9
    fault_fhir.reset()
    absurd = enqueue(outbox, fault_fhir, key="study:absurd")
    fault_fhir.script(fault.status(429, {"Retry-After": "86400"}), method="POST")
    report = run(outbox, settings(fault_fhir))
    assert report.dead == 1 and len(posts(fault_fhir)) == 1
    assert "over the 120s cap" in outbox.get(absurd).last_error


def test_row17_5xx_after_commit_never_duplicates(
    tmp_path: Path, fault_fhir: FaultServer, store: StoreUnderTest
) -> None:
    for code in (500, 502, 504):
        fault_fhir.reset()
        outbox = Outbox(store.separate(tmp_path / f"{code}.sqlite"))
        enqueue(outbox, fault_fhir)
        fault_fhir.script(fault.commit_then_status(code), method="POST")
        report = run(outbox, settings(fault_fhir))
        assert report.delivered == 1
        assert studies(fault_fhir) == 1
        first, second = posts(fault_fhir)
        # reconciled by identifier before resending
        assert any(first.time < r.time < second.time for r in searches(fault_fhir))


def test_row18_read_timeout_after_commit(
    tmp_path: Path, fault_fhir: FaultServer, store: StoreUnderTest
) -> None:
    outbox = Outbox(store.at(tmp_path / "o.sqlite"))
    enqueue(outbox, fault_fhir)
    fault_fhir.script(fault.commit_then_hang(2.5), method="POST")
    report = run(outbox, settings(fault_fhir))
    assert report.delivered == 1 and report.retries == 1
    assert studies(fault_fhir) == 1


def test_row19_concurrent_jobs_for_one_study_are_serialised(
    tmp_path: Path, fault_fhir: FaultServer, store: StoreUnderTest
) -> None:
    """8 workers (8 outbox handles on one file) race on one study against a server with a
    search-then-insert window: the outbox allows one write per key at a time, so 1 resource."""
    path = tmp_path / "o.sqlite"
    fault_fhir.script(*[fault.race(0.2) for _ in range(8)], method="POST")
    config = settings(fault_fhir)

    async def job(n: int) -> None:
        outbox = Outbox(store.at(path))
        payload = json.loads(json.dumps(BUNDLE))
        payload["entry"][-1]["resource"]["description"] += f" (job {n})"  # 8 distinct rows
        enqueue(outbox, fault_fhir, payload)
        await deliver(outbox, config)

    async def all_jobs() -> None:
        await asyncio.gather(*(job(n) for n in range(8)))

    asyncio.run(all_jobs())
    assert len(posts(fault_fhir)) == 8
    assert studies(fault_fhir) == 1
    assert Outbox(store.at(path)).counts()["delivered"] == 8


def test_row20_412_stops_the_key(
    tmp_path: Path, fault_fhir: FaultServer, store: StoreUnderTest
) -> None:
    outbox = Outbox(store.at(tmp_path / "o.sqlite"))
    first = enqueue(outbox, fault_fhir)
    fault_fhir.script(fault.multiple_matches(), method="POST")
    report = run(outbox, settings(fault_fhir))
    assert report.held == 1 and report.alerts
    assert outbox.get(first).state is State.DEAD
    later = enqueue(outbox, fault_fhir, {**BUNDLE, "id": "later"})
    run(outbox, settings(fault_fhir))
    assert outbox.get(later).state is State.PENDING  # no further writes for that key
    assert len(posts(fault_fhir)) == 1


def test_row21_rejected_bundle_is_a_dead_letter(
    tmp_path: Path, fault_fhir: FaultServer, store: StoreUnderTest
) -> None:
    outbox = Outbox(store.at(tmp_path / "o.sqlite"))
    row = enqueue(outbox, fault_fhir)
    body = fault.operation_outcome("ImagingStudy.status: bad code for CANARY123", code="invalid")
    fault_fhir.script(fault.status(400, body=body), method="POST")
    report = run(outbox, settings(fault_fhir))
    assert report.dead == 1 and len(posts(fault_fhir)) == 1
    dead = outbox.get(row)
    assert dead.state is State.DEAD and dead.payload == BUNDLE
    assert dead.last_error.startswith("rejected: HTTP 400 (error/invalid")
    assert "CANARY123" not in dead.last_error
    assert studies(fault_fhir) == 0
    # After the cause is fixed the analyst replays it.
    replayed = outbox.replay(row)
    run(outbox, settings(fault_fhir))
    assert outbox.get(replayed).state is State.DELIVERED and studies(fault_fhir) == 1


def test_row22_hapi_unique_violation_is_reconciled(
    tmp_path: Path, fault_fhir: FaultServer, store: StoreUnderTest
) -> None:
    outbox = Outbox(store.at(tmp_path / "o.sqlite"))
    enqueue(outbox, fault_fhir)
    fault_fhir.script(fault.hapi_0550(), method="POST")
    report = run(outbox, settings(fault_fhir))
    assert report.delivered == 1 and report.retries == 1
    assert studies(fault_fhir) == 1


def test_row23_slow_drip_hits_the_overall_deadline(
    tmp_path: Path, fault_fhir: FaultServer, store: StoreUnderTest
) -> None:
    outbox = Outbox(store.at(tmp_path / "o.sqlite"))
    row = enqueue(outbox, fault_fhir)
    fault_fhir.script(fault.slow_drip(0.3, body=b'{"resourceType":"Bundle"}'), method="POST")
    report = run(outbox, settings(fault_fhir, read_timeout=1.0, deadline=1.5))
    assert report.delivered == 1
    events = [detail for _, event, detail in outbox.events(row) if event == "retry"]
    assert "TimeoutError" in events[0] or "Timeout" in events[0]


def test_row24_tls_verified_and_never_plaintext(
    tmp_path: Path, fault_fhir_factory: Any, store: StoreUnderTest
) -> None:
    trusted, rogue = trustme.CA(), trustme.CA()
    server = fault_fhir_factory(tls=trusted)
    ca_file = tmp_path / "ca.pem"
    trusted.cert_pem.write_to_path(str(ca_file))
    rogue_file = tmp_path / "rogue.pem"
    rogue.cert_pem.write_to_path(str(rogue_file))
    outbox = Outbox(store.at(tmp_path / "o.sqlite"))
    bad = enqueue(outbox, server, key="study:bad")
    report = run(outbox, settings(server, ca_bundle=str(rogue_file), max_attempts=2))
    assert report.dead == 1 and "not sent" in outbox.get(bad).last_error
    assert server.requests.filter("POST") == []  # nothing went anywhere, in clear or not
    good = enqueue(outbox, server, key="study:good")
    run(outbox, settings(server, ca_bundle=str(ca_file)))
    assert outbox.get(good).state is State.DELIVERED
    assert server.base_url.startswith("https://")


def test_row25_smart_backend_auth(
    tmp_path: Path, fault_fhir_factory: Any, store: StoreUnderTest
) -> None:
    server = fault_fhir_factory(require_bearer=True, token_ttl_s=300)
    pem, jwks = fault.make_client_keys("ES384", kid="rtplan-1")
    server.register_client("rtplan", jwks)
    key = tmp_path / "key.pem"
    key.write_bytes(pem)
    key.chmod(0o600)  # a key others can read is refused (docs/security.md)
    config = settings(
        server,
        auth="smart",
        token_url=server.token_url,
        client_id="rtplan",
        private_key=str(key),
        key_id="rtplan-1",
        algorithm="ES384",
    )
    outbox = Outbox(store.at(tmp_path / "o.sqlite"))
    enqueue(outbox, server, key="study:1")
    assert run(outbox, config).delivered == 1
    server.expire_tokens()  # the next request gets 401: one refresh, then success
    enqueue(outbox, server, {**BUNDLE, "id": "second"}, key="study:2")
    assert run(outbox, config).delivered == 1
    accepted = [a for a in server.assertions if a.accepted]
    assert len(accepted) == 2
    jtis = {a.claims["jti"] for a in accepted}
    assert len(jtis) == 2
    for a in accepted:
        assert a.header["alg"] == "ES384" and a.header["kid"] == "rtplan-1"
        assert a.claims["aud"] == server.token_url
        assert a.claims["exp"] - a.claims["iat"] <= 300
    # An unregistered client is refused at the token endpoint: visible, not retried forever.
    stranger = replace(config, fhir=replace(config.fhir, client_id="stranger", max_attempts=2))
    row = enqueue(outbox, server, {**BUNDLE, "id": "third"}, key="study:3")
    assert run(outbox, stranger).dead == 1
    assert "invalid_client" in outbox.get(row).last_error


def test_mutual_tls_client_certificate(
    tmp_path: Path, fault_fhir_factory: Any, store: StoreUnderTest
) -> None:
    """A server that requires a client certificate: refused without one, delivered with one."""
    import ssl

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED
    server = fault_fhir_factory(tls=server_context)
    ca_file, cert_file, key_file = tmp_path / "ca.pem", tmp_path / "c.pem", tmp_path / "k.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    client = ca.issue_cert("rtplan-adapter")
    client.cert_chain_pems[0].write_to_path(str(cert_file))
    client.private_key_pem.write_to_path(str(key_file))
    outbox = Outbox(store.at(tmp_path / "o.sqlite"))
    anonymous = enqueue(outbox, server, key="study:anonymous")
    run(outbox, settings(server, ca_bundle=str(ca_file), max_attempts=2))
    assert outbox.get(anonymous).state is State.DEAD and studies(server) == 0
    known = enqueue(outbox, server, key="study:known")
    config = settings(
        server, ca_bundle=str(ca_file), client_cert=str(cert_file), client_key=str(key_file)
    )
    run(outbox, config)
    assert outbox.get(known).state is State.DELIVERED and studies(server) == 1
