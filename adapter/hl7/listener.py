"""The inbound MLLP server core: frames in, one handler call per message, the handler's ACK out.

:class:`MllpServer` owns sockets, framing and ordering; it knows nothing of HL7 content. The
``handler`` decides everything about a message, including the ACK code, because only the
handler knows whether the message was stored durably (style §10: AA only after commit).

Handler contract (``async handler(message: bytes) -> bytes | None``):

- return the ACK payload (unframed) to send back: AA only once the message is durably
  stored; AE/AR for what cannot be accepted;
- return None to send nothing (the sender times out and resends);
- raise to send nothing *and close the connection*: the sender sees a dropped connection and
  resends, which is the safe reaction to "could not store" (Google ``mllpreceiver``).

Per connection, messages are handled strictly one after another and ACKed in order; a client
that pipelines is read ahead only ``max_queued`` frames before reading pauses (memory bound).
Junk bytes and framing errors are handled by the :class:`~adapter.hl7.mllp.Framer`: the bad
frame is dropped without an ACK and counted, and the connection stays open (the sender's ACK
timeout resends). Logs carry control ids and sizes only.

Bounds (docs/security.md), so that whoever can reach the port cannot exhaust the process:

- a frame longer than ``max_frame`` is discarded and its connection closed once the messages
  before it are answered;
- one connection holds at most ``max_connection_bytes`` in memory (queued messages and the
  partial one): reading pauses until the handler catches up;
- at most ``max_connections`` at once: a new connection replaces the quietest one with nothing
  in hand, or is closed when every connection is working;
- a connection silent for ``idle_timeout`` seconds is closed.

The handler learns who is talking from :data:`PEER` (a context variable set for each
connection's task): the address, and whether TLS with a verified client certificate is in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from adapter.hl7.client import control_id
from adapter.hl7.mllp import DEFAULT_MAX_FRAME, Framer, FramingError, frame
from adapter.ratelimit import RateLimitedWarning

__all__ = ["PEER", "Handler", "ListenerStats", "MllpServer", "Peer", "server_tls_context"]

log = logging.getLogger(__name__)
Handler = Callable[[bytes], Awaitable[bytes | None]]


@dataclass(frozen=True, slots=True)
class Peer:
    """Who sent the message being handled (no message content)."""

    host: str
    port: int
    tls: bool = False
    client_certificate: bool = False
    """True when the sender presented a certificate the listener's client CA verified."""


PEER: contextvars.ContextVar[Peer | None] = contextvars.ContextVar("mllp_peer", default=None)
"""The sender of the message a handler is called for (None outside a listener)."""


@dataclass
class ListenerStats:
    """Cumulative counters for one server (read by metrics; no message content)."""

    connections: int = 0
    messages: int = 0
    acks: int = 0
    no_reply: int = 0
    handler_errors: int = 0
    junk_bytes: int = 0
    framing_errors: int = 0
    oversized: int = 0
    refused_connections: int = 0
    idle_closed: int = 0
    evicted: int = 0


def server_tls_context(
    certfile: str, keyfile: str | None = None, *, client_ca: str | None = None
) -> ssl.SSLContext:
    """A server context with TLS >= 1.2; with ``client_ca`` the client must present a cert."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile, keyfile)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def _peer(transport: asyncio.Transport) -> Peer:
    address = transport.get_extra_info("peername") or ("", 0)
    ssl_object = transport.get_extra_info("ssl_object")
    certificate = ssl_object.getpeercert() if ssl_object is not None else None
    return Peer(
        host=str(address[0]),
        port=int(address[1]) if len(address) > 1 else 0,
        tls=ssl_object is not None,
        client_certificate=bool(certificate),
    )


class _Inbound(asyncio.Protocol):
    def __init__(self, server: MllpServer) -> None:
        self.server = server
        self.framer = Framer(server.max_frame)
        self.frames: deque[bytes] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.eof = False
        self.stopping = False
        self.busy = False
        self.worker: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._paused = False
        self._can_write = True
        self._drained: asyncio.Future[None] | None = None
        self.queued_bytes = 0
        self.last_active = 0.0
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        server = self.server
        peer = _peer(transport)
        if server._server is None or (server.accept is not None and not server.accept(peer)):
            server.stats.refused_connections += 1
            server._refusals.warn(
                "mllp listener: connection from %s refused (not an allowed peer)", peer.host
            )
            self.closed = True
            transport.abort()
            return
        if len(server._connections) >= server.max_connections and not server._evict_idlest():
            server.stats.refused_connections += 1
            server._refusals.warn(
                "mllp listener: connection refused (%d open)", len(server._connections)
            )
            self.closed = True
            transport.abort()
            return
        server._connections.add(self)
        server.stats.connections += 1
        self._touch()
        context = contextvars.copy_context()
        context.run(PEER.set, peer)
        self.worker = asyncio.get_running_loop().create_task(self._work(), context=context)

    def _touch(self) -> None:
        """Restart the idle clock (on every chunk received and every answer sent)."""
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self.last_active = loop.time()
        self._idle = loop.call_later(self.server.idle_timeout, self._idle_expired)

    def _idle_expired(self) -> None:
        if self.closed or self.transport is None:
            return
        if self.busy or self.frames:
            self._touch()  # still working on what it sent: not idle
            return
        self.server.stats.idle_closed += 1
        log.info("mllp listener: closing a connection idle for %gs", self.server.idle_timeout)
        self.stopping = True
        self._wake()
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._touch()
        before_junk = self.framer.junk_bytes
        before_oversized = self.framer.oversized
        try:
            frames = self.framer.feed(data)
        except FramingError as exc:
            frames = exc.messages
            self.server.stats.framing_errors += len(exc.problems)
            log.warning("mllp listener: frame discarded: %s", exc)
        self.server.stats.junk_bytes += self.framer.junk_bytes - before_junk
        self.frames.extend(frames)
        self.queued_bytes += sum(len(f) for f in frames)
        assert self.transport is not None
        if self.framer.oversized > before_oversized:
            # A sender that exceeds the frame limit is not a well-behaved RIS: answer what came
            # before, then close (reading stops now, so the rest is never buffered).
            self.server.stats.oversized += self.framer.oversized - before_oversized
            self.eof = True
            self.transport.pause_reading()
            self._paused = True
        elif not self._paused and (
            len(self.frames) >= self.server.max_queued
            or (self.frames and self.queued_bytes + self.framer.buffered
                > self.server.max_connection_bytes)
        ):  # fmt: skip
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        # Keep the write side open so queued messages still get their ACKs (plain TCP only;
        # TLS cannot half-close).
        self.eof = True
        self._wake()
        return self.server.tls is None

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._idle is not None:
            self._idle.cancel()
        self.server._connections.discard(self)
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        self._can_write = False

    def resume_writing(self) -> None:
        self._can_write = True
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    async def _next(self) -> bytes | None:
        while not self.frames:
            if self.closed or self.eof or self.stopping:
                return None
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup
        message = self.frames.popleft()
        self.queued_bytes -= len(message)
        if (
            self._paused
            and not self.eof
            and len(self.frames) <= self.server.max_queued // 2
            and self.queued_bytes <= self.server.max_connection_bytes // 2
        ):
            self._paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()
        return message

    async def _work(self) -> None:
        try:
            while not self.stopping and (message := await self._next()) is not None:
                if self.closed:
                    break
                self.busy = True
                try:
                    if not await self._handle(message):
                        break
                finally:
                    self.busy = False
        finally:
            if self.transport is not None and not self.closed:
                self.transport.close()

    async def _handle(self, message: bytes) -> bool:
        """Run the handler for one message and write its ACK; False to close the connection."""
        stats = self.server.stats
        stats.messages += 1
        msh10 = control_id(message)
        try:
            ack = await self.server.handler(message)
            data = None if ack is None else frame(ack)
        except Exception as exc:  # the handler's failure: no ACK, so the sender resends
            stats.handler_errors += 1
            log.error(
                "mllp listener: handler failed for %s (%d bytes): %s; closing without ACK",
                msh10, len(message), type(exc).__name__,
            )  # fmt: skip
            return False
        if data is None:
            stats.no_reply += 1
            log.info("mllp listener: no reply for %s (%d bytes)", msh10, len(message))
            return True
        if self.closed or self.transport is None:
            return False
        self.transport.write(data)
        self._touch()
        stats.acks += 1
        log.debug(
            "mllp listener: %s (%d bytes) answered, %d bytes", msh10, len(message), len(ack or b"")
        )
        if not self._can_write:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained
        return True


class MllpServer:
    """An MLLP listener (see the module docstring for the handler contract).

    Args:
        handler: ``async handler(message) -> ack payload | None``.
        host, port: where to listen; port 0 picks a free port (read ``.port`` after start).
        tls: a server context (:func:`server_tls_context`), or None for plain TCP.
        max_frame: largest inbound frame, in bytes; a longer frame is discarded and its
            connection closed.
        max_queued: frames read ahead per connection before reading pauses.
        max_connection_bytes: bytes one connection may hold in memory before reading pauses.
        max_connections: connections served at once; more are closed on arrival.
        idle_timeout: seconds of silence after which a connection is closed.
        accept: called with each new connection's :class:`Peer`; False closes it at once.

    At ``max_connections``, a new connection takes the place of the connection that has been
    quiet longest with nothing in hand (so idle connections cannot lock a RIS out); when every
    connection is working, the new one is closed.
    """

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls: ssl.SSLContext | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_queued: int = 16,
        handshake_timeout: float = 10.0,
        max_connection_bytes: int | None = None,
        max_connections: int = 32,
        idle_timeout: float = 300.0,
        accept: Callable[[Peer], bool] | None = None,
    ) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.tls = tls
        self.max_frame = max_frame
        self.max_queued = max(2, max_queued)
        self.handshake_timeout = handshake_timeout
        self.max_connection_bytes = max(max_frame, max_connection_bytes or 2 * max_frame)
        self.max_connections = max(1, max_connections)
        self.idle_timeout = idle_timeout
        self.accept = accept
        self._refusals = RateLimitedWarning(log)
        self.stats = ListenerStats()
        self._server: asyncio.Server | None = None
        self._connections: set[_Inbound] = set()

    def _evict_idlest(self) -> bool:
        """Close the quietest connection with no message in hand; False if there is none."""
        idle = [c for c in self._connections if not c.busy and not c.frames and not c.closed]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.last_active)
        self.stats.evicted += 1
        victim.stopping = True
        victim._wake()
        self._connections.discard(victim)
        if victim.transport is not None:
            victim.transport.abort()
        return True

    async def start(self) -> MllpServer:
        """Bind and start accepting; ``.port`` is the bound port afterwards."""
        if self._server is not None:
            return self
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Inbound(self),
            self.host,
            self.port,
            ssl=self.tls,
            ssl_handshake_timeout=self.handshake_timeout if self.tls else None,
            reuse_address=True,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("mllp listener on %s:%d (%s)", self.host, self.port, "TLS" if self.tls else "TCP")
        return self

    async def serve_forever(self) -> None:
        await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def aclose(self, grace: float = 5.0) -> None:
        """Stop accepting; let each connection finish the message in hand (up to ``grace`` s),
        so a message already stored still gets its ACK; then close every connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        conns = list(self._connections)
        for conn in conns:
            conn.stopping = True
            conn._wake()
        workers = [c.worker for c in conns if c.worker is not None]
        if workers:
            _, pending = await asyncio.wait(workers, timeout=grace)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for conn in conns:
            if conn.transport is not None and not conn.closed:
                conn.transport.abort()
        await server.wait_closed()
        for _ in range(100):  # let connection_lost callbacks run (no ResourceWarning)
            if not self._connections:
                break
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> MllpServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
