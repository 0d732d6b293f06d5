"""pytest fixtures for the Medplum in-memory FHIR R4 peer (tests/peers/medplum/server.js).

* ``medplum_peer`` (session): installs the pinned npm packages if ``node_modules`` is missing
  (``npm ci``; CI normally did it already), starts ``server.js`` on a free loopback port and
  yields the ``PeerProcess`` (``.base_url`` is the FHIR base ``http://127.0.0.1:PORT/fhir/R4``).
* ``medplum`` (function): empties the peer's repository (``POST /$reset``) and yields the FHIR
  base URL string.

A missing ``node``/``npm`` or a failed install FAILS the test: real-peer tests are never skipped.
Set ``MEDPLUM_PEER_LOG=1`` to make the server log one line per request to its log file.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.peers.launch import PeerProcess, free_port, start_peer

ROOT = Path(__file__).resolve().parents[2]
MEDPLUM_DIR = Path(__file__).resolve().parent / "medplum"
SERVER_JS = MEDPLUM_DIR / "server.js"
FHIR_PATH = "/fhir/R4"
START_TIMEOUT = 60.0


def _root_url(peer: PeerProcess) -> str:
    return f"http://127.0.0.1:{peer.port}"


def _ensure_installed() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "Medplum FHIR peer: `node` (>= 20.19) is not on PATH. Install Node.js, then run "
            "`npm ci --prefix tests/peers/medplum`.",
            pytrace=False,
        )
    if (MEDPLUM_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        return node
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "Medplum FHIR peer: tests/peers/medplum/node_modules is missing and `npm` is not on "
            "PATH to install it (`npm ci --prefix tests/peers/medplum`).",
            pytrace=False,
        )
    cmd = [npm, "ci", "--prefix", str(MEDPLUM_DIR), "--no-audit", "--no-fund", "--loglevel=error"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"Medplum FHIR peer: `{' '.join(cmd)}` failed with exit code {proc.returncode}:\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}",
            pytrace=False,
        )
    return node


@pytest.fixture(scope="session")
def medplum_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    """The Medplum peer process for the whole session (started once, stopped at the end)."""
    node = _ensure_installed()
    port = free_port()
    log_dir = tmp_path_factory.mktemp("peer-logs")
    try:
        peer = start_peer(
            "medplum",
            [node, str(SERVER_JS), str(port)],
            port=port,
            ready_url=f"http://127.0.0.1:{port}/$health",
            env={"PORT": str(port), "MEDPLUM_PEER_LOG": os.environ.get("MEDPLUM_PEER_LOG", "0")},
            cwd=MEDPLUM_DIR,
            timeout=START_TIMEOUT,
            log_dir=log_dir,
            base_url=f"http://127.0.0.1:{port}{FHIR_PATH}",
        )
    except RuntimeError as exc:
        pytest.fail(f"Medplum FHIR peer did not start: {exc}", pytrace=False)
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def medplum(medplum_peer: PeerProcess) -> Iterator[str]:
    """An empty Medplum repository for this test; yields the FHIR base URL."""
    try:
        resp = httpx.post(f"{_root_url(medplum_peer)}/$reset", timeout=10.0, trust_env=False)
    except httpx.TransportError as exc:
        pytest.fail(
            f"Medplum FHIR peer is not answering ({exc}); last log lines:\n"
            f"{medplum_peer.log_tail(40)}",
            pytrace=False,
        )
    if resp.status_code != 200:
        pytest.fail(f"Medplum FHIR peer: POST /$reset returned {resp.status_code}", pytrace=False)
    yield medplum_peer.base_url


def connections_accepted(peer: PeerProcess) -> int:
    """TCP connections the peer accepted since it started (``GET /$connections``), the one
    this question arrives on included."""
    resp = httpx.get(f"{_root_url(peer)}/$connections", timeout=10.0, trust_env=False)
    resp.raise_for_status()
    return int(resp.json()["accepted"])
