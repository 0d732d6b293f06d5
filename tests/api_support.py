"""Run the HTTP API (uvicorn) on a background thread for a test."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import httpx

from adapter.api.server import api_server
from adapter.config import Settings
from tests.peers.launch import free_port

TOKEN = "test-token-0123456789abcdef"


def api_settings(base: Settings, tmp_path: Path, *, tokens: str | None = TOKEN) -> Settings:
    tokens_file = ""
    if tokens is not None:
        path = tmp_path / "tokens.txt"
        path.write_text(f"# API clients\n{tokens}\n")
        tokens_file = str(path)
    http = replace(base.http, listen_port=free_port(), tokens_file=tokens_file)
    return replace(base, http=http)


@contextmanager
def running_api(settings: Settings, out_dir: Path | None) -> Iterator[httpx.Client]:
    server = api_server(settings, out_dir)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "API did not start"
        time.sleep(0.05)
    base = f"http://127.0.0.1:{settings.http.listen_port}"
    client = httpx.Client(base_url=base, timeout=30, trust_env=False)
    try:
        yield client
    finally:
        client.close()
        server.should_exit = True
        thread.join(30)
