"""The API's store connections, used off the event loop.

Every store call is blocking (sqlite3, psycopg): made on the serving loop it holds up every
other request for as long as it takes (an fsync'd commit, a lock wait behind another process).
So the handlers run them on Starlette's threadpool (anyio's worker threads; :meth:`StorePool.run`),
each call with a connection of its own for the call's duration.

Why a pool and not one shared connection: a connection carries its transaction state
(:meth:`adapter.store.db.Database.write` joins an open transaction), so two threads sharing one
would mix their writes into one transaction. Each pooled connection is used by one thread at a
time, which both sqlite3 (opened with ``check_same_thread=False`` for that reason) and psycopg
allow. Connections are opened on demand, up to ``size``, and kept for the next call.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from starlette.concurrency import run_in_threadpool

from adapter.store.outbox import Outbox
from adapter.store.protocol import Store

T = TypeVar("T")


class StorePool:
    """Up to ``size`` connections to the store at ``location``."""

    def __init__(self, location: Path | str, size: int = 4) -> None:
        self.location = location
        self.size = size
        self._idle: queue.LifoQueue[Store] = queue.LifoQueue()
        self._opened: list[Outbox] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def connection(self) -> Iterator[Store]:
        """A connection for this thread alone until the block ends (blocking; not on the loop)."""
        store = self._take()
        try:
            yield store
        finally:
            self._idle.put(store)

    def _take(self) -> Store:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._closed:
                raise RuntimeError("the store pool is closed")
            if len(self._opened) < self.size:
                store = Outbox(self.location, check_same_thread=False)
                self._opened.append(store)
                return store
        return self._idle.get()  # every connection busy: wait for one

    async def run(self, call: Callable[[Store], T]) -> T:
        """``call(connection)`` on a worker thread; the loop keeps serving meanwhile."""
        return await run_in_threadpool(self._call, call)

    def _call(self, call: Callable[[Store], T]) -> T:
        with self.connection() as store:
            return call(store)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            opened, self._opened = self._opened, []
        for store in opened:
            store.close()
