"""A fault-injecting FHIR R4 peer for tests: the failures a real server cannot be made to do.

``FaultServer`` is a real HTTP(S) server on ``127.0.0.1`` (ephemeral port, background threads)
with a tiny in-memory FHIR store, a SMART Backend Services token endpoint, and a FIFO script of
per-request faults (reliability.md §2, §3.1 and §6 rows 15-25)::

    with FaultServer() as srv:
        srv.script(status(503, {"Retry-After": "2"}), method="POST", path="/fhir")
        srv.script(commit_then_status(502), method="POST")
        ...  # drive the client at srv.base_url
        assert srv.count("ImagingStudy") == 1
        assert [r.status for r in srv.requests] == [503, 502, 200]

Store behaviour (enough for the adapter's delivery path):

* ``GET /fhir/metadata``: CapabilityStatement (R4 4.0.1, transaction, conditional create/update).
* ``POST /fhir`` with a ``transaction`` (all-or-nothing) or ``batch`` Bundle. Entries run in the
  order DELETE, POST, PUT, GET. ``POST Type`` (+ ``ifNoneExist``), ``PUT Type?identifier=s|v``
  (0 matches: create 201, 1: update 200, >1: 412), ``PUT Type/id`` (+ ``ifMatch``),
  ``DELETE``, ``GET``. ``urn:uuid`` fullUrls and conditional references (``Patient?identifier=``)
  in resources are rewritten to ``Type/id`` (0 matches: 400, >1: 412, failing the transaction).
  The response is a ``transaction-response`` Bundle with ``response.status`` ("201 Created"),
  ``location`` (``Type/id/_history/v``), ``etag`` (``W/"v"``) and ``lastModified``.
* ``POST /fhir/Type`` (``If-None-Exist``), ``PUT /fhir/Type?identifier=`` / ``PUT /fhir/Type/id``
  (``If-Match``), ``DELETE``, ``GET /fhir/Type/id``.
* ``GET /fhir/Type?identifier=s|v`` (also ``_id``, ``_summary=count``, ``_count``): searchset
  Bundle with ``total``.

A request with no scripted action gets the normal behaviour. Scripted actions are matched on
method and path prefix, first match in FIFO order, one request each. With ``require_bearer``,
authentication is checked *before* the script: an unauthenticated request gets 401 and does not
consume a scripted action. ``/fhir/metadata`` and ``/fhir/.well-known/smart-configuration``
never need a token.

Only the standard library, PyJWT and cryptography are used (trustme objects are duck-typed).
"""

from __future__ import annotations

import contextlib
import copy
import email.utils
import itertools
import json
import math
import re
import secrets
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

JSON = dict[str, Any]

FHIR_JSON = "application/fhir+json; charset=utf-8"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALLOWED_ASSERTION_ALGS = frozenset({"RS384", "ES384"})
MAX_ASSERTION_LIFETIME_S = 300

__all__ = [
    "Action",
    "AssertionRecord",
    "FaultServer",
    "FhirError",
    "RecordedRequest",
    "RequestLog",
    "commit_then_drop",
    "commit_then_hang",
    "commit_then_status",
    "delay",
    "drop",
    "hapi_0550",
    "http_date",
    "make_assertion",
    "make_client_keys",
    "multiple_matches",
    "operation_outcome",
    "race",
    "slow_drip",
    "status",
]


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def operation_outcome(diagnostics: str, code: str = "processing", severity: str = "error") -> JSON:
    """An OperationOutcome with one issue."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def http_date(seconds_from_now: float) -> str:
    """An IMF-fixdate (RFC 9110 §5.6.7) ``seconds_from_now`` ahead, for ``Retry-After``."""
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


def _now_instant() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _status_text(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def _to_bytes(body: bytes | str | JSON | None) -> bytes:
    if body is None:
        return b""
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()
    return json.dumps(body).encode()


class FhirError(Exception):
    """Fails a request (or a whole transaction) with an HTTP status and an OperationOutcome."""

    def __init__(self, status: int, diagnostics: str, code: str = "processing") -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code

    def outcome(self) -> JSON:
        return operation_outcome(self.diagnostics, self.code)


# --------------------------------------------------------------------------------------------
# Scripted actions
# --------------------------------------------------------------------------------------------


@dataclass
class Action:
    """One scripted behaviour for one matching request.

    ``kind`` is one of: status, commit_then_status, commit_then_hang, commit_then_drop, drop,
    delay, slow_drip, race. ``method``/``path`` restrict which request consumes it (None = any;
    ``path`` is a prefix of the request path, e.g. ``/fhir``, ``/fhir/ImagingStudy``, ``/token``).
    """

    kind: str
    code: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | str | JSON | None = None
    seconds: float | None = None
    method: str | None = None
    path: str | None = None

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        return self.path is None or path.startswith(self.path)


def status(
    code: int,
    headers: dict[str, str] | None = None,
    body: bytes | str | JSON | None = None,
    *,
    method: str | None = None,
    path: str | None = None,
) -> Action:
    """Answer ``code`` without touching the store. ``body=None`` with ``code >= 400`` sends a
    default OperationOutcome; a dict is sent as JSON."""
    return Action("status", code, dict(headers or {}), body, method=method, path=path)


def commit_then_status(
    code: int = 502,
    headers: dict[str, str] | None = None,
    body: bytes | str | JSON | None = None,
    *,
    method: str | None = None,
    path: str | None = None,
) -> Action:
    """Process the request normally (the transaction IS committed), then answer ``code``."""
    return Action("commit_then_status", code, dict(headers or {}), body, method=method, path=path)


def commit_then_hang(
    seconds: float | None = None, *, method: str | None = None, path: str | None = None
) -> Action:
    """Process normally (commit), then wait ``seconds`` before sending the normal answer
    (``None``: never answer; the connection is closed when the server stops)."""
    return Action("commit_then_hang", seconds=seconds, method=method, path=path)


def commit_then_drop(*, method: str | None = None, path: str | None = None) -> Action:
    """Process normally (commit), then close the connection without any response."""
    return Action("commit_then_drop", method=method, path=path)


def drop(*, method: str | None = None, path: str | None = None) -> Action:
    """Close the connection without a response and without touching the store."""
    return Action("drop", method=method, path=path)


def delay(seconds: float, *, method: str | None = None, path: str | None = None) -> Action:
    """Wait ``seconds``, then behave normally (the store is changed after the wait)."""
    return Action("delay", seconds=seconds, method=method, path=path)


def slow_drip(
    byte_interval_s: float,
    body: bytes | str | JSON | None = None,
    *,
    code: int = 200,
    headers: dict[str, str] | None = None,
    method: str | None = None,
    path: str | None = None,
) -> Action:
    """Send the status line and headers at once, then the body one byte at a time, sleeping
    ``byte_interval_s`` before each byte (total >= interval x len(body)). With ``body`` the
    store is not touched; with ``body=None`` the request is processed normally and its real
    answer is dripped."""
    return Action(
        "slow_drip", code, dict(headers or {}), body, byte_interval_s, method=method, path=path
    )


def race(window_s: float = 0.2, *, method: str | None = None, path: str | None = None) -> Action:
    """Process normally but with a search -> sleep(window_s) -> insert gap in every conditional
    operation, outside any lock and without transaction isolation (HAPI #3141). Concurrent
    conditional creates of one identifier then make duplicates unless the client serialises."""
    return Action("race", seconds=window_s, method=method, path=path)


# The shape of the H2 message reported in hapi-fhir #6815 (PostgreSQL words it differently).
HAPI_0550_DIAGNOSTICS = (
    "HAPI-0550: could not execute batch [Unique index or primary key violation: "
    '"PUBLIC.PRIMARY_KEY_38 ON PUBLIC.HFJ_RES_SEARCH_URL(RES_SEARCH_URL, PARTITION_ID) '
    "VALUES ( /* key:1 */ '{url}', -1)\"; SQL statement:\n"
    "insert into hfj_res_search_url (created_time,partition_date,res_id,res_search_url,"
    "partition_id) values (?,?,?,?,?) [23505-232]]"
)


def hapi_0550(
    url: str = "ImagingStudy?identifier=urn:dicom:uid|urn:oid:1.2.3",
    code: int = 409,
    *,
    method: str | None = None,
    path: str | None = None,
) -> Action:
    """HAPI's unique-violation on the conditional-URL table when a bundle with conditional ops
    is re-submitted (hapi-fhir #6815, starter #826). HAPI raises it as
    ``ResourceVersionConflictException`` (``Msg.code(550)`` in ``HapiTransactionService``),
    i.e. HTTP 409; the store is not changed (HAPI rolled the transaction back)."""
    body = operation_outcome(HAPI_0550_DIAGNOSTICS.format(url=url), code="processing")
    return Action("status", code, {}, body, method=method, path=path)


def multiple_matches(
    url: str = "ImagingStudy?identifier=urn:dicom:uid|urn:oid:1.2.3",
    *,
    method: str | None = None,
    path: str | None = None,
) -> Action:
    """412 with an OperationOutcome saying the conditional URL matched more than one resource."""
    body = operation_outcome(
        f'Failed to UPDATE resource with match URL "{url}" because this search matched 2 resources',
        code="processing",
    )
    return Action("status", 412, {}, body, method=method, path=path)


# --------------------------------------------------------------------------------------------
# Request log
# --------------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One received request. ``headers`` keys are lower-case. ``time`` is time.monotonic() when
    the request head was received. ``status``/``action`` are filled in when answered (status
    None: no response was sent, e.g. drop/hang)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    time: float
    status: int | None = None
    action: str | None = None

    @property
    def params(self) -> list[tuple[str, str]]:
        return parse_qsl(self.query, keep_blank_values=True)

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode(), keep_blank_values=True))


class RequestLog:
    """Thread-safe, append-only log of received requests (a snapshot is taken on read)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[RecordedRequest] = []

    def append(self, item: RecordedRequest) -> None:
        with self._lock:
            self._items.append(item)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def snapshot(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._items)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __iter__(self) -> Iterator[RecordedRequest]:
        return iter(self.snapshot())

    def __getitem__(self, index: int) -> RecordedRequest:
        with self._lock:
            return self._items[index]

    def filter(self, method: str | None = None, path: str | None = None) -> list[RecordedRequest]:
        """Requests with this method (any if None) whose path starts with ``path``."""
        return [
            r
            for r in self.snapshot()
            if (method is None or r.method == method.upper())
            and (path is None or r.path.startswith(path))
        ]

    def gaps(self, method: str | None = None, path: str | None = None) -> list[float]:
        """Seconds between consecutive matching requests (for Retry-After/backoff asserts)."""
        times = [r.time for r in self.filter(method, path)]
        return [b - a for a, b in itertools.pairwise(times)]


# --------------------------------------------------------------------------------------------
# The in-memory store and FHIR processing
# --------------------------------------------------------------------------------------------


def _split_url(url: str) -> tuple[str, str | None, list[tuple[str, str]] | None]:
    """``Type``, ``Type/id``, ``Type?query`` (relative) -> (type, id, params or None)."""
    path, sep, query = url.partition("?")
    parts = [p for p in path.split("/") if p]
    if not parts or not re.fullmatch(r"[A-Z][A-Za-z]+", parts[0]):
        raise FhirError(400, f"Invalid request URL {url!r}", "invalid")
    rid = parts[1] if len(parts) > 1 else None
    params = parse_qsl(query, keep_blank_values=True) if sep else None
    return parts[0], rid, params


def _token_match(resource: JSON, token: str) -> bool:
    system, bar, value = token.partition("|")
    for ident in resource.get("identifier") or []:
        if not isinstance(ident, dict):
            continue
        if not bar:  # "value": any system
            if ident.get("value") == token:
                return True
        elif system == "":  # "|value": no system
            if "system" not in ident and ident.get("value") == value:
                return True
        elif value == "":  # "system|": any value
            if ident.get("system") == system:
                return True
        elif ident.get("system") == system and ident.get("value") == value:
            return True
    return False


_RESULT_PARAMS = frozenset({"_summary", "_count", "_format", "_total", "_elements", "_pretty"})


def _search(table: dict[str, JSON], params: list[tuple[str, str]]) -> list[str]:
    ids = list(table)
    for name, raw in params:
        if name in _RESULT_PARAMS:
            continue
        alternatives = raw.split(",")
        if name == "identifier":
            ids = [i for i in ids if any(_token_match(table[i], t) for t in alternatives)]
        elif name == "_id":
            ids = [i for i in ids if i in alternatives]
        else:
            raise FhirError(400, f"Unknown search parameter {name!r}", "not-supported")
    return ids


@dataclass
class _EntryResult:
    status: int
    rtype: str | None = None
    rid: str | None = None
    resource: JSON | None = None  # the stored/returned resource (for representation)
    body: JSON | None = None  # a non-resource body (search Bundle / OperationOutcome)
    read: bool = False  # a GET of one resource: the resource is the answer

    def location(self) -> str | None:
        if self.rtype and self.rid and self.resource is not None:
            version = self.resource.get("meta", {}).get("versionId")
            if version:
                return f"{self.rtype}/{self.rid}/_history/{version}"
        return None

    def etag(self) -> str | None:
        if self.resource is not None and "versionId" in self.resource.get("meta", {}):
            return f'W/"{self.resource["meta"]["versionId"]}"'
        return None


class _View:
    """Store operations over either a private working copy (atomic transactions) or the live
    store with a lock per operation (race mode)."""

    def __init__(
        self,
        data: dict[str, dict[str, JSON]],
        lock: threading.RLock,
        new_id: Callable[[], str],
        race_window: float | None,
        stopping: threading.Event,
    ) -> None:
        self.data = data
        self.lock = lock
        self.new_id = new_id
        self.race_window = race_window
        self.stopping = stopping

    def search(self, rtype: str, params: list[tuple[str, str]]) -> list[str]:
        with self.lock:
            return _search(self.data.get(rtype, {}), params)

    def conditional_search(self, rtype: str, params: list[tuple[str, str]]) -> list[str]:
        ids = self.search(rtype, params)
        if self.race_window:
            self.stopping.wait(self.race_window)  # the deliberate check-then-act window
        return ids

    def get(self, rtype: str, rid: str) -> JSON | None:
        with self.lock:
            return self.data.get(rtype, {}).get(rid)

    def put(self, rtype: str, rid: str, resource: JSON) -> JSON:
        with self.lock:
            table = self.data.setdefault(rtype, {})
            old = table.get(rid)
            version = int(old["meta"]["versionId"]) + 1 if old else 1
            stored = copy.deepcopy(resource)
            stored["resourceType"] = rtype
            stored["id"] = rid
            stored["meta"] = {
                **(stored.get("meta") or {}),
                "versionId": str(version),
                "lastUpdated": _now_instant(),
            }
            table[rid] = stored
            return stored

    def delete(self, rtype: str, rid: str) -> bool:
        with self.lock:
            return self.data.get(rtype, {}).pop(rid, None) is not None


_METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "GET": 3, "HEAD": 3}
_CONDITIONAL_REF = re.compile(r"^([A-Z][A-Za-z]+)\?(.+)$")


class _Processor:
    """Runs Bundle entries against a _View."""

    def __init__(self, view: _View, base_url: str) -> None:
        self.view = view
        self.base_url = base_url
        self.fullurls: dict[str, str] = {}
        self.written: list[tuple[str, str]] = []

    def _parse_condition(self, rtype: str, condition: str) -> list[tuple[str, str]]:
        if "?" in condition:
            ctype, _, condition = condition.partition("?")
            if ctype.rstrip("/").rsplit("/", 1)[-1] != rtype:
                raise FhirError(400, f"Condition {condition!r} is for another type", "invalid")
        return parse_qsl(condition.lstrip("?"), keep_blank_values=True)

    def run(self, entry: JSON) -> _EntryResult:
        request = entry.get("request")
        if not isinstance(request, dict) or "method" not in request or "url" not in request:
            raise FhirError(400, "Bundle entry without request.method/request.url", "invalid")
        method = str(request["method"]).upper()
        url = str(request["url"])
        if url.startswith(self.base_url):
            url = url[len(self.base_url) :]
        rtype, rid, params = _split_url(url)
        full_url = entry.get("fullUrl")
        resource = entry.get("resource")
        if method in ("POST", "PUT") and (
            not isinstance(resource, dict) or resource.get("resourceType") != rtype
        ):
            raise FhirError(400, f"{method} {rtype}: resource missing or of another type")
        if method == "POST":
            assert isinstance(resource, dict)
            if rid is not None:
                raise FhirError(400, "POST to an instance URL", "invalid")
            if_none_exist = request.get("ifNoneExist")
            if if_none_exist:
                cond = self._parse_condition(rtype, str(if_none_exist))
                matches = self.view.conditional_search(rtype, cond)
                if len(matches) > 1:
                    raise FhirError(
                        412,
                        f'Failed to CREATE resource with match URL "{if_none_exist}" because '
                        f"this search matched {len(matches)} resources",
                    )
                if matches:
                    existing = self.view.get(rtype, matches[0])
                    self._map(full_url, rtype, matches[0])
                    return _EntryResult(200, rtype, matches[0], existing)
            new_id = self.view.new_id()
            stored = self.view.put(rtype, new_id, resource)
            self._wrote(full_url, rtype, new_id)
            return _EntryResult(201, rtype, new_id, stored)
        if method == "PUT":
            assert isinstance(resource, dict)
            if rid is None and params is None:
                raise FhirError(400, "PUT needs Type/id or Type?search", "invalid")
            if rid is None:
                assert params is not None
                matches = self.view.conditional_search(rtype, params)
                if len(matches) > 1:
                    raise FhirError(
                        412,
                        f'Failed to UPDATE resource with match URL "{url}" because this search '
                        f"matched {len(matches)} resources",
                    )
                target = matches[0] if matches else self.view.new_id()
            else:
                target = rid
            existing = self.view.get(rtype, target)
            if_match = request.get("ifMatch")
            if if_match:
                current = existing["meta"]["versionId"] if existing else None
                wanted = re.sub(r"^W/", "", str(if_match).strip()).strip('"')
                if current != wanted:
                    raise FhirError(
                        412, f"If-Match {if_match} does not match current version {current}"
                    )
            stored = self.view.put(rtype, target, resource)
            self._wrote(full_url, rtype, target)
            return _EntryResult(200 if existing else 201, rtype, target, stored)
        if method == "DELETE":
            if rid is not None:
                targets = [rid]
            elif params is not None:
                targets = self.view.conditional_search(rtype, params)
                if len(targets) > 1:
                    raise FhirError(412, f"Conditional delete {url!r} matched {len(targets)}")
            else:
                raise FhirError(400, "DELETE needs Type/id or Type?search", "invalid")
            for target in targets:
                self.view.delete(rtype, target)
            return _EntryResult(204)
        if method in ("GET", "HEAD"):
            if rid is not None:
                found = self.view.get(rtype, rid)
                if found is None:
                    raise FhirError(404, f"Resource {rtype}/{rid} is not known", "not-found")
                return _EntryResult(200, rtype, rid, copy.deepcopy(found), read=True)
            return _EntryResult(200, body=self.searchset(rtype, params or []))
        raise FhirError(405, f"Method {method} not supported", "not-supported")

    def searchset(self, rtype: str, params: list[tuple[str, str]]) -> JSON:
        ids = self.view.search(rtype, params)
        summary = dict(params).get("_summary")
        count = dict(params).get("_count")
        bundle: JSON = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "searchset",
            "total": len(ids),
            "link": [{"relation": "self", "url": f"{self.base_url}/{rtype}"}],
        }
        if summary != "count" and count != "0":
            limit = int(count) if count and count.isdigit() else len(ids)
            entries = []
            for rid in ids[:limit]:
                found = self.view.get(rtype, rid)
                if found is not None:
                    entries.append(
                        {
                            "fullUrl": f"{self.base_url}/{rtype}/{rid}",
                            "resource": copy.deepcopy(found),
                            "search": {"mode": "match"},
                        }
                    )
            bundle["entry"] = entries
        return bundle

    def _map(self, full_url: Any, rtype: str, rid: str) -> None:
        if isinstance(full_url, str) and full_url:
            self.fullurls[full_url] = f"{rtype}/{rid}"

    def _wrote(self, full_url: Any, rtype: str, rid: str) -> None:
        self._map(full_url, rtype, rid)
        self.written.append((rtype, rid))

    def rewrite_references(self) -> None:
        """Replace fullUrl and conditional references in every written resource."""

        def fix(node: Any) -> None:
            if isinstance(node, dict):
                for key, value in node.items():
                    if key == "reference" and isinstance(value, str):
                        node[key] = self._resolve(value)
                    else:
                        fix(value)
            elif isinstance(node, list):
                for item in node:
                    fix(item)

        for rtype, rid in self.written:
            with self.view.lock:
                stored = self.view.data.get(rtype, {}).get(rid)
                if stored is not None:
                    fix(stored)

    def _resolve(self, reference: str) -> str:
        if reference in self.fullurls:
            return self.fullurls[reference]
        match = _CONDITIONAL_REF.match(reference)
        if match:
            rtype = match.group(1)
            ids = self.view.search(rtype, parse_qsl(match.group(2), keep_blank_values=True))
            if not ids:
                raise FhirError(
                    400, f"Invalid match URL {reference!r} - No resources match this search"
                )
            if len(ids) > 1:
                raise FhirError(
                    412, f"Invalid match URL {reference!r} - Multiple resources match this search"
                )
            return f"{rtype}/{ids[0]}"
        return reference


class _Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.data: dict[str, dict[str, JSON]] = {}
        self._ids = itertools.count(1)

    def new_id(self) -> str:
        with self.lock:
            return str(next(self._ids))

    def clear(self) -> None:
        with self.lock:
            self.data.clear()

    def commit(self, work: dict[str, dict[str, JSON]]) -> None:
        with self.lock:
            for rtype, table in work.items():
                target = self.data.setdefault(rtype, {})
                target.clear()
                target.update(table)


# --------------------------------------------------------------------------------------------
# SMART Backend Services token endpoint
# --------------------------------------------------------------------------------------------


@dataclass
class AssertionRecord:
    """One client assertion received at /token (header and claims decoded WITHOUT verifying)."""

    header: JSON
    claims: JSON
    accepted: bool
    error: str | None
    form: dict[str, str]
    time: float


@dataclass
class _Client:
    client_id: str
    jwks: JSON
    jku: str | None
    scopes: frozenset[str] | None


@dataclass
class _Token:
    client_id: str
    scope: str
    expires_at: float  # monotonic


class _TokenError(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


def make_client_keys(alg: str = "RS384", kid: str = "k1") -> tuple[bytes, JSON]:
    """A fresh key pair for a test client: (PKCS#8 PEM private key, JWKS with the public key).

    ``alg`` is RS384 (RSA 2048) or ES384 (P-384).
    """
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if alg == "RS384":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True)
    elif alg == "ES384":
        private = ec.generate_private_key(ec.SECP384R1())
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
    else:
        raise ValueError(f"unsupported alg {alg!r} (RS384 or ES384)")
    jwk.update({"kid": kid, "alg": alg, "use": "sig", "key_ops": ["verify"]})
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, {"keys": [jwk]}


def make_assertion(
    private_key_pem: bytes,
    *,
    client_id: str,
    token_url: str,
    alg: str = "RS384",
    kid: str | None = "k1",
    lifetime_s: int = 300,
    jti: str | None = None,
    now: float | None = None,
    headers: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
) -> str:
    """A SMART client assertion signed with PyJWT. ``headers``/``claims`` override or (with a
    None value) remove fields, for negative tests."""
    issued = int(time.time() if now is None else now)
    body: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "iat": issued,
        "exp": issued + lifetime_s,
        "jti": jti or str(uuid.uuid4()),
    }
    for key, value in (claims or {}).items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    head: dict[str, Any] = {"typ": "JWT"}
    if kid is not None:
        head["kid"] = kid
    head.update(headers or {})  # PyJWT drops a header whose value is None (e.g. typ)
    # For HS* (negative tests) ``private_key_pem`` is used as the shared secret.
    return jwt.encode(body, private_key_pem, algorithm=alg, headers=head)


# --------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------


@dataclass
class _Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class _Drop(Exception):
    """Close the connection without a response."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, owner: FaultServer, tls: ssl.SSLContext | None) -> None:
        self.owner = owner
        self.tls = tls
        self.conns: set[socket.socket] = set()
        self.conns_lock = threading.Lock()
        self.accepted = 0  # TCP connections accepted since start
        self.errors: list[BaseException] = []
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.conns_lock:
            self.conns.add(request)
            self.accepted += 1
        super().process_request(request, client_address)

    def finish_request(self, request: Any, client_address: Any) -> None:
        conn = request
        try:
            if self.tls is not None:
                request.settimeout(10)
                try:
                    conn = self.tls.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError) as exc:
                    self.errors.append(exc)
                    return
                with self.conns_lock:
                    self.conns.discard(request)
                    self.conns.add(conn)
            super().finish_request(conn, client_address)
        finally:
            if conn is not request:
                with self.conns_lock:
                    self.conns.discard(conn)
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                conn.close()

    def shutdown_request(self, request: Any) -> None:
        with self.conns_lock:
            self.conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if exc is not None:
            self.errors.append(exc)

    def kill_connections(self) -> None:
        with self.conns_lock:
            conns = list(self.conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fault-fhir/1.0"
    timeout = 30  # idle keep-alive connections
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _handle(self) -> None:
        received = time.monotonic()
        body = self._read_body()
        parts = urlsplit(self.path)
        record = RecordedRequest(
            method=self.command,
            path=parts.path,
            query=parts.query,
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
            time=received,
        )
        owner = self.server.owner
        owner.requests.append(record)
        try:
            owner._dispatch(self, record)
        except _Drop:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, TimeoutError):
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle  # noqa: N815

    def send(self, record: RecordedRequest, response: _Response) -> None:
        self._head(record, response, len(response.body))
        if self.command != "HEAD":
            self.wfile.write(response.body)
        self.wfile.flush()

    def _head(self, record: RecordedRequest, response: _Response, length: int) -> None:
        self.send_response(response.status)
        headers = {k.lower(): (k, v) for k, v in response.headers.items()}
        if response.body and "content-type" not in headers:
            self.send_header("Content-Type", FHIR_JSON)
        for name, value in headers.values():
            if name.lower() != "content-length":
                self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        record.status = response.status

    def drip(
        self, record: RecordedRequest, response: _Response, interval: float, stop: threading.Event
    ) -> None:
        self._head(record, response, len(response.body))
        self.wfile.flush()
        for i in range(len(response.body)):
            if stop.wait(interval):
                raise _Drop
            self.wfile.write(response.body[i : i + 1])
            self.wfile.flush()


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class FaultServer:
    """A scriptable FHIR R4 server + SMART token endpoint on 127.0.0.1 (see module doc).

    Args:
        tls: serve HTTPS. An ``ssl.SSLContext`` (server side), a ``trustme.LeafCert`` or a
            ``trustme.CA`` (a cert for 127.0.0.1/localhost is issued).
        require_bearer: /fhir requests need ``Authorization: Bearer <token from /token>``.
        token_ttl_s: lifetime of issued access tokens (settable later, e.g. 2 s).
        race_window_s: if set, EVERY request runs in race mode (see ``race()``).
        url_host: host name put in ``base_url``/``token_url`` (the socket is always 127.0.0.1).
    """

    def __init__(
        self,
        *,
        tls: Any = None,
        require_bearer: bool = False,
        token_ttl_s: float = 300.0,
        race_window_s: float | None = None,
        url_host: str = "127.0.0.1",
    ) -> None:
        self.tls_context = _server_context(tls)
        self.require_bearer = require_bearer
        self.token_ttl_s = token_ttl_s
        self.race_window_s = race_window_s
        self.url_host = url_host
        self.requests = RequestLog()
        self.assertions: list[AssertionRecord] = []
        self._store = _Store()
        self._script: list[Action] = []
        self._script_lock = threading.Lock()
        self._clients: dict[str, _Client] = {}
        self._tokens: dict[str, _Token] = {}
        self._seen_jti: dict[tuple[str, str], float] = {}
        self._auth_lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> FaultServer:
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _HTTPServer(self, self.tls_context)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"fault-fhir:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, wake hung handlers, close every connection and join all threads."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()
        httpd.shutdown()
        httpd.kill_connections()
        httpd.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def scheme(self) -> str:
        return "https" if self.tls_context is not None else "http"

    @property
    def origin(self) -> str:
        return f"{self.scheme}://{self.url_host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.origin}/fhir"

    @property
    def token_url(self) -> str:
        return f"{self.origin}/token"

    @property
    def connections_accepted(self) -> int:
        """TCP connections accepted since start: one pooled client with one connection slot
        makes one, however many requests it sends."""
        return self._httpd.accepted if self._httpd else 0

    @property
    def errors(self) -> list[BaseException]:
        """Exceptions swallowed by the server threads (TLS handshake failures etc.)."""
        return list(self._httpd.errors) if self._httpd else []

    # ---- script -----------------------------------------------------------------------------

    def script(self, *actions: Action, method: str | None = None, path: str | None = None) -> None:
        """Queue actions (FIFO). ``method``/``path`` apply to actions that do not set their own."""
        with self._script_lock:
            for action in actions:
                queued = copy.copy(action)
                if queued.method is None:
                    queued.method = method
                if queued.path is None:
                    queued.path = path
                self._script.append(queued)

    def pending(self) -> list[Action]:
        """Scripted actions not yet consumed."""
        with self._script_lock:
            return list(self._script)

    def clear_script(self) -> None:
        with self._script_lock:
            self._script.clear()

    def _pop_action(self, method: str, path: str) -> Action | None:
        with self._script_lock:
            for i, action in enumerate(self._script):
                if action.matches(method, path):
                    return self._script.pop(i)
        return None

    # ---- store ------------------------------------------------------------------------------

    @property
    def resources(self) -> dict[str, dict[str, JSON]]:
        """The live store: ``{resourceType: {id: resource}}``."""
        return self._store.data

    def count(self, rtype: str, identifier: str | None = None) -> int:
        """How many resources of ``rtype`` (matching ``identifier`` = ``system|value``)."""
        params = [("identifier", identifier)] if identifier else []
        with self._store.lock:
            return len(_search(self._store.data.get(rtype, {}), params))

    def find(self, rtype: str, identifier: str) -> list[JSON]:
        with self._store.lock:
            table = self._store.data.get(rtype, {})
            return [copy.deepcopy(table[i]) for i in _search(table, [("identifier", identifier)])]

    def seed(self, resource: JSON, rid: str | None = None) -> JSON:
        """Put a resource straight into the store (e.g. two duplicates to provoke 412)."""
        view = self._view(None, self._store.data)
        return view.put(resource["resourceType"], rid or self._store.new_id(), resource)

    def reset(self) -> None:
        """Forget resources, script, request log, assertions, seen jti and tokens (registered
        clients and settings are kept)."""
        self._store.clear()
        self.clear_script()
        self.requests.clear()
        with self._auth_lock:
            self.assertions.clear()
            self._seen_jti.clear()
            self._tokens.clear()

    # ---- auth -------------------------------------------------------------------------------

    def register_client(
        self,
        client_id: str,
        jwks: JSON,
        *,
        jku: str | None = None,
        scopes: list[str] | None = None,
    ) -> None:
        """Register a backend client's public JWKS (and optionally its jku and allowed scopes)."""
        with self._auth_lock:
            self._clients[client_id] = _Client(
                client_id, copy.deepcopy(jwks), jku, frozenset(scopes) if scopes else None
            )

    def issue_token(self, client_id: str = "test", scope: str = "system/*.*") -> str:
        """Mint a valid access token directly (bypassing /token)."""
        token = secrets.token_urlsafe(24)
        with self._auth_lock:
            self._tokens[token] = _Token(client_id, scope, time.monotonic() + self.token_ttl_s)
        return token

    def expire_tokens(self) -> None:
        """Make every issued access token expired now."""
        with self._auth_lock:
            for tok in self._tokens.values():
                tok.expires_at = 0.0

    def _token_valid(self, header: str | None) -> tuple[bool, str]:
        if not header or not header.lower().startswith("bearer "):
            return False, "missing bearer token"
        value = header[7:].strip()
        with self._auth_lock:
            tok = self._tokens.get(value)
        if tok is None:
            return False, "unknown token"
        if time.monotonic() >= tok.expires_at:
            return False, "token expired"
        return True, ""

    def _token_endpoint(self, record: RecordedRequest) -> _Response:
        form = record.form() if record.method == "POST" else {}
        header: JSON = {}
        claims: JSON = {}
        assertion = form.get("client_assertion", "")
        if assertion:
            with contextlib.suppress(Exception):
                header = jwt.get_unverified_header(assertion)
            with contextlib.suppress(Exception):
                claims = jwt.decode(assertion, options={"verify_signature": False})
        try:
            if record.method != "POST":
                raise _TokenError("invalid_request", "use POST", 405)
            ctype = record.headers.get("content-type", "")
            if not ctype.startswith("application/x-www-form-urlencoded"):
                raise _TokenError("invalid_request", "form-encoded body required")
            if form.get("grant_type") != "client_credentials":
                raise _TokenError("unsupported_grant_type", "grant_type must be client_credentials")
            if form.get("client_assertion_type") != JWT_BEARER:
                raise _TokenError("invalid_client", "client_assertion_type must be jwt-bearer")
            if not assertion:
                raise _TokenError("invalid_client", "client_assertion missing")
            scope = form.get("scope", "").strip()
            if not scope:
                raise _TokenError("invalid_scope", "scope missing")
            client = self._validate_assertion(assertion, header, claims)
            if client.scopes is not None and not set(scope.split()) <= client.scopes:
                raise _TokenError("invalid_scope", "scope not allowed for this client")
        except _TokenError as err:
            with self._auth_lock:
                self.assertions.append(
                    AssertionRecord(header, claims, False, err.description, form, record.time)
                )
            error = {"error": err.error, "error_description": err.description}
            return _Response(
                err.status,
                {"Content-Type": "application/json", "Cache-Control": "no-store"},
                _to_bytes(error),
            )
        token = secrets.token_urlsafe(24)
        with self._auth_lock:
            self.assertions.append(AssertionRecord(header, claims, True, None, form, record.time))
            self._tokens[token] = _Token(
                client.client_id, scope, time.monotonic() + self.token_ttl_s
            )
        body: JSON = {
            "access_token": token,
            "token_type": "bearer",
            "expires_in": math.ceil(self.token_ttl_s),
            "scope": scope,
        }
        return _Response(
            200,
            {"Content-Type": "application/json", "Cache-Control": "no-store", "Pragma": "no-cache"},
            _to_bytes(body),
        )

    def _validate_assertion(self, assertion: str, header: JSON, claims: JSON) -> _Client:
        if not header:
            raise _TokenError("invalid_client", "client_assertion is not a JWT")
        alg = header.get("alg")
        if alg not in ALLOWED_ASSERTION_ALGS:
            raise _TokenError("invalid_client", f"alg {alg!r} not allowed (RS384, ES384)")
        if str(header.get("typ", "")).upper() != "JWT":
            raise _TokenError("invalid_client", "typ must be JWT")
        kid = header.get("kid")
        if not kid:
            raise _TokenError("invalid_client", "kid missing")
        client_id = claims.get("iss")
        with self._auth_lock:
            client = self._clients.get(str(client_id))
        if client is None:
            raise _TokenError("invalid_client", "unknown client (iss)")
        if "jku" in header and header["jku"] != client.jku:
            raise _TokenError("invalid_client", "jku does not match the registered JWKS URL")
        jwk = next((k for k in client.jwks.get("keys", []) if k.get("kid") == kid), None)
        if jwk is None:
            raise _TokenError("invalid_client", f"kid {kid!r} not in the client's JWKS")
        expected_kty = "RSA" if alg == "RS384" else "EC"
        if jwk.get("kty") != expected_kty or jwk.get("alg", alg) != alg:
            raise _TokenError("invalid_client", f"key {kid!r} cannot verify {alg}")
        try:
            key = jwt.PyJWK(jwk, algorithm=alg).key
            verified = jwt.decode(
                assertion,
                key,
                algorithms=[alg],
                audience=self.token_url,
                issuer=client.client_id,
                options={"require": ["iss", "sub", "aud", "exp", "jti"]},
            )
        except jwt.PyJWTError as exc:
            raise _TokenError("invalid_client", f"assertion rejected: {exc}") from exc
        if verified.get("sub") != client.client_id:
            raise _TokenError("invalid_client", "sub must equal iss (client_id)")
        if not isinstance(verified.get("aud"), str):
            raise _TokenError("invalid_client", "aud must be the token URL (a string)")
        exp = verified["exp"]
        if "iat" in verified and exp - verified["iat"] > MAX_ASSERTION_LIFETIME_S:
            raise _TokenError("invalid_client", "exp - iat exceeds 300 s")
        if exp - time.time() > MAX_ASSERTION_LIFETIME_S + 1:
            raise _TokenError("invalid_client", "exp is more than 5 minutes in the future")
        jti_key = (client.client_id, str(verified["jti"]))
        with self._auth_lock:
            if jti_key in self._seen_jti:
                raise _TokenError("invalid_client", "jti has already been used")
            self._seen_jti[jti_key] = float(exp)
        return client

    # ---- dispatch ---------------------------------------------------------------------------

    def _dispatch(self, handler: _Handler, record: RecordedRequest) -> None:
        path = record.path.rstrip("/") or "/"
        if (
            self.require_bearer
            and path.startswith("/fhir")
            and path not in ("/fhir/metadata", "/fhir/.well-known/smart-configuration")
        ):
            ok, why = self._token_valid(record.headers.get("authorization"))
            if not ok:
                record.action = "auth"
                handler.send(
                    record,
                    _Response(
                        401,
                        {
                            "WWW-Authenticate": (
                                f'Bearer realm="fault-fhir", error="invalid_token", '
                                f'error_description="{why}"'
                            )
                        },
                        _to_bytes(operation_outcome(why, "login")),
                    ),
                )
                return
        action = self._pop_action(record.method, record.path)
        record.action = action.kind if action else "normal"
        if action is None:
            handler.send(record, self._normal(record, None))
            return
        kind = action.kind
        if kind == "status":
            body = action.body
            if body is None and action.code >= 400:
                body = operation_outcome(f"scripted {action.code}", "transient")
            handler.send(record, _Response(action.code, dict(action.headers), _to_bytes(body)))
        elif kind == "commit_then_status":
            self._normal(record, None)
            body = action.body
            if body is None and action.code >= 400:
                body = operation_outcome(f"scripted {action.code} after commit", "exception")
            handler.send(record, _Response(action.code, dict(action.headers), _to_bytes(body)))
        elif kind == "commit_then_hang":
            response = self._normal(record, None)
            if action.seconds is None:
                self._stopping.wait()  # never answer; released (closed) by stop()
                raise _Drop
            if self._stopping.wait(action.seconds):
                raise _Drop
            handler.send(record, response)
        elif kind == "commit_then_drop":
            self._normal(record, None)
            raise _Drop
        elif kind == "drop":
            raise _Drop
        elif kind == "delay":
            if self._stopping.wait(action.seconds or 0):
                raise _Drop
            handler.send(record, self._normal(record, None))
        elif kind == "race":
            handler.send(record, self._normal(record, action.seconds))
        elif kind == "slow_drip":
            if action.body is None:
                response = self._normal(record, None)
            else:
                response = _Response(action.code, dict(action.headers), _to_bytes(action.body))
            handler.drip(record, response, action.seconds or 0.0, self._stopping)
        else:  # pragma: no cover - construction is via the helpers
            raise ValueError(f"unknown action {kind!r}")

    def _view(self, race_window: float | None, data: dict[str, dict[str, JSON]]) -> _View:
        return _View(data, self._store.lock, self._store.new_id, race_window, self._stopping)

    def _normal(self, record: RecordedRequest, race_window: float | None) -> _Response:
        """The normal behaviour of the server for one request."""
        path = record.path.rstrip("/") or "/"
        if path == "/token":
            return self._token_endpoint(record)
        if not path.startswith("/fhir"):
            return _json(404, operation_outcome(f"No such path {path}", "not-found"))
        rel = path[len("/fhir") :].lstrip("/")
        try:
            if rel == "metadata" and record.method == "GET":
                return _json(200, self.capability_statement())
            if rel == ".well-known/smart-configuration" and record.method == "GET":
                return _Response(
                    200, {"Content-Type": "application/json"}, _to_bytes(self._smart())
                )
            return self._fhir(record, rel, race_window or self.race_window_s)
        except FhirError as err:
            return _json(err.status, err.outcome())

    def _fhir(self, record: RecordedRequest, rel: str, race_window: float | None) -> _Response:
        body: JSON | None = None
        if record.method in ("POST", "PUT"):
            ctype = record.headers.get("content-type", "")
            if "json" not in ctype:
                raise FhirError(415, f"Unsupported content type {ctype!r}", "not-supported")
            try:
                body = json.loads(record.body)
            except ValueError as exc:
                raise FhirError(400, f"Body is not JSON: {exc}", "structure") from exc
            if not isinstance(body, dict):
                raise FhirError(400, "Body is not a JSON object", "structure")
        if rel == "":
            if record.method != "POST" or body is None:
                raise FhirError(
                    405, "Only POST of a Bundle is allowed at the base", "not-supported"
                )
            return _json(200, self._bundle(body, race_window))
        url = rel + (f"?{record.query}" if record.query else "")
        request: JSON = {"method": record.method, "url": url}
        if record.headers.get("if-none-exist"):
            request["ifNoneExist"] = record.headers["if-none-exist"]
        if record.headers.get("if-match"):
            request["ifMatch"] = record.headers["if-match"]
        entry: JSON = {"request": request}
        if body is not None:
            entry["resource"] = body
        result = self._atomic([entry], race_window)[0]
        headers: dict[str, str] = {}
        location = result.location()
        if location:
            headers["Location"] = f"{self.base_url}/{location}"
            headers["Content-Location"] = headers["Location"]
        if result.etag():
            headers["ETag"] = result.etag() or ""
        payload = result.body if result.body is not None else result.resource
        if payload is None:
            return _Response(result.status, headers)
        headers["Content-Type"] = FHIR_JSON
        return _Response(result.status, headers, _to_bytes(payload))

    def _atomic(self, entries: list[JSON], race_window: float | None) -> list[_EntryResult]:
        """Run entries as one transaction. Normal mode: on a private copy under the store lock,
        committed only if every entry succeeds. Race mode: directly on the live store with a
        lock per step and a sleep between each conditional search and its write."""
        order = sorted(
            range(len(entries)),
            key=lambda i: _METHOD_ORDER.get(
                str((entries[i].get("request") or {}).get("method", "")).upper(), 9
            ),
        )
        results: list[_EntryResult | None] = [None] * len(entries)
        if race_window:
            proc = _Processor(self._view(race_window, self._store.data), self.base_url)
            for i in order:
                results[i] = proc.run(entries[i])
            proc.rewrite_references()
        else:
            with self._store.lock:
                work = {t: dict(table) for t, table in self._store.data.items()}
                proc = _Processor(self._view(None, work), self.base_url)
                for i in order:
                    results[i] = proc.run(entries[i])
                proc.rewrite_references()
                self._store.commit(work)
        return [r for r in results if r is not None]

    def _bundle(self, bundle: JSON, race_window: float | None) -> JSON:
        if bundle.get("resourceType") != "Bundle":
            raise FhirError(400, "Expected a Bundle", "invalid")
        btype = bundle.get("type")
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            raise FhirError(400, "Bundle.entry must be an array", "structure")
        if btype == "transaction":
            results = self._atomic(entries, race_window)
            response_entries = [self._response_entry(r) for r in results]
        elif btype == "batch":
            response_entries = []
            for entry in entries:
                try:
                    response_entries.append(
                        self._response_entry(self._atomic([entry], race_window)[0])
                    )
                except FhirError as err:
                    response_entries.append(
                        {
                            "response": {
                                "status": _status_text(err.status),
                                "outcome": err.outcome(),
                            }
                        }
                    )
        else:
            raise FhirError(400, f"Bundle.type must be transaction or batch, not {btype!r}")
        return {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": f"{btype}-response",
            "entry": response_entries,
        }

    def _response_entry(self, result: _EntryResult) -> JSON:
        response: JSON = {"status": _status_text(result.status)}
        location = result.location()
        if location:
            response["location"] = location
            response["etag"] = result.etag()
            assert result.resource is not None
            response["lastModified"] = result.resource["meta"]["lastUpdated"]
        entry: JSON = {"response": response}
        if result.body is not None:
            entry["resource"] = result.body
        elif result.read and result.resource is not None:
            entry["resource"] = result.resource
        return entry

    def capability_statement(self) -> JSON:
        types = ["Patient", "Endpoint", "ImagingStudy", "DiagnosticReport", "Task", "Observation"]
        return {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2025-01-01",
            "publisher": "rtplan-adapter tests",
            "kind": "instance",
            "software": {"name": "fault-fhir", "version": "1.0"},
            "implementation": {"description": "fault-injecting test peer", "url": self.base_url},
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json", "json"],
            "rest": [
                {
                    "mode": "server",
                    "security": {
                        "extension": [
                            {
                                "url": "http://fhir-registry.smarthealthit.org/"
                                "StructureDefinition/oauth-uris",
                                "extension": [{"url": "token", "valueUri": self.token_url}],
                            }
                        ],
                        "service": [
                            {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/"
                                        "restful-security-service",
                                        "code": "SMART-on-FHIR",
                                    }
                                ]
                            }
                        ],
                    },
                    "resource": [
                        {
                            "type": t,
                            "interaction": [
                                {"code": c}
                                for c in ("read", "create", "update", "delete", "search-type")
                            ],
                            "versioning": "versioned",
                            "conditionalCreate": True,
                            "conditionalUpdate": True,
                            "conditionalDelete": "single",
                            "searchParam": [
                                {"name": "identifier", "type": "token"},
                                {"name": "_id", "type": "token"},
                            ],
                        }
                        for t in types
                    ],
                    "interaction": [{"code": "transaction"}, {"code": "batch"}],
                }
            ],
        }

    def _smart(self) -> JSON:
        return {
            "token_endpoint": self.token_url,
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
            "token_endpoint_auth_signing_alg_values_supported": sorted(ALLOWED_ASSERTION_ALGS),
            "scopes_supported": ["system/*.rs", "system/*.cruds", "system/*.*"],
            "capabilities": ["client-confidential-asymmetric"],
        }


def _json(status_code: int, body: JSON) -> _Response:
    return _Response(status_code, {"Content-Type": FHIR_JSON}, _to_bytes(body))


def _server_context(tls: Any) -> ssl.SSLContext | None:
    if tls is None or isinstance(tls, ssl.SSLContext):
        return tls
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if hasattr(tls, "configure_cert"):  # trustme.LeafCert
        tls.configure_cert(ctx)
    elif hasattr(tls, "issue_cert"):  # trustme.CA
        tls.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    else:
        raise TypeError("tls must be an ssl.SSLContext, trustme.LeafCert or trustme.CA")
    return ctx
