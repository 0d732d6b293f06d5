"""pytest plugin: the HAPI FHIR JPA R4 peer (tests/peers/hapi, our own Spring Boot app, H2 mem).

Load with ``-p tests.peers.hapi_fixture`` or ``pytest_plugins = ["tests.peers.hapi_fixture"]``.

* ``hapi_peer`` (session): runs ``tests/peers/hapi/build.sh`` (a no-op when the jar is newer than
  its sources; a cold Maven cache downloads ~340 MB and takes a few minutes), starts
  ``java -Xmx1g -jar target/hapi-peer.jar --server.port=PORT`` on a free loopback port, waits for
  ``GET /fhir/metadata`` (~40 s on 2 cores) and yields the ``PeerProcess``
  (``.base_url`` is ``http://127.0.0.1:PORT/fhir``).
* ``hapi`` (function): yields the FHIR base URL. Data is NOT reset between tests: use unique
  identifiers.
* ``hapi_reset`` (function): a callable that empties the server (every resource, its history and
  the conditional-create search-URL rows) through the peer's ``POST /peer/reset``; ~tens of ms.
  ``reset_hapi(peer)`` does the same outside a test.

A missing ``java``/``mvn``, a failed build or a peer that does not start FAILS the test: real-peer
tests are never skipped. ``HAPI_PEER_JAVA_OPTS`` replaces the default JVM options.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.peers.launch import PeerProcess, free_port, start_peer

HAPI_DIR = Path(__file__).resolve().parent / "hapi"
BUILD_SH = HAPI_DIR / "build.sh"
JAR = HAPI_DIR / "target" / "hapi-peer.jar"
FHIR_PATH = "/fhir"
# -Xmx1g is ample for test data (H2 lives in the heap). SerialGC + C1 only: faster start on 2 cores.
DEFAULT_JAVA_OPTS = (
    "-Xmx1g -Xss1m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError "
    "-Djava.awt.headless=true"
)
BUILD_TIMEOUT = 1800.0  # cold Maven cache: ~2.5 min measured; leave room for a slow mirror
START_TIMEOUT = 240.0  # ~40 s measured on 2 cores


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        pytest.fail(
            "HAPI FHIR peer: `java` (17+) is not on PATH and JAVA_HOME is not set. Install a "
            "JDK 17 and Maven (Debian: `apt-get install -y openjdk-17-jdk-headless maven`), "
            "then run `tests/peers/hapi/build.sh`.",
            pytrace=False,
        )
    return java


def _build() -> None:
    if shutil.which("mvn") is None and not JAR.is_file():
        pytest.fail(
            "HAPI FHIR peer: `mvn` is not on PATH and tests/peers/hapi/target/hapi-peer.jar is not "
            "built. Install Maven 3.8+ (Debian: `apt-get install -y maven`), then run "
            "`tests/peers/hapi/build.sh`.",
            pytrace=False,
        )
    try:
        proc = subprocess.run(
            ["bash", str(BUILD_SH)],
            cwd=HAPI_DIR,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"HAPI FHIR peer: tests/peers/hapi/build.sh took more than {BUILD_TIMEOUT:.0f} s",
            pytrace=False,
        )
    if proc.returncode != 0 or not JAR.is_file():
        pytest.fail(
            f"HAPI FHIR peer: tests/peers/hapi/build.sh failed (exit code {proc.returncode}):\n"
            f"{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}",
            pytrace=False,
        )


def _root_url(peer: PeerProcess) -> str:
    return f"http://127.0.0.1:{peer.port}"


def reset_hapi(peer: PeerProcess) -> None:
    """Delete everything stored in the peer (``POST /peer/reset``); RuntimeError if refused."""
    resp = httpx.post(f"{_root_url(peer)}/peer/reset", timeout=120.0, trust_env=False)
    if resp.status_code != 200:
        raise RuntimeError(
            f"HAPI FHIR peer: POST /peer/reset returned {resp.status_code}: {resp.text[:500]}"
        )


@pytest.fixture(scope="session")
def hapi_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PeerProcess]:
    """The HAPI FHIR JPA peer for the whole session (built if needed, started once)."""
    java = _java()
    _build()
    port = free_port()
    log_dir = tmp_path_factory.mktemp("peer-logs")
    java_opts = shlex.split(os.environ.get("HAPI_PEER_JAVA_OPTS", DEFAULT_JAVA_OPTS))
    ready_url = f"http://127.0.0.1:{port}{FHIR_PATH}/metadata"
    try:
        peer = start_peer(
            "hapi",
            [java, *java_opts, "-jar", str(JAR), f"--server.port={port}"],
            port=port,
            ready_url=ready_url,
            cwd=HAPI_DIR,
            timeout=START_TIMEOUT,
            log_dir=log_dir,
            base_url=f"http://127.0.0.1:{port}{FHIR_PATH}",
        )
    except RuntimeError as exc:
        pytest.fail(f"HAPI FHIR peer did not start: {exc}", pytrace=False)
    try:
        resp = httpx.get(
            ready_url, headers={"Accept": "application/fhir+json"}, timeout=60.0, trust_env=False
        )
        if resp.status_code != 200 or resp.json().get("resourceType") != "CapabilityStatement":
            pytest.fail(
                f"HAPI FHIR peer: GET {ready_url} returned {resp.status_code}, not a "
                f"CapabilityStatement; last log lines:\n{peer.log_tail(40)}",
                pytrace=False,
            )
        yield peer
    finally:
        peer.stop(timeout=20.0)


@pytest.fixture
def hapi(hapi_peer: PeerProcess) -> Iterator[str]:
    """The FHIR base URL ``http://127.0.0.1:PORT/fhir`` (data persists across tests)."""
    if not hapi_peer.running:
        pytest.fail(
            f"HAPI FHIR peer has exited; last log lines:\n{hapi_peer.log_tail(40)}", pytrace=False
        )
    yield hapi_peer.base_url


@pytest.fixture
def hapi_reset(hapi_peer: PeerProcess) -> Callable[[], None]:
    """A callable that empties the HAPI peer (for tests that need a clean server)."""

    def reset() -> None:
        try:
            reset_hapi(hapi_peer)
        except (RuntimeError, httpx.TransportError) as exc:
            pytest.fail(f"{exc}; last log lines:\n{hapi_peer.log_tail(40)}", pytrace=False)

    return reset
