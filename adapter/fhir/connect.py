"""A :class:`FhirClient` from the ``fhir`` settings: base URL, auth, TLS, timeouts, pool size.

One process opens one client per FHIR server (``adapter.jobs.fhir.fhir_session``) and hands it to
every job that needs the server; this module only builds it.
"""

from __future__ import annotations

import os

import httpx

from adapter.config import FhirSettings
from adapter.errors import ConfigError
from adapter.fhir.auth import BearerToken, SmartBackendAuth
from adapter.fhir.client import FhirClient, Timeouts, TlsSettings


def fhir_client(
    fhir: FhirSettings, *, transport: httpx.AsyncBaseTransport | None = None
) -> FhirClient:
    """A client for ``fhir.base_url`` (not yet open: use it as an async context manager)."""
    auth: httpx.Auth | None = None
    if fhir.auth == "bearer":
        token = os.environ.get(fhir.token_env, "")
        if not token:
            raise ConfigError("fhir.token_env", f"environment variable {fhir.token_env} is empty")
        auth = BearerToken(token)
    elif fhir.auth == "smart":
        tls = TlsSettings(fhir.ca_bundle, fhir.client_cert, fhir.client_key)
        verify = tls.context() if fhir.token_url.startswith("https:") else True
        auth = SmartBackendAuth.from_key_file(
            fhir.private_key,
            token_url=fhir.token_url,
            client_id=fhir.client_id,
            key_id=fhir.key_id,
            algorithm=fhir.algorithm,
            scope=fhir.scope,
            verify=verify,
        )
    return FhirClient(
        base_url=fhir.base_url,
        auth=auth,
        timeouts=Timeouts(
            connect=fhir.connect_timeout, read=fhir.read_timeout, deadline=fhir.deadline
        ),
        tls=TlsSettings(fhir.ca_bundle, fhir.client_cert, fhir.client_key),
        transport=transport,
        max_connections=max(fhir.concurrency, 1),
    )
