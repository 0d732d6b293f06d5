"""docs/delivery.md: "A static token instead: ``auth: bearer`` and the token in the environment
variable named by ``token_env``" (default ``RTPLAN_FHIR_TOKEN``). Issue 8 found the loader
refusing that variable as an unknown override; here it is set exactly as documented and the
fault peer, which requires a bearer token it issued, accepts the delivery."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from adapter.store.outbox import Outbox
from tests.store_backend import StoreUnderTest
from tests.support import FIXTURES

pytestmark = pytest.mark.store  # every test here reaches the store: both backends

pytest_plugins = ["tests.peers.fault_fixture"]


def _rtplan(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapter.cli", *args],
        env={**os.environ, "PYTHONPATH": str(FIXTURES.parent), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_documented_bearer_token_variable_authenticates(
    tmp_path: Path, fault_fhir_factory: Any
) -> None:
    server = fault_fhir_factory(require_bearer=True)
    token = server.issue_token()
    config = tmp_path / "rtplan.yaml"
    config.write_text(
        "fhir:\n"
        f"  base_url: {server.base_url}\n"
        "  version: R4\n"
        "  create_patient: true\n"
        "  auth: bearer\n"
    )
    study = FIXTURES / "dicom" / "planning-ct"
    args = ["--config", str(config), "ingest", str(study), "--out", str(tmp_path / "out")]

    result = _rtplan(args, {"RTPLAN_FHIR_TOKEN": token}, tmp_path)
    assert result.returncode == 0, result.stderr
    fhir_requests = [r for r in server.requests if r.path.startswith("/fhir")]
    assert fhir_requests and all(
        r.headers.get("authorization") == f"Bearer {token}" for r in fhir_requests
    )
    assert all(r.status is not None and r.status < 400 for r in fhir_requests)
    assert token not in result.stdout + result.stderr  # never printed

    missing = _rtplan(args, {"RTPLAN_FHIR_TOKEN": ""}, tmp_path)
    assert missing.returncode == 2 and "RTPLAN_FHIR_TOKEN" in missing.stderr


def test_bearer_example_from_the_docs(
    tmp_path: Path, fault_fhir_factory: Any, store: StoreUnderTest
) -> None:
    """docs/delivery.md, verbatim apart from the server URL and the scans folder:
    ``export RTPLAN_FHIR_TOKEN=...; RTPLAN_FHIR__AUTH=bearer rtplan ingest SCANS --fhir-url URL``.
    (The peer has no Patient, so this site also lets the Bundle create it.)"""
    server = fault_fhir_factory(require_bearer=True)
    token = server.issue_token()
    env = {
        "RTPLAN_FHIR_TOKEN": token,
        "RTPLAN_FHIR__AUTH": "bearer",
        "RTPLAN_FHIR__CREATE_PATIENT": "true",
        "XDG_STATE_HOME": str(tmp_path / "state"),  # where the outbox goes without --out
    }
    scans = FIXTURES / "dicom" / "planning-ct"
    result = _rtplan(["ingest", str(scans), "--fhir-url", server.base_url], env, tmp_path)
    assert result.returncode == 0, result.stderr
    writes = [r for r in server.requests if r.method == "POST" and r.path.startswith("/fhir")]
    assert writes and all(r.headers.get("authorization") == f"Bearer {token}" for r in writes)
    if store.url is None:
        assert (tmp_path / "state" / "rtplan" / "outbox.sqlite").is_file()
    else:  # RTPLAN_STORE__URL names the store
        with Outbox(store.at(store.url)) as outbox:
            assert outbox.rows()
    assert [p.name for p in tmp_path.iterdir() if p.name != "state"] == []  # nothing in the cwd
