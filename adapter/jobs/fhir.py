"""The process's one FHIR client, and what the jobs learn from the server before they start.

A command or ``rtplan serve`` opens :func:`fhir_session` once, inside its one event loop, and
passes the client to every job (capabilities, the prior-imaging check, review context,
delivery). httpx pools connections per client, so one client also means one connection pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

from adapter.config import Settings
from adapter.errors import ConfigError

if TYPE_CHECKING:
    import httpx

    from adapter.fhir.client import Capabilities, FhirClient


@asynccontextmanager
async def fhir_session(
    settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[FhirClient | None]:
    """The client for ``fhir.base_url``, closed on exit; None on the embedded default."""
    if not settings.fhir.base_url:
        yield None
        return
    # Downward and lazy for start-up time only: httpx, PyJWT, cryptography.
    from adapter.fhir.connect import fhir_client

    async with fhir_client(settings.fhir, transport=transport) as client:
        yield client


async def read_capabilities(client: FhirClient) -> Capabilities:
    """The server's CapabilityStatement, read through the process's client."""
    return await client.capabilities()


async def resolve_version(settings: Settings, client: FhirClient | None) -> Settings:
    """Settings with ``fhir.version: auto`` resolved from the server's CapabilityStatement.

    Raises:
        ConfigError: the server does not support transactions.
    """
    if client is None or settings.fhir.version != "auto":
        return settings
    capabilities = await read_capabilities(client)
    if not capabilities.transactions:
        raise ConfigError("fhir.base_url", "the server does not support transactions")
    return replace(settings, fhir=replace(settings.fhir, version=capabilities.version))
