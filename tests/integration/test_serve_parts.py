"""Each part of ``rtplan serve`` switched by setting (docs/operations.md "Deployment"): two real
``serve`` processes on one store share the work, the API in one (``serve.delivery: false``,
``serve.mllp_listener: false``) and delivery in the other; a configuration with every part off
is a usage error."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter.cli import main
from tests.peers.launch import free_port
from tests.receive_support import wait_for
from tests.support import FIXTURES, ROOT

pytestmark = [pytest.mark.peer, pytest.mark.store]
PLANNING = FIXTURES / "dicom" / "planning-ct"
TOKEN = "parts-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def study_uid() -> str:
    from pydicom import dcmread

    first = sorted(PLANNING.glob("*_CT_0001.dcm"))[0]
    return str(dcmread(first, stop_before_pixels=True).StudyInstanceUID)


def listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def start_serve(config: Path, out: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "adapter.cli", "serve", "--config", str(config), "--out", str(out)]
    return subprocess.Popen(cmd, cwd=config.parent, env={**os.environ, "PYTHONPATH": str(ROOT),
                            **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def stop_serve(proc: subprocess.Popen[str]) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    return stderr


def review_rows(api: httpx.Client, review_id: str) -> list[dict[str, Any]]:
    answer = api.get(f"/reviews/{review_id}", headers=AUTH)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    return [*body["rows"], *body["orders"]]


def test_api_process_only_stores_and_a_delivery_process_delivers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["ingest", str(PLANNING), "--out", str(out)]) == 0
    capsys.readouterr()
    (tmp_path / "tokens").write_text(f"{TOKEN}\n")
    http_port, api_hl7_port, worker_hl7_port = free_port(), free_port(), free_port()
    api_config = tmp_path / "api.yaml"
    api_config.write_text(
        f"http:\n  listen_port: {http_port}\n  tokens_file: {tmp_path / 'tokens'}\n"
        f"hl7:\n  listen_port: {api_hl7_port}\n"
        "serve:\n  mllp_listener: false\n  delivery: false\n"
    )
    worker_config = tmp_path / "worker.yaml"
    worker_config.write_text(f"hl7:\n  listen_port: {worker_hl7_port}\n")
    api_proc = start_serve(api_config, out, {})
    worker: subprocess.Popen[str] | None = None
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", trust_env=False, timeout=30)

        def up() -> bool:
            assert api_proc.poll() is None, api_proc.communicate()[1][-3000:]
            try:
                return api.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=60, what="the API process to start")
        assert not listening(api_hl7_port)  # serve.mllp_listener: false
        data = json.loads((FIXTURES / "reviews" / "concern.json").read_text())
        body = {**data, "study_instance_uid": study_uid(), "review_id": "REV-PARTS-1"}
        answer = api.post("/reviews", json=body, headers=AUTH)
        assert answer.status_code == 202, answer.text
        rows = review_rows(api, "REV-PARTS-1")
        assert rows and {r["state"] for r in rows} == {"pending"}
        # Nothing in this process delivers them (no worker, no hand-over from the API): with
        # either on, the files are written within a second on this loopback set-up.
        time.sleep(3)
        assert api_proc.poll() is None, api_proc.communicate()[1][-3000:]
        assert {r["state"] for r in review_rows(api, "REV-PARTS-1")} == {"pending"}
        assert not list(out.glob("hl7/*.hl7"))
        (note,) = api.get("/reviews/REV-PARTS-1", headers=AUTH).json()["notes"]
        assert note["state"] == "building" and note["rows"] == []  # its job waits too
        # ... the delivery process does: the defaults, switched off only by the environment.
        worker = start_serve(
            worker_config, out, {"RTPLAN_HTTP__LISTEN_PORT": "0", "RTPLAN_SERVE__DELIVERY": "true"}
        )

        def delivered() -> bool:
            assert worker is not None and worker.poll() is None, worker.communicate()[1][-3000:]
            return {r["state"] for r in review_rows(api, "REV-PARTS-1")} == {"delivered"}

        wait_for(delivered, timeout=60, what="the delivery process to deliver the review")

        # Every row, the note's MDM and ORU too: the worker builds the note after the answer
        # (its job row was stored with the review) and queues them.
        def documents() -> list[dict[str, object]]:
            rows = api.get("/outbox", headers=AUTH).json()
            return [r for r in rows if r["kind"] == "hl7-document"]

        wait_for(lambda: len(documents()) == 2, timeout=120, what="the note's MDM and ORU rows")
        (note,) = api.get("/reviews/REV-PARTS-1", headers=AUTH).json()["notes"]
        assert note["state"] == "built"  # MDM^T02 and ORU^R01 (note.outputs: auto, --out)

        def all_delivered() -> bool:
            rows = api.get("/outbox", headers=AUTH).json()
            return all(r["state"] == "delivered" for r in rows)

        wait_for(all_delivered, timeout=60, what="every outbox row delivered")
        assert listening(worker_hl7_port)  # serve.mllp_listener defaults to on
        assert list((out / "hl7").glob("*.hl7")), "the radiology order was not written"
        api.close()
    finally:
        api_stderr = stop_serve(api_proc)
        if worker is not None:
            stop_serve(worker)
    assert "mllp listener on" not in api_stderr
    # The start line says which parts run; off, the RIS profiles' hosts are not resolved.
    (serving,) = [json.loads(x) for x in api_stderr.splitlines() if '"serving"' in x]
    assert serving["mllp_listener"] is False and serving["delivery"] is False
    assert serving["api"] is True
    assert "does not resolve" not in api_stderr


def test_a_delivery_process_started_first_delivers_rows_of_every_kind_accepted_later(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The worker of a long-running ``serve`` knows every configured destination from the
    start, the note's MDM/ORU receivers included, not only those with rows waiting then."""
    out = tmp_path / "out"
    assert main(["ingest", str(PLANNING), "--out", str(out)]) == 0
    capsys.readouterr()
    (tmp_path / "tokens").write_text(f"{TOKEN}\n")
    http_port = free_port()
    api_config = tmp_path / "api.yaml"
    api_config.write_text(
        f"http:\n  listen_port: {http_port}\n  tokens_file: {tmp_path / 'tokens'}\n"
        "serve:\n  mllp_listener: false\n  delivery: false\n"
    )
    worker_config = tmp_path / "worker.yaml"
    worker_config.write_text(f"hl7:\n  listen_port: {free_port()}\n")
    worker = start_serve(worker_config, out, {})
    api_proc = start_serve(api_config, out, {})
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", trust_env=False, timeout=30)

        def up() -> bool:
            assert api_proc.poll() is None, api_proc.communicate()[1][-3000:]
            assert worker.poll() is None, worker.communicate()[1][-3000:]
            try:
                return api.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=60, what="both processes to start")
        data = json.loads((FIXTURES / "reviews" / "concern.json").read_text())
        body = {**data, "study_instance_uid": study_uid(), "review_id": "REV-PARTS-LATE"}
        assert api.post("/reviews", json=body, headers=AUTH).status_code == 202

        def documents() -> int:  # the note job, run by the worker, queues MDM and ORU
            assert worker.poll() is None, worker.communicate()[1][-3000:]
            rows = api.get("/outbox", headers=AUTH).json()
            return len([r for r in rows if r["kind"] == "hl7-document"])

        wait_for(lambda: documents() == 2, timeout=120, what="the note's MDM and ORU rows")

        def all_delivered() -> bool:
            assert worker.poll() is None, worker.communicate()[1][-3000:]
            found = api.get("/outbox", headers=AUTH).json()
            return all(r["state"] == "delivered" for r in found)

        wait_for(all_delivered, timeout=60, what="every row, the note's MDM and ORU too")
        api.close()
    finally:
        stop_serve(api_proc)
        stop_serve(worker)


def test_serve_with_every_part_off_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "off.yaml"
    config.write_text("serve:\n  mllp_listener: false\n  delivery: false\n")
    assert main(["serve", "--config", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rtplan: config serve: every part is off"), err
    assert "Traceback" not in "".join(err)


def test_an_unreadable_tokens_file_stops_serve_before_any_port_is_bound(tmp_path: Path) -> None:
    """One line naming ``http.tokens_file``, exit 2, and the MLLP listener (on by default) was
    never started: an operator's mistake leaves no port half-open."""
    hl7_port = free_port()
    config = tmp_path / "rtplan.yaml"
    config.write_text(
        f"http:\n  listen_port: {free_port()}\n  tokens_file: {tmp_path / 'missing-tokens'}\n"
        f"hl7:\n  listen_port: {hl7_port}\n"
    )
    proc = start_serve(config, tmp_path / "out", {})
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2, stderr
    assert stderr.strip().splitlines() == [
        "rtplan: config http.tokens_file: cannot read: No such file or directory"
    ]
