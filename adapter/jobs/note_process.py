"""A child process for the review note's CPU work, for a long-running delivery worker.

Building one note version costs about 0.2-0.5 s of Python CPU (the MDM/ORU messages by
hl7apy, the PDF by WeasyPrint, then a full garbage collection). On a thread of ``rtplan
serve`` it holds the GIL that long: the API's answers wait for it, and so do the delivery
worker's store transactions, during which SQLite's one write lock is held and every other
process's writes (another instance's ``POST /reviews``) wait too. So a long-running worker
runs the note job's two synchronous steps in one child process instead (``docs/operations.md``,
"The review note, after the answer"); one-shot commands keep them on worker threads.

The child is started with ``spawn`` (never ``fork``: the parent has threads and an event loop),
once, on the first job. It opens its own store connection per step, so it holds no lock
between steps. Its answers are plain values (:class:`adapter.outbox.worker.Attempt`, or the
prepared note): an exception from the note code is turned into the job's answer in the child,
because the adapter's exceptions do not survive pickling. If the child dies (a native crash in
a PDF library), the job is tried once more in a new child, then answered ``retry``.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class NoteProcess:
    """One child process that runs note steps; replaced when it dies."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn")
            )
        return self._pool

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in the child (both picklable); a dead child is replaced once."""
        loop = asyncio.get_running_loop()
        for attempt in (1, 2):
            try:
                return await loop.run_in_executor(self._executor(), partial(function, *args))
            except BrokenProcessPool:
                log.warning("the note process stopped; starting a new one (attempt %d)", attempt)
                await asyncio.to_thread(self._discard)
        raise NoteProcessStopped("the note process stopped twice")

    def _discard(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        """Stop the child (waits for a step in progress)."""
        self._discard()


class NoteProcessStopped(RuntimeError):
    """The child process died on the same job twice."""


__all__ = ["NoteProcess", "NoteProcessStopped"]
