"""pytest plugin: the MLLP peers (fault peer, python-hl7 receiver, @medplum/hl7 server).

* ``mllp_fault``: a started :class:`~tests.peers.mllp_fault.MllpFaultPeer`, stopped after the
  test. ``mllp_fault_factory(delay=..., tls=...)`` starts more (e.g. one that listens only
  after N seconds, for "connection refused").
* ``hl7_receiver``: a started python-hl7 receiver (AA for everything), stopped after the test;
  ``hl7_receiver_factory(ack_code=..., delay=...)`` for others.
* ``medplum_hl7`` (session): the Node ``@medplum/hl7`` peer; ``npm ci`` runs only if
  ``node_modules`` is missing. Yields a :class:`MedplumHl7` with ``.port`` (MLLP),
  ``.control_ids()`` and ``.reset()``. A missing node/npm or a failed install FAILS the run.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.peers.hl7_receiver import Hl7Receiver
from tests.peers.launch import PeerProcess, free_port, start_peer
from tests.peers.mllp_fault import MllpFaultPeer

ROOT = Path(__file__).resolve().parents[2]
MEDPLUM_HL7_DIR = Path(__file__).resolve().parent / "medplum-hl7"


@pytest.fixture
def mllp_fault() -> Iterator[MllpFaultPeer]:
    with MllpFaultPeer() as peer:
        yield peer


@pytest.fixture
def mllp_fault_factory() -> Iterator[Callable[..., MllpFaultPeer]]:
    started: list[MllpFaultPeer] = []

    def make(*, delay: float = 0.0, **kwargs: Any) -> MllpFaultPeer:
        peer = MllpFaultPeer(**kwargs).start(delay=delay)
        started.append(peer)
        return peer

    yield make
    for peer in reversed(started):
        peer.stop()


@pytest.fixture
def hl7_receiver() -> Iterator[Hl7Receiver]:
    with Hl7Receiver() as receiver:
        yield receiver


@pytest.fixture
def hl7_receiver_factory() -> Iterator[Callable[..., Hl7Receiver]]:
    started: list[Hl7Receiver] = []

    def make(**kwargs: Any) -> Hl7Receiver:
        receiver = Hl7Receiver(**kwargs).start()
        started.append(receiver)
        return receiver

    yield make
    for receiver in reversed(started):
        receiver.stop()


@dataclass
class MedplumHl7:
    process: PeerProcess
    port: int  # MLLP, on 127.0.0.1
    control_url: str

    def control_ids(self) -> list[str]:
        body = httpx.get(f"{self.control_url}/messages", timeout=5.0, trust_env=False).json()
        return list(body["controlIds"])

    def reset(self) -> None:
        httpx.post(f"{self.control_url}/reset", timeout=5.0, trust_env=False).raise_for_status()


def _ensure_installed() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "@medplum/hl7 peer: `node` (>= 20.19) is not on PATH. Install Node.js, then run "
            "`npm ci --prefix tests/peers/medplum-hl7`.",
            pytrace=False,
        )
    if (MEDPLUM_HL7_DIR / "node_modules" / "@medplum" / "hl7").is_dir():
        return node
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail(
            "@medplum/hl7 peer: tests/peers/medplum-hl7/node_modules is missing and `npm` is "
            "not on PATH (`npm ci --prefix tests/peers/medplum-hl7`).",
            pytrace=False,
        )
    cmd = [npm, "ci", "--prefix", str(MEDPLUM_HL7_DIR), "--no-audit", "--no-fund"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"@medplum/hl7 peer: `{' '.join(cmd)}` failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}",
            pytrace=False,
        )
    return node


@pytest.fixture(scope="session")
def medplum_hl7(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MedplumHl7]:
    node = _ensure_installed()
    mllp_port, http_port = free_port(), free_port()
    try:
        process = start_peer(
            "medplum-hl7",
            [node, str(MEDPLUM_HL7_DIR / "server.js"), str(mllp_port), str(http_port)],
            port=http_port,
            ready_url=f"http://127.0.0.1:{http_port}/health",
            cwd=MEDPLUM_HL7_DIR,
            timeout=60.0,
            log_dir=tmp_path_factory.mktemp("peer-logs"),
        )
    except RuntimeError as exc:
        pytest.fail(f"@medplum/hl7 peer did not start: {exc}", pytrace=False)
    try:
        yield MedplumHl7(process, mllp_port, f"http://127.0.0.1:{http_port}")
    finally:
        process.stop()
