"""Orthanc pushes a planning and a diagnostic study to a real ``rtplan serve`` process whose
FHIR destination is HAPI FHIR JPA (not an output folder): the planning study's ImagingStudy and
review Task are on HAPI, the diagnostic one is held; and ``/metrics`` equals what the peers
counted: instances Orthanc sent (DICOM) and resources HAPI holds (FHIR)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from adapter.mapping.review_task import REVIEW_TASK_SYSTEM, review_task_value
from tests.integration.test_dicom_receiver import study_uid
from tests.peers.launch import free_port
from tests.peers.orthanc_fixture import OrthancPeer
from tests.receive_support import wait_for
from tests.support import FIXTURES, ROOT, make_study

pytest_plugins = ["tests.peers.orthanc_fixture"]
pytestmark = [pytest.mark.peer, pytest.mark.store]

DIAGNOSTIC = FIXTURES / "dicom" / "diagnostic-ct"
TOKEN = "receive-fhir-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def metric(text: str, name: str) -> float:
    """One sample's value from the Prometheus text (``name`` with its labels, as printed)."""
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match is not None, f"{name} not in /metrics"
    return float(match.group(1))


def test_orthanc_push_reaches_hapi_and_metrics_equal_the_peers_counts(
    orthanc: OrthancPeer, hapi: str, tmp_path: Path
) -> None:
    folder, planning = make_study(tmp_path / "studies")  # unique UIDs: HAPI is shared
    planning_files = sorted(folder.glob("*.dcm"))
    diagnostic_files = sorted(DIAGNOSTIC.glob("*.dcm"))
    orthanc.upload(planning_files + diagnostic_files)
    dicom_port, http_port = free_port(), free_port()
    (tmp_path / "tokens").write_text(f"{TOKEN}\n")
    config = tmp_path / "rtplan.yaml"
    config.write_text(
        f"dicom:\n  listen_port: {dicom_port}\n  quiet_seconds: 30\n"
        f"  spool_dir: {tmp_path / 'spool'}\n"
        f"http:\n  listen_port: {http_port}\n  tokens_file: {tmp_path / 'tokens'}\n"
        f"hl7:\n  listen_port: {free_port()}\n"
        f"fhir:\n  base_url: {hapi}\n  version: R4\n  create_patient: true\n"
        f"outbox:\n  path: {tmp_path / 'outbox.sqlite'}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "adapter.cli", "serve", "--config", str(config)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", trust_env=False, timeout=30)

        def up() -> bool:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            try:
                return api.get("/readyz").status_code == 200  # the store and HAPI answer
            except httpx.TransportError:
                return False

        wait_for(up, timeout=120, what="serve to start")
        with orthanc.client() as http:
            modality = {"AET": "RTPLAN", "Host": "127.0.0.1", "Port": dicom_port}
            http.put("/modalities/rtplan", json=modality).raise_for_status()
            studies = http.get("/studies").json()
            assert len(studies) == 2
            answer = http.post("/modalities/rtplan/store", json={"Resources": studies},
                               timeout=120)  # fmt: skip
            answer.raise_for_status()
            sent = http.get("/statistics").json()["CountInstances"]

        def delivered() -> bool:
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            answer = api.get(f"/studies/{planning}", headers=AUTH)
            if answer.status_code != 200:
                return False
            rows = answer.json()["rows"]
            return bool(rows) and all(r["state"] == "delivered" for r in rows)

        wait_for(delivered, timeout=120, what="the planning study on HAPI")
        held_metric = "rtplan_receiver_studies_held_not_planning_total 1.0"
        wait_for(lambda: held_metric in api.get("/metrics", headers=AUTH).text, timeout=60,
                 what="the diagnostic study processed")  # fmt: skip
        diagnostic = study_uid(DIAGNOSTIC)
        held = api.get(f"/studies/{diagnostic}", headers=AUTH)
        metrics = api.get("/metrics", headers=AUTH).text
        api.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr[-3000:]
    # On HAPI: one ImagingStudy for the planning study, with every instance Orthanc sent of
    # it, and its review Task; nothing for the diagnostic study from this run.
    identifier = f"identifier=urn:dicom:uid|urn:oid:{planning}"
    with httpx.Client(trust_env=False, timeout=60) as http:
        found = http.get(f"{hapi}/ImagingStudy?{identifier}").json()
    (entry,) = found["entry"]
    study = entry["resource"]
    assert study["numberOfInstances"] == len(planning_files)
    task = f"Task?identifier={REVIEW_TASK_SYSTEM}|{review_task_value(planning)}"
    tasks = httpx.get(f"{hapi}/{task}", timeout=60, trust_env=False).json()
    (review_task,) = tasks["entry"]
    assert review_task["resource"]["focus"]["reference"] == f"ImagingStudy/{study['id']}"
    assert held.status_code == 200, held.text  # recorded, held (not planning): nothing to send
    assert held.json()["recorded"] is True and held.json()["rows"] == []
    # DICOM: what Orthanc sent = what the receiver counted; studies by outcome.
    assert sent == len(planning_files) + len(diagnostic_files)
    assert metric(metrics, "rtplan_receiver_received_total") == sent
    assert metric(metrics, "rtplan_receiver_studies_mapped_total") == 1
    assert metric(metrics, "rtplan_receiver_studies_held_not_planning_total") == 1
    # FHIR: one delivered transaction = the one ImagingStudy (and its Task) HAPI holds.
    fhir_delivered = metric(metrics, 'rtplan_outbox_rows{destination="fhir",state="delivered"}')
    assert fhir_delivered == len(found["entry"]) == 1
    assert "Traceback" not in stderr
