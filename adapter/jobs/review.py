"""The review-submission job: validate, map, store the version and its rows, deliver.

The one entry point for the CLI (``rtplan review submit``), the HTTP API and the Python API.
It runs in the caller's event loop with the process's FHIR client (``fhir``): finding the
study, the previous note version and the EHR's Patient, and delivering, all use that client.
The workflow itself (versions, orders, the note) is :mod:`adapter.review.service`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter.config import Settings
from adapter.errors import ConfigError
from adapter.jobs.deliver import deliver as deliver_rows
from adapter.jobs.deliver import targets
from adapter.jobs.fhir import fhir_session
from adapter.mapping.review_input import ReviewInput, parse_review
from adapter.review.service import SubmitResult, store_version
from adapter.store.location import open_outbox
from adapter.store.protocol import Store
from adapter.tables import Tables, load_tables

if TYPE_CHECKING:
    import httpx

    from adapter.fhir.client import FhirClient


async def submit_review_async(
    data: Mapping[str, Any] | ReviewInput,
    settings: Settings,
    *,
    out_dir: Path | None = None,
    tables: Tables | None = None,
    deliver: bool = True,
    fhir: FhirClient | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    outbox: Store | None = None,
    note_job: bool = False,
) -> SubmitResult:
    """Validate, map, enqueue (one row per destination, plus HL7 cancel rows) and deliver.

    ``fhir`` is the process's client for ``fhir.base_url``; without one (a script calling
    this directly) the job opens its own for the call, on ``transport`` when given.
    ``outbox``: an open store connection to use (the API's), else one is opened for the call.
    ``note_job``: the review note becomes its own outbox job, built after this returns
    (``adapter.review.note_job``; the API), instead of being rendered here (the CLI).

    Raises:
        ReviewError: the review is invalid (each problem names its field).
        UnknownStudyError: the study is not known.
        ConfigError: neither an output folder nor a FHIR server is configured.
    """
    how = _How(out_dir, tables, deliver, outbox, note_job)
    if fhir is None and settings.fhir.base_url:
        async with fhir_session(settings, transport=transport) as own:
            return await _submit(data, settings, how, own)
    return await _submit(data, settings, how, fhir)


@dataclass(frozen=True, slots=True)
class _How:
    out_dir: Path | None
    tables: Tables | None
    deliver: bool
    outbox: Store | None
    note_job: bool


async def _submit(
    data: Mapping[str, Any] | ReviewInput,
    settings: Settings,
    how: _How,
    fhir: FhirClient | None,
) -> SubmitResult:
    out_dir, deliver = how.out_dir, how.deliver
    tables = how.tables or load_tables(settings.mappings_dir)
    review = parse_review(data, tables)
    destinations = targets(settings, out_dir)
    if not destinations:
        raise ConfigError("--out", "give an output folder (--out DIR) or a FHIR server")
    with (
        contextlib.nullcontext(how.outbox)
        if how.outbox is not None
        else open_outbox(settings, out_dir)
    ) as outbox:
        stored = await store_version(
            outbox,
            review,
            settings,
            tables,
            destinations,
            fhir=fhir,
            out_dir=out_dir,
            note_job=how.note_job,
        )
        if stored is None:  # this very version was accepted before: a resend, nothing to do
            return SubmitResult(review.review_id, review.version, {}, "", unchanged=True)
        output, ids, cancels, notes = stored
        report = None
        if deliver:
            report = await deliver_rows(
                outbox,
                settings,
                ids=[*ids, *cancels, *notes],
                out_dir=out_dir,
                fhir=fhir,
            )
    return SubmitResult(
        review.review_id,
        review.version,
        output.bundle,
        output.placer,
        tuple(ids),
        tuple(cancels),
        report,
        note_rows=tuple(notes),
    )


def submit_review(
    data: Mapping[str, Any] | ReviewInput,
    settings: Settings,
    *,
    out_dir: Path | None = None,
    tables: Tables | None = None,
    deliver: bool = True,
) -> SubmitResult:
    """Synchronous :func:`submit_review_async` (for scripts and the CLI): one event loop, one
    FHIR client for the whole submission."""
    return asyncio.run(
        submit_review_async(data, settings, out_dir=out_dir, tables=tables, deliver=deliver)
    )
