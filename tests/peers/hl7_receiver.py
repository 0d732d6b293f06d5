"""The main order peer: python-hl7's asyncio MLLP receiver (``peers.md`` §4), on 127.0.0.1.

An independent implementation of MLLP framing and of ACK building (python-hl7's
``Message.create_ack``: MSA-2 = MSH-10), run in its own thread and event loop so any test,
sync or async, can use it. It records every message it receives and answers per message:

    with Hl7Receiver() as rx:                    # AA for everything
        ...                                      # send to 127.0.0.1:rx.port
        rx.control_ids                           # every MSH-10 received, in order
    Hl7Receiver(ack_code="AE")                   # or a callable: (hl7.Message) -> "AA" | ...
    Hl7Receiver(delay=0.5)                       # answer late
    await rx.send(host, port, oru_bytes)         # send a message (e.g. an ORU^R01) back;
                                                 # returns the ACK payload

An unparseable frame gets ``AR`` with an empty MSA-2 (python-hl7 raises inside
``readmessage``, so the handler must catch it). Run standalone with
``python -m tests.peers.hl7_receiver --port P``: it prints ``RECEIVED <MSH-10>`` per message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any

import hl7
import hl7.mllp

ENCODING = "utf-8"
ERRORS = "surrogateescape"  # latin-1 or other bytes survive the round trip unchanged
AckCode = str | Callable[[Any], str]
REJECT_UNPARSEABLE = "MSH|^~\\&|RIS|||||||ACK|X|P|2.5\rMSA|AR|"


class Hl7Receiver:
    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        ack_code: AckCode = "AA",
        delay: float = 0.0,
        on_message: Callable[[str], None] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.ack_code = ack_code
        self.delay = delay
        self.on_message = on_message
        self.messages: list[str] = []
        self.connections = 0
        self.rejected_unparseable = 0
        self._lock = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[Any] = set()

    # ---- records ----
    @property
    def control_ids(self) -> list[str]:
        with self._lock:
            return [str(hl7.parse(m).segment("MSH")(10)) for m in self.messages]

    def wait_for(self, count: int, timeout: float = 10.0) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: len(self.messages) >= count, timeout)

    # ---- the receiving side ----
    async def _handle(self, reader: Any, writer: Any) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while not writer.is_closing():
                try:
                    message = await reader.readmessage()
                except (hl7.exceptions.ParseException, hl7.mllp.InvalidBlockError, ValueError):
                    self.rejected_unparseable += 1
                    writer.writemessage(hl7.parse(REJECT_UNPARSEABLE))
                    await writer.drain()
                    continue
                text = str(message)
                with self._lock:
                    self.messages.append(text)
                    self._lock.notify_all()
                if self.on_message is not None:
                    self.on_message(text)
                code = self.ack_code(message) if callable(self.ack_code) else self.ack_code
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.writemessage(message.create_ack(ack_code=code))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    # ---- the sending side (closed loop: an ORU^R01 back to the adapter) ----
    async def _send(self, host: str, port: int, message: bytes, timeout: float) -> bytes:
        reader, writer = await hl7.mllp.open_hl7_connection(
            host, port, encoding=ENCODING, encoding_errors=ERRORS
        )
        try:
            writer.writeblock(message)
            await writer.drain()
            return bytes(await asyncio.wait_for(reader.readblock(), timeout))
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def send(self, host: str, port: int, message: bytes, timeout: float = 10.0) -> bytes:
        """Send one framed message from the peer's own loop; return the ACK payload."""
        assert self._loop is not None, "start() first"
        fut = asyncio.run_coroutine_threadsafe(self._send(host, port, message, timeout), self._loop)
        return await asyncio.wrap_future(fut)

    def send_sync(self, host: str, port: int, message: bytes, timeout: float = 10.0) -> bytes:
        """Blocking form of :meth:`send`, for a listener running in another thread."""
        assert self._loop is not None, "start() first"
        coro = self._send(host, port, message, timeout)
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout + 5)

    # ---- lifecycle ----
    def start(self) -> Hl7Receiver:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="hl7-receiver", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), loop).result(10)
        return self

    async def _listen(self) -> None:
        self._server = await hl7.mllp.start_hl7_server(
            self._handle, self.host, self.port, encoding=ENCODING, encoding_errors=ERRORS
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        current = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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

    def __enter__(self) -> Hl7Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ack-code", default="AA")
    args = parser.parse_args()

    def show(text: str) -> None:
        print("RECEIVED", hl7.parse(text).segment("MSH")(10), flush=True)

    rx = Hl7Receiver(args.host, args.port, ack_code=args.ack_code, on_message=show).start()
    print(f"LISTENING {rx.host}:{rx.port}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        rx.stop()


if __name__ == "__main__":
    main()
