"""Serve the API with uvicorn on the running event loop (one process with the other parts).

uvicorn's own access log is off: it prints request paths, and paths carry UIDs. The JSON-lines
access log of :class:`adapter.api.guards.Guard` logs route templates instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from adapter.api.app import Stats, create_app
from adapter.config import Settings
from adapter.tables import Tables

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient


def api_server(
    settings: Settings,
    out_dir: Path | None,
    *,
    tables: Tables | None = None,
    receiver_stats: Stats | None = None,
    port: int | None = None,
    fhir: FhirClient | None = None,
    deliver_soon: Callable[[list[int]], None] | None = None,
) -> uvicorn.Server:
    app = create_app(
        settings,
        out_dir,
        tables=tables,
        receiver_stats=receiver_stats,
        fhir=fhir,
        deliver_soon=deliver_soon,
    )
    config = uvicorn.Config(
        app,
        host=settings.http.listen_host,
        port=settings.http.listen_port if port is None else port,
        log_config=None,
        access_log=False,
        lifespan="on",
        server_header=False,
        timeout_graceful_shutdown=30,
    )
    return uvicorn.Server(config)


async def run_until(server: uvicorn.Server, stop: asyncio.Event) -> None:
    """Serve until ``stop``; requests in progress finish (uvicorn's graceful shutdown)."""
    task = asyncio.create_task(server.serve())
    waiter: Any = asyncio.create_task(stop.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    waiter.cancel()
    await task
