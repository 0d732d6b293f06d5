"""A real Orthanc PACS (Debian ``orthanc`` + ``orthanc-dicomweb``) for integration tests.

Loopback only: ``RemoteAccessAllowed: false``, and because Orthanc 1.10.1 has no bind-address
setting (it always listens on 0.0.0.0), it runs with ``orthanc/loopback_bind.c`` preloaded,
which turns every wildcard bind into a loopback bind. ``OrthancPeer.start`` then checks from
``/proc`` that none of Orthanc's listening sockets is beyond 127.0.0.1 / ::1, and fails if one
is. Each peer has its own temp-dir config and storage, free ports, and is stopped by its PID.

Fixtures (load with ``pytest_plugins = ["tests.peers.orthanc_fixture"]``):

* ``orthanc_peer`` (session): one running peer.
* ``orthanc`` (function): that peer, emptied before the test.
* ``orthanc_factory`` (function): ``make(aet=..., tls=...) -> OrthancPeer`` not yet started
  (for "archive down, then up", or DICOM TLS); every peer it made is stopped after the test.

A missing ``Orthanc`` binary, DICOMweb plugin or C compiler FAILS the test (``.ci/run``
installs them): real-peer tests are never skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.peers.launch import PeerProcess, free_port, start_peer

ORTHANC_BIN = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
SHIM_SOURCE = Path(__file__).resolve().parent / "orthanc" / "loopback_bind.c"
START_TIMEOUT = 60.0


def _fail(message: str) -> None:
    pytest.fail(f"Orthanc peer: {message}", pytrace=False)


def build_shim(folder: Path) -> Path:
    """Compile the loopback bind shim into ``folder`` (once per folder)."""
    target = folder / "loopback_bind.so"
    if target.exists():
        return target
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        _fail("no C compiler (cc) to build the loopback bind shim; install gcc")
    assert compiler is not None
    cmd = [compiler, "-shared", "-fPIC", "-O2", "-o", str(target), str(SHIM_SOURCE), "-ldl"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
    if proc.returncode != 0:
        _fail(f"building the loopback bind shim failed:\n{proc.stderr[-2000:]}")
    return target


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """(address, port) of every listening TCP socket of process ``pid`` (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = str(fd.readlink())
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A = LISTEN
                continue
            address, port = local.split(":")
            found.append((_address(address, width), int(port, 16)))
    return found


def _address(hexed: str, width: int) -> str:
    raw = bytes.fromhex(hexed)
    if width == 8:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    joined = b"".join(words)
    return ":".join(joined[i : i + 2].hex() for i in range(0, 16, 2))


_LOOPBACK = {"127.0.0.1", "0000:0000:0000:0000:0000:0000:0000:0001"}


class OrthancPeer:
    """One Orthanc process with its own config, storage and ports."""

    def __init__(
        self,
        folder: Path,
        shim: Path,
        *,
        aet: str = "ORTHANCTEST",
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        """``tls``: (certificate, private key, CA that client certificates must chain to), all
        PEM; the DICOM port then speaks TLS only and requires a client certificate."""
        self.folder = folder
        self.shim = shim
        self.aet = aet
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.process: PeerProcess | None = None
        folder.mkdir(parents=True, exist_ok=True)
        storage = folder / "storage"
        config = {
            "Name": "RTPLAN-TEST",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "Plugins": [DICOMWEB_PLUGIN],
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomModalitiesInDatabase": False,
            "StorageCompression": False,
            # Orthanc's default: a re-sent instance with a known SOP Instance UID is ignored.
            "OverwriteInstances": False,
            "StableAge": 1,
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "EnableWado": False,
                "Ssl": False,
                "StudiesMetadata": "Full",
                "SeriesMetadata": "Full",
            },
        }
        if tls is not None:
            cert, key, trusted = tls
            config.update(
                {
                    "DicomTlsEnabled": True,
                    "DicomTlsCertificate": str(cert),
                    "DicomTlsPrivateKey": str(key),
                    "DicomTlsTrustedCertificates": str(trusted),
                    "DicomTlsRemoteCertificateRequired": True,
                }
            )
        self.config = folder / "orthanc.json"
        self.config.write_text(json.dumps(config, indent=2), encoding="utf-8")

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    @property
    def cstore_target(self) -> str:
        """The ``label.cstore`` setting that reaches this peer."""
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def start(self) -> None:
        for path in (ORTHANC_BIN, DICOMWEB_PLUGIN):
            if not Path(path).exists():
                _fail(f"{path} is missing; install the Debian packages orthanc orthanc-dicomweb")
        self.process = start_peer(
            "orthanc",
            [ORTHANC_BIN, str(self.config)],
            port=self.http_port,
            ready_url=f"{self.http_url}/system",
            env={"LD_PRELOAD": str(self.shim)},
            cwd=self.folder,
            timeout=START_TIMEOUT,
            log_dir=self.folder,
        )
        self._wait_dicom()
        exposed = [
            (a, p) for a, p in listening_addresses(self.process.pid) if a not in _LOOPBACK
        ]
        if exposed:
            self.stop()
            _fail(f"Orthanc listens beyond loopback: {exposed}")

    def _wait_dicom(self) -> None:
        import time

        assert self.process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if any(p == self.dicom_port for _, p in listening_addresses(self.process.pid)):
                return
            time.sleep(0.05)
        _fail(f"the DICOM port did not open; log:\n{self.process.log_tail()}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=15.0)
            self.process = None

    # -- REST and DICOMweb helpers for tests ----------------------------------------------

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.http_url, timeout=30.0, trust_env=False)

    def upload(self, paths: Sequence[Path]) -> None:
        """Store DICOM files through the REST API (``POST /instances``)."""
        with self.client() as http:
            for path in paths:
                response = http.post("/instances", content=path.read_bytes())
                response.raise_for_status()

    def reset(self) -> None:
        """Delete every patient (and so every study, series and instance)."""
        with self.client() as http:
            for patient in http.get("/patients").json():
                http.delete(f"/patients/{patient}").raise_for_status()

    def qido(self, path: str, **params: str) -> list[dict[str, Any]]:
        """A QIDO-RS search (``/dicom-web/<path>``), DICOM JSON."""
        with self.client() as http:
            response = http.get(
                f"/dicom-web/{path}", params=params, headers={"Accept": "application/dicom+json"}
            )
            response.raise_for_status()
            result: list[dict[str, Any]] = response.json() if response.content else []
            return result

    def instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance of a study (QIDO-RS), with its series and SOP Instance UID."""
        return self.qido(f"studies/{study_uid}/instances", includefield="all")

    def series(self, study_uid: str) -> list[dict[str, Any]]:
        return self.qido(f"studies/{study_uid}/series", includefield="all")


def value(item: dict[str, Any], tag: str) -> Any:
    """The first value of a DICOM JSON attribute, or None."""
    values = item.get(tag, {}).get("Value", [])
    return values[0] if values else None


@pytest.fixture(scope="session")
def orthanc_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_shim(tmp_path_factory.mktemp("orthanc-shim"))


@pytest.fixture(scope="session")
def orthanc_peer(
    tmp_path_factory: pytest.TempPathFactory, orthanc_shim: Path
) -> Iterator[OrthancPeer]:
    peer = OrthancPeer(tmp_path_factory.mktemp("orthanc"), orthanc_shim)
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def orthanc(orthanc_peer: OrthancPeer) -> OrthancPeer:
    orthanc_peer.reset()
    return orthanc_peer


@pytest.fixture
def orthanc_factory(tmp_path: Path, orthanc_shim: Path) -> Iterator[Any]:
    made: list[OrthancPeer] = []

    def make(
        aet: str = "ORTHANCTEST", tls: tuple[Path, Path, Path] | None = None
    ) -> OrthancPeer:
        peer = OrthancPeer(tmp_path / f"orthanc-{len(made)}", orthanc_shim, aet=aet, tls=tls)
        made.append(peer)
        return peer

    try:
        yield make
    finally:
        for peer in made:
            peer.stop()
