"""``POST /reviews`` off the serving event loop.

Accepting a review is CPU work before the answer: mapping, the review note (a PDF rendered by
weasyprint, MDM and ORU messages built with hl7apy) and the fsync'd commit, about 1 s of CPU on
the benchmark machine (docs/benchmarks.md, "Service mode"). It must finish before the answer,
because a refusal (422) or a stale version (409) is only known once it has run. Run on the
event loop, it held up every other request for that long: ``/healthz``, ``/readyz``,
``/metrics`` and the GETs waited behind it. Here it runs on a worker thread with its own store
connection (``submit_review_async`` opens one) and its own short-lived event loop, one
submission at a time (two would only share the same CPUs and contend for the SQLite write
lock), while the serving loop keeps answering.

Only without a FHIR server (``fhir.base_url`` empty: the output folder): with one, the review
is mapped against it through the process's one FHIR client, which belongs to the serving loop
(``adapter.jobs.fhir``), so the submission stays on that loop.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from pathlib import Path

from adapter.config import Settings
from adapter.jobs.review import submit_review_async
from adapter.mapping.review_input import ReviewInput
from adapter.review.service import SubmitResult
from adapter.tables import Tables

_one_at_a_time = threading.Lock()


async def submit_off_loop(
    review: ReviewInput, settings: Settings, out_dir: Path | None, tables: Tables
) -> SubmitResult:
    """``submit_review_async(..., deliver=False)`` on a worker thread; raises what it raises."""
    return await asyncio.to_thread(_submit, review, settings, out_dir, tables)


def _submit(
    review: ReviewInput, settings: Settings, out_dir: Path | None, tables: Tables
) -> SubmitResult:
    with _one_at_a_time:
        return asyncio.run(
            submit_review_async(review, settings, out_dir=out_dir, tables=tables, deliver=False)
        )


def freeze_startup_heap() -> None:
    """Collect once, then move every object alive now (modules, tables, the app) out of the
    collector's reach (``gc.freeze``). Rendering a note's PDF ends with a full collection
    (``adapter.note.render``), whose cost grows with every object in the process: on the
    benchmark machine it was a third of each POST /reviews. Objects created later are still
    collected as usual."""
    gc.collect()
    gc.freeze()
