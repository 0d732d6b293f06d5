"""Bearer tokens, request size limit and a JSON-lines access log without patient data."""

from __future__ import annotations

import hmac
import json
import logging
import time
from pathlib import Path
from typing import Any

from adapter.errors import ConfigError

access_log = logging.getLogger("rtplan.access")
ASGIApp = Any
Scope = dict[str, Any]


def load_tokens(path: str) -> tuple[bytes, ...]:
    """The accepted tokens (one per line, blank lines and ``#`` comments ignored). An empty
    setting gives no tokens: every authenticated request is then refused."""
    if not path:
        return ()
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError("http.tokens_file", f"cannot read: {exc.strerror}") from None
    return tuple(
        line.strip().encode() for line in lines if line.strip() and not line.startswith("#")
    )


def token_accepted(header: str | None, tokens: tuple[bytes, ...]) -> bool:
    """``Authorization: Bearer <token>`` against every token, each compared in constant time
    (and all of them always compared, so the time does not say which one nearly matched)."""
    if not header or not tokens:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return False
    offered = given.strip().encode()
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(offered, token)
    return matched


class _TooLarge(Exception):
    pass


class Guard:
    """ASGI middleware: refuses a body over ``max_body`` bytes (413, before or while it is
    read) and logs one JSON line per request: method, route template (never the path: it
    holds UIDs), status and milliseconds."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 0}

        async def sending(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _too_large(sending)
        else:
            received = 0

            async def limited() -> Any:
                nonlocal received
                message = await receive()
                if message.get("type") == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body:
                        raise _TooLarge
                return message

            try:
                await self.app(scope, limited, sending)
            except _TooLarge:
                if status["code"] == 0:
                    await _too_large(sending)
        route = scope.get("route")
        fields = {
            "method": scope.get("method", ""),
            "route": getattr(route, "path", "unmatched"),  # the template: never a UID
            "status": status["code"],
            "ms": round((time.perf_counter() - started) * 1000, 1),
        }
        access_log.info(
            "%s %s %s",
            fields["method"],
            fields["route"],
            fields["status"],
            extra={"fields": fields},
        )


async def _too_large(send: Any) -> None:
    body = json.dumps({"detail": "request body too large"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})
