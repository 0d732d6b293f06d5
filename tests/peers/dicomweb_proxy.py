"""A recording HTTP proxy in front of a real DICOMweb server (Orthanc), for the faults and
observations Orthanc cannot give by itself:

* it records when each request arrived and its path (the ``--rate`` test counts them);
* with ``drop_last_instance_of`` set to a Study Instance UID, that study's WADO-RS metadata
  answer loses its last instance, as when the archive is still receiving the study between
  the QIDO-RS count and the metadata read.

Loopback only, its own free port, a thread per request; stopped by :meth:`stop`.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx


class DicomWebProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests: list[tuple[float, str]] = []  # (time.monotonic() at arrival, path)
        self.drop_last_instance_of = ""
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> DicomWebProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with proxy._lock:
                    proxy.requests.append((time.monotonic(), self.path.split("?")[0]))
                headers = {"Accept": self.headers.get("Accept", "*/*")}
                with httpx.Client(trust_env=False, timeout=60) as http:
                    answer = http.get(proxy.upstream + self.path, headers=headers)
                body = answer.content
                target = proxy.drop_last_instance_of
                if target and self.path.split("?")[0].endswith(f"/studies/{target}/metadata"):
                    items: list[Any] = json.loads(body)
                    body = json.dumps(items[:-1]).encode()
                self.send_response(answer.status_code)
                kind = answer.headers.get("content-type", "application/dicom+json")
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # paths carry UIDs: not printed

        return Handler
