"""An asyncio MLLP client: one persistent connection, one message in flight, ACKs as values.

:meth:`MllpClient.send` writes one frame and returns the payload of the one ACK frame that
comes back. What the ACK *means* is decided by :func:`adapter.hl7.ack_judge.judge_ack`, a pure
function, so the transport never swallows or invents a rejection.

Failures are translated here, at the boundary, into the two kinds delivery must tell apart
(mirroring :mod:`adapter.fhir.client`):

- :class:`NotSent`: nothing was written (connect refused or timed out, TLS refused). A resend
  is always safe.
- :class:`NoAnswer`: the frame was written, but no complete ACK came back (ACK timeout, reset,
  EOF or a framing error mid-ACK). The receiver may have stored the message: resend the *same*
  bytes (same MSH-10) so it can de-duplicate.

Why one message in flight: the real peers we test against (@medplum/hl7, simple-hl7) silently
drop a second message written before the first is ACKed (``peers.md`` §4), and MLLP ACKs carry
no ordering guarantee beyond "the next frame". After any :class:`NoAnswer` the connection is
closed, because a late ACK for the old message would otherwise be read as the next message's
ACK. Before reusing an idle connection, the client checks the peer has not closed it and has
not sent anything unsolicited; either way it reconnects first.

TLS: the context must verify certificates and host names, with TLS 1.2 or later; a context
that does not is refused at construction. There is no plaintext fallback: ``tls=None`` means
plaintext by configuration, never by failure. Logs carry MSH-10 and sizes only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from adapter.errors import ConfigError, NoAnswer, NotSent
from adapter.hl7.mllp import DEFAULT_MAX_FRAME, Framer, FramingError, frame

__all__ = ["MllpClient", "MllpStats", "NoAnswer", "NotSent", "client_tls_context", "control_id"]

log = logging.getLogger(__name__)


@dataclass
class MllpStats:
    """Cumulative counters for one client (read by metrics; no message content)."""

    connects: int = 0
    sent: int = 0
    acks: int = 0
    not_sent: int = 0
    no_answer: int = 0
    junk_bytes: int = 0
    framing_errors: int = 0
    stale_reconnects: int = 0


def client_tls_context(
    cafile: str | None = None,
    *,
    certfile: str | None = None,
    keyfile: str | None = None,
    cadata: str | None = None,
) -> ssl.SSLContext:
    """A client context: CA verification and host-name check on, TLS >= 1.2, optional mTLS."""
    context = ssl.create_default_context(cafile=cafile, cadata=cadata)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certfile:
        context.load_cert_chain(certfile, keyfile)
    return context


def _check_tls(context: ssl.SSLContext) -> None:
    """Refuse a context that would not verify the peer or would allow TLS < 1.2."""
    if context.verify_mode != ssl.CERT_REQUIRED or not context.check_hostname:
        raise ConfigError("hl7.tls", "the TLS context must verify the certificate and host name")
    # MINIMUM_SUPPORTED is -2, so it also fails this check.
    if context.minimum_version < ssl.TLSVersion.TLSv1_2:
        raise ConfigError("hl7.tls", "the TLS context allows versions below TLS 1.2")


def control_id(message: bytes) -> str:
    """MSH-10 of a message, for logs and for matching ACKs ('' if there is none)."""
    head = message.split(b"\r", 1)[0]
    if not head.startswith(b"MSH") or len(head) < 4:
        return ""
    fields = head.split(head[3:4])
    return fields[9].decode("ascii", "replace") if len(fields) > 9 else ""


# Which lower-layer exceptions mean "not written" (connect phase) and "no answer" (after the
# write). tests/unit/test_mllp_client.py checks each class lands where it should.
CONNECT_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, ssl.SSLError, EOFError)
ANSWER_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    ssl.SSLError,
    EOFError,
    FramingError,
)


@contextlib.contextmanager
def map_connect_errors(where: str) -> Iterator[None]:
    try:
        yield
    except ssl.SSLCertVerificationError as exc:
        why = getattr(exc, "verify_message", "") or "verification failed"
        raise NotSent(f"{where}: TLS certificate refused: {why}") from exc
    except CONNECT_ERRORS as exc:
        raise NotSent(f"{where}: not sent: {type(exc).__name__}") from exc


@contextlib.contextmanager
def map_answer_errors(where: str) -> Iterator[None]:
    try:
        yield
    except ANSWER_ERRORS as exc:
        raise NoAnswer(f"{where}: no answer: {type(exc).__name__}") from exc


class _Connection(asyncio.Protocol):
    """One MLLP connection: the framer fed from ``data_received``, frames queued for reads."""

    def __init__(self, max_frame: int) -> None:
        self.framer = Framer(max_frame)
        self.frames: deque[bytes] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.counted = (0, 0)  # junk bytes and framing errors already added to the stats
        self.expired = False  # the ACK deadline passed: the connection must not be reused
        self.problem: BaseException | None = None  # first error seen on this stream
        self._wakeup: asyncio.Future[None] | None = None
        self._can_write = True
        self._drained: asyncio.Future[None] | None = None

    # -- asyncio.Protocol callbacks --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        with contextlib.suppress(OSError, AttributeError):
            sock = transport.get_extra_info("socket")
            if sock is not None:  # one small frame each way: do not wait for Nagle
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            self.frames.extend(self.framer.feed(data))
        except FramingError as exc:
            self.frames.extend(exc.messages)
            self.problem = self.problem or exc
        self._wake()

    def eof_received(self) -> bool:
        self.problem = self.problem or EOFError("peer closed the connection")
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.problem = self.problem or exc or EOFError("connection closed")
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        self._can_write = False

    def resume_writing(self) -> None:
        self._can_write = True
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    # -- used by the client --
    @property
    def reusable(self) -> bool:
        """Still open, nothing unsolicited waiting, no partial frame, no error seen."""
        return not (
            self.closed or self.problem or self.expired or self.frames or self.framer.in_frame
        ) and bool(self.transport and not self.transport.is_closing())

    async def drain(self) -> None:
        if not self._can_write and not self.closed:
            self._drained = asyncio.get_running_loop().create_future()
            await self._drained
            if self.expired:
                raise TimeoutError("write did not drain in time")

    async def exchange(self, data: bytes, timeout: float) -> bytes:
        """Write one frame and return the next frame received.

        Raises TimeoutError after ``timeout`` s, or the stream's first error (EOF, reset,
        framing). A plain timer rather than ``asyncio.timeout``: this is the hot path.
        """
        assert self.transport is not None
        timer = asyncio.get_running_loop().call_later(timeout, self._expire)
        try:
            self.transport.write(data)
            await self.drain()
            return await self.next_frame()
        finally:
            timer.cancel()

    async def next_frame(self) -> bytes:
        while True:
            if self.frames:
                return self.frames.popleft()
            if self.problem is not None:
                raise self.problem
            if self.expired:
                raise TimeoutError("no complete ACK in time")
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup

    def _expire(self) -> None:
        self.expired = True
        self._wake()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _wake(self) -> None:
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


class MllpClient:
    """One MLLP peer over one persistent connection (see the module docstring).

    Args:
        host, port: the peer.
        connect_timeout: seconds for TCP connect plus TLS handshake.
        ack_timeout: seconds from the end of the write to the complete ACK frame.
        tls: a verifying client context (:func:`client_tls_context`), or None for plaintext.
        server_hostname: name to verify the certificate against (default: ``host``).
        max_frame: largest ACK accepted, in bytes.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout: float = 5.0,
        ack_timeout: float = 30.0,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
    ) -> None:
        if tls is not None:
            _check_tls(tls)
        self.host = host
        self.port = port
        self.connect_timeout = connect_timeout
        self.ack_timeout = ack_timeout
        self.tls = tls
        self.server_hostname = server_hostname
        self.max_frame = max_frame
        self.stats = MllpStats()
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()

    @property
    def peer(self) -> str:
        return f"{self.host}:{self.port}"

    async def __aenter__(self) -> MllpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection (if any). The client can still be used: it reconnects."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await _close(conn)

    async def send(self, message: bytes) -> bytes:
        """Send one message; return the payload of the next frame the peer sends back.

        Raises:
            NotSent: nothing was written (connect refused/timeout, TLS refused).
            NoAnswer: written, but no complete ACK within ``ack_timeout``.
            ValueError: ``message`` contains an MLLP framing byte (an escaping bug).
        """
        data = frame(message)
        async with self._lock:
            conn = await self._connected()
            started = time.monotonic()
            try:
                with map_answer_errors(self.peer):
                    self.stats.sent += 1
                    ack = await conn.exchange(data, self.ack_timeout)
            except NoAnswer:
                self.stats.no_answer += 1
                self._account(conn)
                self._conn = None
                await _close(conn)
                log.warning(
                    "mllp %s: %s (%d bytes) got no ACK after %.2fs: %s",
                    self.peer, control_id(message), len(message), time.monotonic() - started,
                    type(conn.problem).__name__ if conn.problem else "timeout",
                )  # fmt: skip
                raise
            except BaseException:  # cancelled mid-exchange: a late ACK must never be reused
                self._conn = None
                conn.abort()
                raise
            self.stats.acks += 1
            if conn.framer.junk_bytes != conn.counted[0] or conn.framer.errors != conn.counted[1]:
                self._account(conn)
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "mllp %s: %s (%d bytes) ACK %d bytes in %.3fs",
                    self.peer, control_id(message), len(message), len(ack),
                    time.monotonic() - started,
                )  # fmt: skip
            return ack

    async def _connected(self) -> _Connection:
        conn = self._conn
        if conn is not None:
            if conn.reusable:
                return conn
            self.stats.stale_reconnects += 1
            log.info("mllp %s: connection no longer usable; reconnecting", self.peer)
            self._account(conn)
            self._conn = None
            await _close(conn)
        loop = asyncio.get_running_loop()
        try:
            with map_connect_errors(self.peer):
                async with asyncio.timeout(self.connect_timeout):
                    _, conn = await loop.create_connection(
                        lambda: _Connection(self.max_frame),
                        self.host,
                        self.port,
                        ssl=self.tls,
                        server_hostname=(self.server_hostname or self.host) if self.tls else None,
                        ssl_handshake_timeout=self.connect_timeout if self.tls else None,
                    )
        except NotSent as exc:
            self.stats.not_sent += 1
            log.warning("mllp %s: connect failed: %s", self.peer, exc.__cause__.__class__.__name__)
            raise
        self.stats.connects += 1
        self._conn = conn
        return conn

    def _account(self, conn: _Connection) -> None:
        """Add the connection's new junk bytes and framing errors to the client's stats."""
        junk, errors = conn.framer.junk_bytes, conn.framer.errors
        self.stats.junk_bytes += junk - conn.counted[0]
        self.stats.framing_errors += errors - conn.counted[1]
        conn.counted = (junk, errors)


async def _close(conn: _Connection) -> None:
    """Close and wait briefly for the transport to finish (no ResourceWarning, no hang)."""
    transport = conn.transport
    if transport is None or conn.closed:
        return
    transport.close()
    for _ in range(50):  # up to ~0.5 s for a TLS close_notify; then abort
        if conn.closed:
            return
        await asyncio.sleep(0.01)
    transport.abort()
    await asyncio.sleep(0)
