"""A scriptable, fault-injecting MLLP receiver for reliability rows 1-12 (``reliability.md`` §6).

It runs its own asyncio loop in a background thread, so tests can drive the client with
``asyncio.run`` (or through the outbox) while the peer misbehaves on cue. It parses frames
with its own few lines (not :mod:`adapter.hl7.mllp`), so a framer bug cannot hide in both.

    peer = MllpFaultPeer().start()            # or start(delay=3.0): refused until then
    peer.script(fault.drop(), fault.ack())    # one action per received frame, FIFO
    peer.always("CTRL-7", fault.ack("AR"))    # per-MSH-10 rule (a poison message)
    ...
    peer.control_ids                          # every MSH-10 received, in order
    peer.stop()

Actions (module functions): :func:`ack` (AA/AE/AR/CA/CE/CR, MSA-2 override, MSA-3, ERR),
:func:`raw`, :func:`chunked`, :func:`junk`, :func:`fs_without_cr`, :func:`delay`,
:func:`silence` (black hole), :func:`drop` (close, no answer), :func:`partial_ack`,
:func:`reset` (TCP RST), :func:`empty_ack`, :func:`garbage`, :func:`drop_mid_frame` (close
after N bytes of the *incoming* frame, so the message never arrives whole).
When the script is empty, the default action answers AA with MSA-2 = MSH-10.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from tests.peers.launch import free_port


@dataclass(frozen=True)
class Action:
    kind: str
    code: str = "AA"
    control_id: str | None = None  # MSA-2 override (None: echo MSH-10)
    text: str = ""
    error_code: str = ""
    data: bytes = b""
    seconds: float = 0.0
    size: int = 1
    then: Action | None = None


def ack(
    code: str = "AA", *, control_id: str | None = None, text: str = "", error_code: str = ""
) -> Action:
    return Action("ack", code=code, control_id=control_id, text=text, error_code=error_code)


def raw(data: bytes) -> Action:
    """Write ``data`` exactly as given (framing included or not)."""
    return Action("raw", data=data)


def chunked(then: Action | None = None, size: int = 1, seconds: float = 0.005) -> Action:
    """Write the reply ``size`` bytes at a time, ``seconds`` apart."""
    return Action("chunked", then=then or ack(), size=size, seconds=seconds)


def junk(prefix: bytes = b"xx\r\n", then: Action | None = None) -> Action:
    return Action("junk", data=prefix, then=then or ack())


def fs_without_cr(code: str = "AA") -> Action:
    return Action("fs_without_cr", code=code)


def delay(seconds: float, then: Action | None = None) -> Action:
    return Action("delay", seconds=seconds, then=then or ack())


def silence() -> Action:
    return Action("silence")


def drop() -> Action:
    return Action("drop")


def partial_ack(size: int = 10) -> Action:
    return Action("partial_ack", size=size)


def reset() -> Action:
    return Action("reset")


def empty_ack() -> Action:
    return raw(b"\x0b\x1c\r")


def garbage(size: int = 64, *, framed: bool = True, seed: int = 1) -> Action:
    """Random bytes (no VT/FS inside), framed as one ACK by default."""
    rng = random.Random(seed)
    body = bytes(b for b in rng.randbytes(size * 2) if b not in (0x0B, 0x1C))[:size]
    return raw(b"\x0b" + body + b"\x1c\r" if framed else body)


def drop_mid_frame(after: int = 20) -> Action:
    return Action("drop_mid_frame", size=after)


def msh10(message: bytes) -> str:
    head = message.split(b"\r", 1)[0].split(b"|")
    return head[9].decode("ascii", "replace") if len(head) > 9 else ""


def build_ack(
    message: bytes,
    code: str = "AA",
    *,
    control_id: str | None = None,
    text: str = "",
    error_code: str = "",
) -> bytes:
    """A minimal v2 ACK for ``message`` (sender/receiver swapped, MSA-2 = MSH-10)."""
    head = message.split(b"\r", 1)[0].decode("latin-1").split("|")
    head += [""] * (12 - len(head))
    now = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    mid = control_id if control_id is not None else head[9]
    segs = [
        f"MSH|^~\\&|{head[4]}|{head[5]}|{head[2]}|{head[3]}|{now}||ACK|A{head[9]}|P|{head[11]}",
        f"MSA|{code}|{mid}|{text}",
    ]
    if error_code:
        segs.append(f"ERR|||{error_code}^Rejected^HL70357|E")  # v2.5: ERR-3 code, ERR-4 severity
    return "\r".join(segs).encode("latin-1")


class _Conn(asyncio.Protocol):
    def __init__(self, peer: MllpFaultPeer) -> None:
        self.peer = peer
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.tail: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer._conns.add(self)
        self.peer.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.peer._conns.discard(self)

    def data_received(self, data: bytes) -> None:
        self.peer.bytes_received += len(data)
        self.buf += data
        while self.transport is not None and not self.transport.is_closing():
            start = self.buf.find(b"\x0b")
            if start < 0:
                self.buf.clear()
                return
            head = self.peer._peek()
            if head is not None and head.kind == "drop_mid_frame":
                if len(self.buf) - start - 1 >= head.size:
                    self.peer._pop()
                    self.transport.close()
                return
            end = self.buf.find(b"\x1c\r", start)
            if end < 0:
                return
            message = bytes(self.buf[start + 1 : end])
            del self.buf[: end + 2]
            action = self.peer._record(message)
            prev = self.tail
            self.tail = asyncio.get_running_loop().create_task(self._respond(prev, action, message))
            self.peer._tasks.add(self.tail)
            self.tail.add_done_callback(self.peer._tasks.discard)

    async def _respond(self, prev: asyncio.Task[None] | None, action: Action, msg: bytes) -> None:
        if prev is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await prev
        await self._do(action, msg)

    async def _do(self, action: Action, msg: bytes) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        kind = action.kind
        if kind == "ack":
            reply = build_ack(
                msg,
                action.code,
                control_id=action.control_id,
                text=action.text,
                error_code=action.error_code,
            )
            t.write(b"\x0b" + reply + b"\x1c\r")
        elif kind == "raw":
            t.write(action.data)
        elif kind == "junk":
            t.write(action.data)
            assert action.then is not None
            await self._do(action.then, msg)
        elif kind == "fs_without_cr":
            t.write(b"\x0b" + build_ack(msg, action.code) + b"\x1cX")
        elif kind == "delay":
            await asyncio.sleep(action.seconds)
            assert action.then is not None
            await self._do(action.then, msg)
        elif kind == "chunked":
            assert action.then is not None
            data = _render(action.then, msg)
            for i in range(0, len(data), action.size):
                if t.is_closing():
                    return
                t.write(data[i : i + action.size])
                await asyncio.sleep(action.seconds)
        elif kind == "partial_ack":
            t.write(_render(ack(), msg)[: action.size])
            t.close()
        elif kind == "drop":
            t.close()
        elif kind == "reset":
            sock = t.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            t.abort()
        elif kind == "silence":
            return
        else:  # pragma: no cover - a typo in a test
            raise ValueError(f"unknown action {kind}")


def _render(action: Action, msg: bytes) -> bytes:
    if action.kind == "ack":
        reply = build_ack(
            msg, action.code, control_id=action.control_id, text=action.text,
            error_code=action.error_code,
        )  # fmt: skip
        return b"\x0b" + reply + b"\x1c\r"
    if action.kind == "raw":
        return action.data
    raise ValueError(f"cannot render {action.kind} as bytes")


class MllpFaultPeer:
    """The fault peer (see module docstring). ``tls`` is a server ``ssl.SSLContext``."""

    def __init__(self, *, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self.tls = tls
        self.port = 0
        self.frames: list[bytes] = []
        self.connections = 0
        self.bytes_received = 0
        self.default = ack()
        self._script: list[Action] = []
        self._rules: dict[str, Action] = {}
        self._lock = threading.Lock()
        self._received = threading.Condition(self._lock)
        self._conns: set[_Conn] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self.listening = threading.Event()

    # ---- scripting and records (called from the test thread) ----
    def script(self, *actions: Action) -> MllpFaultPeer:
        with self._lock:
            self._script.extend(actions)
        return self

    def always(self, control_id: str, action: Action) -> MllpFaultPeer:
        with self._lock:
            self._rules[control_id] = action
        return self

    @property
    def control_ids(self) -> list[str]:
        with self._lock:
            return [msh10(f) for f in self.frames]

    @property
    def unique_control_ids(self) -> set[str]:
        return set(self.control_ids)

    def wait_for(self, frames: int, timeout: float = 10.0) -> bool:
        with self._received:
            return self._received.wait_for(lambda: len(self.frames) >= frames, timeout)

    # ---- used by the loop thread ----
    def _peek(self) -> Action | None:
        with self._lock:
            return self._script[0] if self._script else None

    def _pop(self) -> None:
        with self._lock:
            self._script.pop(0)

    def _record(self, message: bytes) -> Action:
        with self._received:
            self.frames.append(message)
            self._received.notify_all()
            rule = self._rules.get(msh10(message))
            if rule is not None:
                return rule
            return self._script.pop(0) if self._script else self.default

    # ---- lifecycle ----
    def start(self, delay: float = 0.0) -> MllpFaultPeer:
        """Start the loop thread; listen now, or after ``delay`` s (connections refused until
        then: the port is chosen up front)."""
        if self._thread is not None:
            return self
        if delay > 0 and not self.port:
            self.port = free_port()
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="mllp-fault", daemon=True)
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._listen(delay), loop)
        if delay <= 0:
            fut.result(10)
        return self

    async def _listen(self, delay: float) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Conn(self), self.host, self.port, ssl=self.tls, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.listening.set()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            if conn.transport is not None:
                conn.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        for task in list(asyncio.all_tasks()):
            if task is not asyncio.current_task():
                task.cancel()
        await asyncio.sleep(0.01)
        if self._server is not None:
            await self._server.wait_closed()

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._thread = None

    def __enter__(self) -> MllpFaultPeer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_until(predicate: object, timeout: float = 5.0) -> bool:
    """Poll a zero-argument callable until it is truthy (for the test thread)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.01)
    return False
