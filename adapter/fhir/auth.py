"""Authentication for the FHIR client: none, a static bearer token, or SMART Backend Services.

SMART Backend Services (client_credentials with a ``private_key_jwt`` assertion): the client
signs a short-lived JWT (RS384 or ES384, with ``kid`` and a unique ``jti``; expiry at most five
minutes) and trades it at the token endpoint for an access token. Tokens are cached until
shortly before they expire; a 401 from the FHIR server triggers exactly one refresh and one
resend, then the 401 stands (and is handled as a rejection).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jwt

from adapter.config import check_key_file
from adapter.errors import ConfigError, NotSent, TransportError


class AuthRefused(TransportError):
    """The token endpoint answered and refused us (e.g. ``invalid_client``): not retried."""


ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = ("RS384", "ES384")
ASSERTION_LIFETIME = 240  # seconds; SMART allows at most 300
REFRESH_MARGIN = 30  # seconds before expiry a cached token is replaced


class BearerToken(httpx.Auth):
    """A static token (e.g. from an environment variable)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


@dataclass
class SmartBackendAuth(httpx.Auth):
    token_url: str
    client_id: str
    private_key_pem: bytes
    key_id: str
    algorithm: str = "RS384"
    scope: str = "system/*.rs system/*.cu"
    verify: object = True
    clock: Callable[[], float] = time.time
    _token: str = field(default="", init=False, repr=False)
    _expires_at: float = field(default=0.0, init=False, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError("fhir.auth_algorithm", f"must be one of {', '.join(ALGORITHMS)}")

    @classmethod
    def from_key_file(cls, path: str, **kwargs: object) -> SmartBackendAuth:
        check_key_file(path)
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError("fhir.private_key", f"cannot read the key file: {exc}") from exc
        return cls(private_key_pem=pem, **kwargs)  # type: ignore[arg-type]

    def assertion(self) -> str:
        """A fresh signed client assertion (each has a new ``jti``)."""
        now = int(self.clock())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
            "jti": uuid.uuid4().hex,
        }
        headers = {"kid": self.key_id, "typ": "JWT"}
        return jwt.encode(claims, self.private_key_pem, algorithm=self.algorithm, headers=headers)

    async def token(self, *, force: bool = False) -> str:
        async with self._lock:
            if force or not self._token or self.clock() >= self._expires_at - REFRESH_MARGIN:
                await self._fetch()
            return self._token

    async def _fetch(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.assertion(),
        }
        async with httpx.AsyncClient(verify=self.verify, timeout=30.0) as client:  # type: ignore[arg-type]
            try:
                response = await client.post(self.token_url, data=form)
            except httpx.HTTPError as exc:
                raise NotSent(f"token endpoint: {type(exc).__name__}") from exc
        if response.status_code != 200:
            error = _error_code(response)
            raise AuthRefused(f"token endpoint refused: HTTP {response.status_code} {error}")
        body = response.json()
        self._token = str(body["access_token"])
        self._expires_at = self.clock() + float(body.get("expires_in", 300))

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = f"Bearer {await self.token()}"
        response = yield request
        if response.status_code == 401:
            # One refresh and one resend, then the 401 stands.
            await response.aread()
            request.headers["Authorization"] = f"Bearer {await self.token(force=True)}"
            yield request


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error", ""))
    except ValueError:
        return ""
