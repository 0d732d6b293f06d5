"""``rtplan serve --config FILE --out DIR`` as operators run it (a real process): storescu
sends a planning study to the C-STORE receiver, the API shows it and counts it, and SIGTERM
stops every part cleanly (exit 0, ports closed, nothing left in the spool's incoming area)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from adapter.ingest.pipeline import log_key
from adapter.store.outbox import Outbox
from tests.integration.test_dicom_receiver import storescu
from tests.peers.launch import free_port
from tests.peers.postgres_fixture import CliStore
from tests.receive_support import wait_for
from tests.support import FIXTURES, ROOT

pytestmark = [pytest.mark.peer, pytest.mark.store]
PLANNING = FIXTURES / "dicom" / "planning-ct"


def closed(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def test_serve_runs_receiver_and_api_and_stops_cleanly(tmp_path: Path, cli_store: CliStore) -> None:
    dicom_port, http_port, hl7_port = free_port(), free_port(), free_port()
    (tmp_path / "tokens").write_text("s3cret-token\n")
    config = tmp_path / "rtplan.yaml"
    config.write_text(
        f"dicom:\n  listen_port: {dicom_port}\n  listen_host: 127.0.0.1\n  ae_title: RTPLAN\n"
        f"  allowed_callers: [CTSIM1]\n  quiet_seconds: 60\n"
        f"http:\n  listen_port: {http_port}\n  listen_host: 127.0.0.1\n"
        f"  tokens_file: {tmp_path / 'tokens'}\n"
        f"hl7:\n  listen_port: {hl7_port}\n"
    )
    out = tmp_path / "out"
    env = {**cli_store.env, "PYTHONPATH": str(ROOT)}  # SQLite, then RTPLAN_STORE__URL=PostgreSQL
    cmd = [sys.executable, "-m", "adapter.cli", "serve", "--config", str(config), "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", trust_env=False, timeout=10)
        headers = {"Authorization": "Bearer s3cret-token"}

        def up() -> bool:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            try:
                return api.get("/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, timeout=60, what="serve to start")
        sent = storescu(dicom_port, sorted(PLANNING.glob("*.dcm")))
        assert sent.returncode == 0, sent.stderr
        uid = str(dcmread(sorted(PLANNING.glob("*.dcm"))[0], stop_before_pixels=True)
                  .StudyInstanceUID)  # fmt: skip
        bundle = out / "fhir" / f"ImagingStudy-{log_key(uid)}.json"
        # (0020,1208) = 10: processed at once, not after the 60 s quiet period.
        wait_for(bundle.exists, timeout=30, what="the study's Bundle")
        study = api.get(f"/studies/{uid}", headers=headers).json()
        assert study["recorded"] is True
        metrics = api.get("/metrics", headers=headers).text
        assert "rtplan_receiver_received_total 10.0" in metrics
        assert "rtplan_receiver_studies_mapped_total 1.0" in metrics
        # Every outcome is a series from 0, before its first study (alerting needs the series).
        assert "rtplan_receiver_studies_held_not_planning_total 0.0" in metrics
        assert "since this process started" in metrics  # HELP: these reset with the process
        text = (ROOT / "docs" / "operations.md").read_text()
        documented = [n for n in re.findall(r"`(rtplan_[a-z_]+)", text) if not n.endswith("_")]
        names = {line.split()[2] for line in metrics.splitlines() if line.startswith("# TYPE")}
        names |= {line.split("{")[0].split(" ")[0] for line in metrics.splitlines()}
        assert documented and all(name in names for name in documented), documented
        api.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    # JSON lines (log.format: json, log.level: INFO, the defaults), no patient data in them.
    lines = [json.loads(line) for line in stderr.splitlines() if line.strip()]
    messages = [entry["message"] for entry in lines]
    assert f"received study {log_key(uid)}: mapped (10 instances)" in messages
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    # Structured fields are keys of the line (docs/operations.md), not text in the message.
    access = [e for e in lines if e["logger"] == "rtplan.access"]
    assert {"method": "GET", "route": "/studies/{study_uid}", "status": 200}.items() <= next(
        e for e in access if e["route"] == "/studies/{study_uid}"
    ).items()
    (receiver,) = [e for e in lines if e["message"] == "DICOM receiver stopped"]
    assert receiver["received"] == 10 and receiver["studies_mapped"] == 1
    assert receiver["studies_held_not_planning"] == 0
    (stopped,) = [e for e in lines if e["message"] == "stopped"]
    assert stopped["inbound_received"] == 0
    ds = dcmread(sorted(PLANNING.glob("*.dcm"))[0], stop_before_pixels=True)
    for value in (uid, str(ds.PatientID), str(ds.PatientName), str(ds.AccessionNumber)):
        assert value not in stderr
    assert all(closed(p) for p in (dicom_port, http_port, hl7_port))
    assert not any((out / "spool" / "incoming").iterdir())
    report = json.loads((out / "received" / f"{log_key(uid)}.json").read_text())
    assert report["status"] == "mapped"
    with Outbox(cli_store.location(out / "outbox.sqlite")) as store:
        assert store.study(uid) is not None and store.counts()["delivered"] >= 1
