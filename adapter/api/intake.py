"""``POST /reviews`` off the serving event loop, with the note after the answer.

What must happen before the 202: validation (a refusal is 422 with field paths), the version
check (a stale version is 409), mapping, and the version with its FHIR rows, HL7 order rows and
timers stored in one transaction. The review note (a PDF rendered by WeasyPrint, MDM/ORU built
by hl7apy; about a second of CPU) is not needed for that answer, so it is stored as a note job
row in the same transaction and built afterwards by the delivery worker
(``adapter.review.note_job``); ``GET /reviews/{id}`` shows its state.

The submission runs on a worker thread (anyio's, as Starlette's threadpool) with a pooled store
connection (:mod:`adapter.api.store_pool`), so the serving loop keeps answering while the store
commits. The submission is async code, but the only thing it ever awaits is a FHIR request (the
study's context, the prior-order checks). So the worker thread drives the coroutine itself,
with no event loop of its own (:func:`drive`): each FHIR request is handed to the process's one
FHIR client on the serving loop (:class:`ServingLoopFhir`), and the thread blocks on its answer.
The process keeps one event loop and one FHIR client (issue 8; tests/loop_support.py counts).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
from collections.abc import Coroutine, Generator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from adapter.api.store_pool import StorePool
from adapter.config import Settings
from adapter.fhir.client import FhirClient, FhirResponse
from adapter.jobs.review import submit_review_async
from adapter.mapping.review_input import ReviewInput
from adapter.review.service import SubmitResult
from adapter.store.protocol import Store
from adapter.tables import Tables

T = TypeVar("T")


class _OnServingLoop:
    """What a submission awaits for one FHIR request: the request's future on the serving
    loop. :func:`drive` receives it, blocks the worker thread on it and sends back the answer."""

    def __init__(self, future: concurrent.futures.Future[FhirResponse]) -> None:
        self.future = future

    def __await__(self) -> Generator[_OnServingLoop, Any, FhirResponse]:
        answer: FhirResponse = yield self
        return answer


class ServingLoopFhir(FhirClient):
    """The process's one FHIR client as seen from a worker thread: each request runs on the
    serving loop, where the client's connection pool lives. A view, not a second client:
    it opens no connections of its own (``FhirClient.__init__`` is not run)."""

    def __init__(self, client: FhirClient, loop: asyncio.AbstractEventLoop) -> None:
        # Only the fields callers read; the HTTP pool stays the serving client's.
        self.base_url = client.base_url
        self._client = None
        self._serving = client
        self._loop = loop

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: dict[str, object] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> FhirResponse:
        call = self._serving.request(method, path, json_body=json_body, params=params)
        return await _OnServingLoop(asyncio.run_coroutine_threadsafe(call, self._loop))

    async def aclose(self) -> None:
        """Not this view's to close: the serving process owns the client."""


def drive(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to its end on this (worker) thread without an event loop: it may await only
    FHIR requests through :class:`ServingLoopFhir`, whose answers come from the serving loop."""
    answer: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = coro.throw(error) if error is not None else coro.send(answer)
        except StopIteration as done:
            result: T = done.value
            return result
        answer, error = None, None
        if not isinstance(step, _OnServingLoop):
            coro.close()
            raise RuntimeError("a review submission awaited something other than a FHIR request")
        try:
            answer = step.future.result()
        except BaseException as exc:  # the request's own error, raised where it was awaited
            error = exc


async def submit_off_loop(
    review: ReviewInput,
    settings: Settings,
    out_dir: Path | None,
    tables: Tables,
    pool: StorePool,
    fhir: FhirClient | None,
) -> SubmitResult:
    """``submit_review_async(..., deliver=False, note_job=True)`` on a worker thread with a
    pooled store connection; raises what it raises."""
    loop = asyncio.get_running_loop()
    shared = ServingLoopFhir(fhir, loop) if fhir is not None else None

    def submit(store: Store) -> SubmitResult:
        return drive(
            submit_review_async(
                review,
                settings,
                out_dir=out_dir,
                tables=tables,
                deliver=False,
                fhir=shared,
                outbox=store,
                note_job=True,
            )
        )

    return await pool.run(submit)


def freeze_startup_heap() -> None:
    """Collect once, then move every object alive now (modules, tables, the app) out of the
    collector's reach (``gc.freeze``). Rendering a note's PDF ends with a full collection
    (``adapter.note.render``), whose cost grows with every object in the process; it now runs
    in the note job, which in ``rtplan serve`` shares this process. Objects created later are
    still collected as usual."""
    gc.collect()
    gc.freeze()
