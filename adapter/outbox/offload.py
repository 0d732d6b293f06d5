"""Store calls off the event loop: one connection, one thread, one call at a time.

The store's methods are synchronous (sqlite3, psycopg): a write can wait seconds for another
process's lock, and a commit fsyncs. Inside ``rtplan serve`` one event loop runs every part
(the MLLP listener, the HTTP API, the C-STORE receiver's study processing, the outbox worker,
the escalation check), so a store call made on the loop would stall all of them.

A :class:`StoreThread` owns one connection: it is opened, used and closed on the thread's one
worker (a ``ThreadPoolExecutor`` of size one), so calls are serialised the way the connection
needs (a SQLite connection stays on the thread that made it) and the loop only awaits them.
Commands that run one job and nothing else (``rtplan ingest``, ``rtplan outbox deliver``)
use :data:`INLINE`: their loop has nothing else to do while the store works.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, Protocol, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class StoreCalls(Protocol):
    """How a job runs a synchronous store call."""

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T: ...


class Inline:
    """On the loop's own thread (a command with nothing else to serve)."""

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        return fn(*args, **kwargs)


INLINE = Inline()


class StoreThread:
    """Calls on one store connection, one at a time, on a thread of its own."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rtplan-{name}")

    async def run(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on the store thread. A cancelled caller does not cancel the
        call: a store call is one transaction and finishes (or rolls back) on its own."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def aclose(self) -> None:
        """Wait for the call in progress (if any), then end the thread."""
        await asyncio.to_thread(self._executor.shutdown, wait=True)
