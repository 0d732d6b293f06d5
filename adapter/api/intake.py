"""``POST /reviews`` off the serving event loop, with the note after the answer.

What must happen before the 202: validation (a refusal is 422 with field paths), the version
check (a stale version is 409), mapping, and the version with its FHIR rows, HL7 order rows and
timers stored in one transaction. The review note (a PDF rendered by WeasyPrint, MDM/ORU built
by hl7apy; about a second of CPU) is not needed for that answer, so it is stored as a note job
row in the same transaction and built afterwards by the delivery worker
(``adapter.review.note_job``); ``GET /reviews/{id}`` shows its state.

The submission runs on a worker thread (anyio's, as Starlette's threadpool) with a pooled store
connection (:mod:`adapter.api.store_pool`), so the serving loop keeps answering while the store
commits. The submission is async code (it may search the FHIR server for the study); on the
worker thread it runs in a short-lived event loop of its own, and its FHIR requests are handed
to the process's one FHIR client on the serving loop (:class:`ServingLoopFhir`), whose
connection pool belongs to that loop.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Mapping
from pathlib import Path

from adapter.api.store_pool import StorePool
from adapter.config import Settings
from adapter.fhir.client import FhirClient, FhirResponse
from adapter.jobs.review import submit_review_async
from adapter.mapping.review_input import ReviewInput
from adapter.review.service import SubmitResult
from adapter.store.outbox import Outbox
from adapter.tables import Tables


class ServingLoopFhir(FhirClient):
    """The process's FHIR client as seen from another thread's event loop: each request runs
    on the serving loop (where the client's httpx pool lives) and its answer is awaited here."""

    def __init__(self, client: FhirClient, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(client.base_url)
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
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call, self._loop))

    async def aclose(self) -> None:
        """Not this wrapper's to close: the serving process owns the client."""


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

    def submit(store: Outbox) -> SubmitResult:
        return asyncio.run(
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
