"""One command, one event loop, one FHIR client (issue 8: jobs are async functions).

``rtplan ingest --fhir-url`` used to run three event loops and open three FHIR clients (the
CapabilityStatement, the prior-imaging check, delivery). Now the command runs one job in one
``asyncio.run`` and hands the same client to every step. Counted three ways: event loops
created in the process, ``FhirClient`` objects constructed, and TCP connections accepted by
the peer (with ``fhir.concurrency: 1`` one client has one pooled connection, so every request
of the run arrives on it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adapter.cli import main
from tests.loop_support import count_loops_and_clients
from tests.peers.fault_fhir import FaultServer
from tests.support import FIXTURES

pytestmark = pytest.mark.store  # every test here reaches the store: both backends


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "rtplan.yaml"
    # version auto: the CapabilityStatement is read; create_patient: the fault peer resolves
    # conditional references only to resources it holds.
    config.write_text("fhir:\n  version: auto\n  concurrency: 1\n  create_patient: true\n")
    return config


def test_one_ingest_opens_one_event_loop_and_one_fhir_client(
    tmp_path: Path,
    fault_fhir: FaultServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    loops, clients = count_loops_and_clients(monkeypatch)
    out = tmp_path / "out"
    code = main(
        [
            "--config",
            str(_config(tmp_path)),
            "ingest",
            str(FIXTURES / "dicom" / "planning-ct"),
            "--fhir-url",
            fault_fhir.base_url,
            "--out",
            str(out),
            "--json",
        ]
    )
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["mapped"] == 1
    assert summary["delivery"]["dead"] == summary["delivery"]["held"] == 0

    # All three steps really talked to the server...
    asked = [(r.method, r.path) for r in fault_fhir.requests]
    assert ("GET", "/fhir/metadata") in asked  # capabilities (fhir.version: auto)
    assert ("GET", "/fhir/Patient") in asked  # the prior-imaging check
    assert ("POST", "/fhir/") in asked  # delivery of the transaction Bundle
    assert fault_fhir.count("ImagingStudy") == 1
    # ...through one client, on one loop, over one connection.
    assert clients == [fault_fhir.base_url]
    assert len(loops) == 1
    assert fault_fhir.connections_accepted == 1


def test_one_review_submission_opens_one_event_loop_and_one_fhir_client(
    tmp_path: Path,
    fault_fhir: FaultServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config, out = _config(tmp_path), tmp_path / "out"
    study = FIXTURES / "dicom" / "planning-ct"
    ingest = ["--config", str(config), "ingest", str(study), "--fhir-url", fault_fhir.base_url]
    assert main([*ingest, "--out", str(out)]) == 0
    capsys.readouterr()
    before = fault_fhir.connections_accepted
    loops, clients = count_loops_and_clients(monkeypatch)

    review = FIXTURES / "reviews" / "concern.json"  # a concern: the EHR's Patient is checked
    submit = ["--config", str(config), "review", "submit", str(review)]
    code = main([*submit, "--fhir-url", fault_fhir.base_url, "--out", str(out)])
    assert code == 0, capsys.readouterr()
    asked = [(r.method, r.path) for r in fault_fhir.requests]
    assert asked.count(("GET", "/fhir/Patient")) >= 2  # prior check (ingest), patient check
    assert fault_fhir.count("DiagnosticReport") == 1
    assert clients == [fault_fhir.base_url]
    assert len(loops) == 1
    assert fault_fhir.connections_accepted - before == 1
