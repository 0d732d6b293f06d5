"""STOW-RS over https: the archive's certificate is verified against ``label.ca_bundle``.

Debian 12's Orthanc 1.10.1 crashes (SIGSEGV) on every HTTPS request (its SslEnabled mode), so
the real-peer STOW-RS tests run over http against Orthanc (test_orthanc_label.py), and this one
checks only the TLS set-up of the STOW-RS client against a minimal local HTTPS endpoint that
answers like Orthanc's DICOMweb plugin (200 with the stored instance in 0008,1199).
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import ClassVar

import pytest
import trustme
from pydicom import dcmread

from adapter.cli import main
from adapter.store.outbox import Outbox
from tests.store_backend import StoreUnderTest
from tests.support import FIXTURES

pytestmark = pytest.mark.store  # every test here reaches the store: both backends

PLANNING = FIXTURES / "dicom" / "planning-ct"


class _Stow(BaseHTTPRequestHandler):
    received: ClassVar[list[bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Stow.received.append(body)
        part = body.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
        stored = dcmread(BytesIO(part))
        item = {
            "00081150": {"vr": "UI", "Value": [str(stored.SOPClassUID)]},
            "00081155": {"vr": "UI", "Value": [str(stored.SOPInstanceUID)]},
        }
        answer = json.dumps({"00081199": {"vr": "SQ", "Value": [item]}}).encode()
        self.send_response(200 if self.path == "/dicom-web/studies" else 404)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def https_stow(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.cert_pem.bytes())
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stow)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Stow.received = []
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/dicom-web", ca_file
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_stow_rs_over_https_verifies_with_the_configured_ca(
    https_stow: tuple[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    store: StoreUnderTest,
) -> None:
    url, ca_file = https_stow
    monkeypatch.setenv("RTPLAN_LABEL__MAX_ATTEMPTS", "1")  # the label's own policy
    config = tmp_path / "rtplan.yaml"
    config.write_text(f"label:\n  stow_rs_url: {url}\n")
    untrusted = tmp_path / "untrusted"
    assert main(["--config", str(config), "ingest", str(PLANNING), "--out", str(untrusted)]) == 1
    with Outbox(store.at(untrusted / "outbox.sqlite")) as outbox:
        (row,) = [r for r in outbox.rows() if r.destination == "pacs"]
    assert (row.state.value, row.last_error) == ("dead", "gave up after 1 attempt(s): "
                                                 "STOW-RS: cannot connect")  # fmt: skip
    assert _Stow.received == []

    config.write_text(f"label:\n  stow_rs_url: {url}\n  ca_bundle: {ca_file}\n")
    out = tmp_path / "out"
    store.point_cli(monkeypatch, out / "outbox.sqlite")  # a store of its own
    assert main(["--config", str(config), "ingest", str(PLANNING), "--out", str(out)]) == 0
    (body,) = _Stow.received
    (kos,) = sorted((out / "dicom").glob("*.dcm"))
    assert kos.read_bytes() in body  # the same KOS, as one application/dicom part
    capsys.readouterr()
