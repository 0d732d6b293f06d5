"""The API's store calls run off the serving event loop (issue 11), on SQLite and PostgreSQL:
while another process holds the store's write lock, a POST /reviews waits for it on a worker
thread and the loop keeps answering, reads included; the submission's FHIR requests go through
the process's one client on the serving loop."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from adapter.api.intake import ServingLoopFhir, drive
from adapter.api.server import api_server
from adapter.cli import main
from adapter.config import Settings, load_settings
from adapter.fhir.client import FhirClient
from adapter.store.outbox import Outbox
from tests.api_support import TOKEN, api_settings
from tests.peers.launch import free_port
from tests.peers.postgres_fixture import CliStore
from tests.support import FIXTURES

AUTH = {"Authorization": f"Bearer {TOKEN}"}
PLANNING = FIXTURES / "dicom" / "planning-ct"


def study_uid() -> str:
    from pydicom import dcmread

    first = sorted(PLANNING.glob("*_CT_0001.dcm"))[0]
    return str(dcmread(first, stop_before_pixels=True).StudyInstanceUID)


def serve(
    settings: Settings, out: Path, fhir: FhirClient
) -> tuple[uvicorn.Server, threading.Thread]:
    """The API as ``rtplan serve`` runs it: with the process's FHIR client."""
    server = api_server(settings, out, fhir=fhir)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "API did not start"
        time.sleep(0.05)
    return server, thread


def test_a_post_waiting_for_the_store_lock_never_holds_up_the_loop(
    tmp_path: Path, cli_store: CliStore, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["ingest", str(PLANNING), "--out", str(out)]) == 0
    capsys.readouterr()
    # A FHIR server is configured (the submission maps against it when the store does not know
    # the study); here the store knows it, so nothing is asked of the unreachable port.
    env = {"RTPLAN_FHIR__BASE_URL": f"http://127.0.0.1:{free_port()}/fhir"}
    if cli_store.url:
        env["RTPLAN_STORE__URL"] = cli_store.url
    settings = api_settings(load_settings(None, env=env), tmp_path)
    fhir = FhirClient(settings.fhir.base_url)
    server, thread = serve(settings, out, fhir)
    base = f"http://127.0.0.1:{settings.http.listen_port}"
    review = json.loads((FIXTURES / "reviews" / "no-finding.json").read_text())
    review = {**review, "study_instance_uid": study_uid(), "review_id": "REV-OFF-LOOP"}
    posted: Future[httpx.Response] = Future()
    try:
        with Outbox(cli_store.location(out / "outbox.sqlite")) as other, other.transaction():
            # Another writer holds the store's one write lock (SQLite's; PostgreSQL's append
            # lock): the POST cannot commit until it is released.
            def post() -> None:
                with httpx.Client(base_url=base, timeout=60, trust_env=False) as client:
                    posted.set_result(client.post("/reviews", json=review, headers=AUTH))

            threading.Thread(target=post, daemon=True).start()
            time.sleep(1.0)  # let the POST reach the lock (its answer is checked below)
            with httpx.Client(base_url=base, timeout=10, trust_env=False) as client:
                assert client.get("/healthz").status_code == 200
                assert client.get("/outbox", headers=AUTH).status_code == 200  # a store read
                assert client.get("/reviews/NOT-THERE", headers=AUTH).status_code == 404
            assert not posted.done(), "the POST answered while the store was locked"
        answer = posted.result(timeout=60)
        assert answer.status_code == 202, answer.text
    finally:
        server.should_exit = True
        thread.join(30)


def test_fhir_requests_from_a_worker_thread_run_on_the_serving_loop() -> None:
    """The thread hop only (the transport is an in-memory seam, not a FHIR peer): the request
    runs on the loop that owns the client, and its answer or error comes back to the caller."""
    seen: list[Any] = []

    async def answer(request: httpx.Request) -> httpx.Response:
        seen.append(asyncio.get_running_loop())
        if request.url.path.endswith("/broken"):
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset"})

    client = FhirClient("http://fhir.invalid/fhir", transport=httpx.MockTransport(answer))
    serving = asyncio.new_event_loop()
    runner = threading.Thread(target=serving.run_forever, daemon=True)
    runner.start()
    try:
        shared = ServingLoopFhir(client, serving)

        async def from_worker() -> tuple[int, str]:
            found = await shared.request("GET", "Patient", params={"identifier": "x|y"})
            try:
                await shared.request("GET", "broken")
            except Exception as exc:  # the client's own error type, raised here
                return found.status, type(exc).__name__
            return found.status, ""

        # On a worker thread, driven without an event loop of its own (as POST /reviews runs).
        done: list[tuple[int, str]] = []
        worker = threading.Thread(target=lambda: done.append(drive(from_worker())))
        worker.start()
        worker.join(30)
        assert done == [(200, "NotSent")]
        assert seen == [serving, serving]

        async def sleeps() -> None:  # anything else awaited is refused, loudly
            await asyncio.sleep(0)  # yields to "the loop": there is none here

        with pytest.raises(RuntimeError, match="other than a FHIR request"):
            drive(sleeps())
    finally:
        asyncio.run_coroutine_threadsafe(client.aclose(), serving).result(10)
        serving.call_soon_threadsafe(serving.stop)
        runner.join(10)
        serving.close()
