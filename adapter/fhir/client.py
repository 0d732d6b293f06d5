"""A small FHIR REST client on httpx: answers are values, "no answer" is an exception.

Every request has httpx's per-phase timeouts *and* an overall deadline, because a server that
drips one byte at a time never trips a per-read timeout. Third-party exceptions are translated
here, at the boundary, into the two kinds the delivery logic must tell apart:

- :class:`NotSent`: the request certainly did not reach the server (connect failure, pool
  timeout, TLS refused). Resending is always safe.
- :class:`NoAnswer`: the request may have been processed (read/write timeout, dropped
  connection, overall deadline). The outcome is unknown; reconcile before resending.

Neither URLs nor bodies are logged: both can carry patient identifiers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlencode

import httpx

from adapter.errors import NoAnswer, NotSent, TransportError

JSON = dict[str, Any]
FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True, slots=True)
class Timeouts:
    connect: float = 5.0
    read: float = 30.0
    write: float = 30.0
    pool: float = 5.0
    deadline: float = 60.0
    """Overall limit for one request, body included."""

    def httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)


@dataclass(frozen=True, slots=True)
class TlsSettings:
    ca_bundle: str = ""
    client_cert: str = ""
    client_key: str = ""

    def context(self) -> ssl.SSLContext:
        """Certificate verification always on, TLS 1.2 or later; never plaintext fallback."""
        context = ssl.create_default_context(cafile=self.ca_bundle or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.client_cert:
            context.load_cert_chain(self.client_cert, self.client_key or None)
        return context


@dataclass(frozen=True, slots=True)
class FhirResponse:
    status: int
    headers: Mapping[str, str]
    body: JSON | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def outcome(self) -> JSON | None:
        if self.body is not None and self.body.get("resourceType") == "OperationOutcome":
            return self.body
        return None


@dataclass(frozen=True, slots=True)
class Capabilities:
    fhir_version: str
    version: Literal["R4", "R5"]
    transactions: bool


@dataclass
class FhirClient:
    """One FHIR server. ``transport`` is the seam tests use (``httpx.MockTransport``)."""

    base_url: str
    auth: httpx.Auth | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    tls: TlsSettings = field(default_factory=TlsSettings)
    transport: httpx.AsyncBaseTransport | None = None
    max_connections: int = 8
    _client: httpx.AsyncClient | None = field(default=None, init=False, repr=False)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            verify: ssl.SSLContext | bool = True
            if self.base_url.startswith("https:"):
                verify = self.tls.context()
            self._client = httpx.AsyncClient(
                base_url=self.base_url.rstrip("/") + "/",
                auth=self.auth,
                timeout=self.timeouts.httpx(),
                verify=verify,
                transport=self.transport,
                limits=httpx.Limits(max_connections=self.max_connections),
                headers={"Accept": FHIR_JSON},
                follow_redirects=False,
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> FhirClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: JSON | None = None,
        params: Mapping[str, str] | None = None,
    ) -> FhirResponse:
        """Send one request; return the answer, whatever its status.

        Raises:
            NotSent: the request did not reach the server.
            NoAnswer: it may have; no complete answer within the deadline.
        """
        content = None
        headers = {}
        if json_body is not None:
            content = httpx_json(json_body)
            headers["Content-Type"] = FHIR_JSON
        with map_exceptions():
            async with asyncio.timeout(self.timeouts.deadline):
                response = await self._http().request(
                    method, path.lstrip("/"), content=content, params=params, headers=headers
                )
        return FhirResponse(response.status_code, dict(response.headers), _json(response))

    async def transaction(self, bundle: JSON) -> FhirResponse:
        return await self.request("POST", "", json_body=bundle)

    async def search_count(self, resource_type: str, params: Mapping[str, str]) -> FhirResponse:
        return await self.request("GET", resource_type, params={**params, "_summary": "count"})

    async def counts(self, searches: Sequence[tuple[str, Mapping[str, str]]]) -> list[int | None]:
        """How many resources match each search, in one ``batch`` request (one round trip
        instead of one per search). A count is None when its search failed. Falls back to one
        request per search if the server refuses the batch."""
        if not searches:
            return []
        entries = [
            {
                "request": {
                    "method": "GET",
                    "url": f"{kind}?{urlencode({**params, '_summary': 'count'})}",
                }
            }
            for kind, params in searches
        ]
        response = await self.request(
            "POST", "", json_body={"resourceType": "Bundle", "type": "batch", "entry": entries}
        )
        body = response.body or {}
        answers = body.get("entry", [])
        if response.ok and body.get("type") == "batch-response" and len(answers) == len(entries):
            return [_total(answer.get("resource")) for answer in answers]
        results = []
        for kind, params in searches:
            single = await self.search_count(kind, params)
            results.append(_total(single.body) if single.ok else None)
        return results

    async def capabilities(self) -> Capabilities:
        """Read ``/metadata``: the FHIR version to emit and whether transactions work."""
        response = await self.request("GET", "metadata")
        body = response.body or {}
        if not response.ok or body.get("resourceType") != "CapabilityStatement":
            raise TransportError(f"metadata: HTTP {response.status}, no CapabilityStatement")
        fhir_version = str(body.get("fhirVersion", ""))
        version: Literal["R4", "R5"] = "R5" if fhir_version.startswith("5.") else "R4"
        interactions = {
            i.get("code") for rest in body.get("rest", []) for i in rest.get("interaction", [])
        }
        return Capabilities(fhir_version, version, "transaction" in interactions)


def httpx_json(document: JSON) -> bytes:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _total(resource: object) -> int | None:
    if isinstance(resource, dict) and isinstance(resource.get("total"), int):
        return int(resource["total"])
    return None


def _json(response: httpx.Response) -> JSON | None:
    if not response.content:
        return None
    try:
        value = response.json()
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# Which httpx exceptions mean "not sent" and which mean "outcome unknown". Order matters:
# subclasses first. tests/unit/test_errors_mapped.py checks every httpx transport error is here.
NOT_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
    httpx.ProxyError,
    httpx.LocalProtocolError,
)
UNKNOWN: tuple[type[Exception], ...] = (
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.ReadError,
    httpx.WriteError,
    httpx.RemoteProtocolError,
    httpx.CloseError,
    httpx.NetworkError,
    httpx.TimeoutException,
    httpx.TransportError,
    TimeoutError,
    ssl.SSLError,
)


@contextlib.contextmanager
def map_exceptions() -> Iterator[None]:
    try:
        yield
    except NOT_SENT as exc:
        raise NotSent(f"not sent: {type(exc).__name__}") from exc
    except ssl.SSLCertVerificationError as exc:
        raise NotSent(f"TLS certificate refused: {exc.verify_message}") from exc
    except UNKNOWN as exc:
        raise NoAnswer(f"no answer: {type(exc).__name__}") from exc
