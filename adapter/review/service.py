"""Submit an oncologist review: validate, find the study, map, enqueue, deliver.

The one entry point for the CLI, the Python API and (later) the HTTP API.

Outbox keys: a review's rows use the key of its study, ``study:<Study Instance UID>``, not
``review:<id>``. The outbox serialises rows per key and destination, so a review can never
overtake its study's ingest Bundle (its conditional references to the ImagingStudy and the
review Task would fail), an amendment never overtakes the original, and two submissions of
the same review never run concurrently (conditional create is not atomic on common servers,
HAPI #3141). The review id stays the idempotency key inside FHIR (the DiagnosticReport's
identifier) and in the row label.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter.config import Settings
from adapter.errors import TransportError
from adapter.fhir.transaction_payload import KIND_REVIEW
from adapter.hl7.order_payload import KIND_CANCEL
from adapter.hl7.profiles import receivers_dir
from adapter.mapping.identifiers import (
    DICOM_UID_SYSTEM,
    V2_0203,
    conditional_url,
    patient_identifier,
    token,
)
from adapter.mapping.narrative import with_narratives
from adapter.mapping.review_bundle import (
    PLACER_SYSTEM,
    REVIEW_SYSTEM,
    ReviewOptions,
    ReviewOutput,
    StudyContext,
    finding_key,
    review_bundle,
)
from adapter.mapping.review_input import ReviewInput, UnknownStudyError, parse_review
from adapter.mapping.review_task import REVIEW_TASK_SYSTEM, review_task_value
from adapter.private import log_key
from adapter.review.note.service import (
    NoteRecords,
    NoteRows,
    apply_note,
    note_records,
    plan_note,
    prepare_note_rows,
    store_note,
    with_server_previous,
)
from adapter.review.note_job import deferrable, job_row, note_outputs
from adapter.review.patient_check import patient_disagreement
from adapter.review.versions import (
    Decision,
    StaleReviewError,
    accepted_record,
    content_hash,
    decide,
)
from adapter.store.location import store_exists, store_location
from adapter.store.outbox import NewRow, Outbox
from adapter.store.protocol import Store
from adapter.store.studies import StudyRecord
from adapter.tables import Tables, load_tables

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient
    from adapter.outbox.worker import DrainReport
    from adapter.review.order_rows import PreparedOrder

JSON = dict[str, Any]
KIND_HL7_CANCEL = KIND_CANCEL
HL7 = "hl7"
UNKNOWN_STUDY = (
    "/study_instance_uid",
    "unknown study: not mapped by this adapter and not found on the FHIR server",
)


@dataclass(frozen=True, slots=True)
class SubmitResult:
    review_id: str
    version: int
    bundle: JSON
    placer_order_number: str
    row_ids: tuple[int, ...] = ()
    hl7_rows: tuple[int, ...] = ()
    delivery: DrainReport | None = None
    unchanged: bool = False  # this version was accepted before: nothing enqueued
    note_rows: tuple[int, ...] = ()  # the note's rows, or its job row (adapter/review/note_job)


def review_options(settings: Settings) -> ReviewOptions:
    r = settings.review
    return ReviewOptions(
        owner_type=r.default_owner_type,
        owner_system=r.default_owner_system,
        owner_value=r.default_owner_value,
        owner_display=r.default_owner_display,
        radiology_system=r.radiology_org_system,
        radiology_value=r.radiology_org_value,
        radiology_display=r.radiology_org_display,
        radiology_due_days=r.radiology_due_days,
        radiology_due_days_urgent=r.radiology_due_days_urgent,
    )


def review_label(review: ReviewInput) -> str:
    """Row label and file name: a hash of the review id (never the id itself: it may be an
    order number an analyst should not need) plus the version."""
    return f"Review-{log_key(review.review_id)}-v{review.version}"


# -- what is known about the study ------------------------------------------------------------


def context_from_record(record: StudyRecord | None) -> StudyContext | None:
    """The study as this adapter mapped it, from the store's record of it; None when the
    adapter never mapped it (no record, or a study it held: not a planning scan, incomplete).

    The subject is the conditional reference to the Patient by the identifier the mapping
    used; the review Task is the one the ingest opened, which the review completes.
    """
    if record is None or not record.patient_system:
        return None
    system, value = record.patient_system, record.patient_id
    identifier: JSON = (
        dict(patient_identifier(value, system))
        if record.patient_created
        else {"system": system, "value": value}
    )
    return StudyContext(
        record.study_uid,
        {"reference": conditional_url("Patient", system, value)},
        identifier,
        record.accession,
        record.review_task,
    )


async def _search(client: FhirClient, kind: str, params: Mapping[str, str]) -> list[JSON]:
    response = await client.request("GET", kind, params=params)
    if not response.ok or response.body is None:
        raise TransportError(f"{kind} search: HTTP {response.status}")
    return [e["resource"] for e in response.body.get("entry", []) if "resource" in e]


async def context_from_server(client: FhirClient, study_uid: str, review_id: str) -> StudyContext:
    """The study as the FHIR server knows it.

    Raises:
        UnknownStudyError: no ImagingStudy has this Study Instance UID.
    """
    studies = await _search(
        client, "ImagingStudy", {"identifier": token(DICOM_UID_SYSTEM, f"urn:oid:{study_uid}")}
    )
    if len(studies) != 1:
        raise UnknownStudyError(
            [
                UNKNOWN_STUDY
                if not studies
                else (
                    "/study_instance_uid",
                    "several ImagingStudy resources have this UID: data quality",
                )
            ]
        )
    study = studies[0]
    subject = {"reference": str(study.get("subject", {}).get("reference", ""))}
    patient_identifier = None
    if subject["reference"].startswith("Patient/"):
        response = await client.request("GET", subject["reference"])
        identifiers = (response.body or {}).get("identifier", []) if response.ok else []
        patient_identifier = identifiers[0] if identifiers else None
    tasks = await _search(
        client, "Task", {"identifier": token(REVIEW_TASK_SYSTEM, review_task_value(study_uid))}
    )
    requests = await _search(
        client,
        "ServiceRequest",
        {"requisition": token(REVIEW_SYSTEM, review_id), "status": "active"},
    )
    placers = tuple(
        str(i["value"])
        for r in requests
        for i in r.get("identifier", [])
        if i.get("system") == PLACER_SYSTEM
    )
    accession = next(
        (
            str(i.get("value", ""))
            for i in study.get("identifier", [])
            if any(
                c.get("system") == V2_0203 and c.get("code") == "ACSN"
                for c in i.get("type", {}).get("coding", [])
            )
        ),
        "",
    )
    return StudyContext(
        study_uid, subject, patient_identifier, accession, tasks[0] if tasks else None, placers
    )


async def resolve_context(
    review: ReviewInput, outbox: Store | None, fhir: FhirClient | None
) -> StudyContext:
    """Outbox first (what this adapter mapped), then the FHIR server (through the process's
    client, when there is one), else UnknownStudyError."""
    if outbox is not None:
        found = context_from_record(outbox.study(review.study_instance_uid))
        if found is not None:
            return found
    if fhir is not None:
        return await context_from_server(fhir, review.study_instance_uid, review.review_id)
    raise UnknownStudyError([UNKNOWN_STUDY])


# -- the entry points -------------------------------------------------------------------------


def build_review(
    review: ReviewInput, ctx: StudyContext, settings: Settings, tables: Tables
) -> ReviewOutput:
    output = review_bundle(review, ctx, tables, review_options(settings))
    output = replace(output, bundle=with_narratives(output.bundle))
    if review.concern_withdrawn and not output.hl7_cancels:
        raise UnknownStudyError(
            [("/concern_withdrawn", "no radiology request of this review is known to withdraw")]
        )
    return output


async def store_version(
    outbox: Store,
    review: ReviewInput,
    settings: Settings,
    tables: Tables,
    destinations: list[tuple[str, str]],
    *,
    fhir: FhirClient | None,
    out_dir: Path | None = None,
    note_job: bool = False,
) -> tuple[ReviewOutput, list[int], list[int], list[int]] | None:
    """Check the version, map, and store the review's rows (FHIR, HL7 and their timers) with
    the new version record in one transaction (docs/review.md section 4); None when this very
    version is already accepted.

    ``note_job``: instead of rendering the review note here, store one note job row with the
    version (``adapter.review.note_job``; the API's path), when the review's Bundle does not
    depend on the note; the last list returned then holds the job row's id.

    Mapping needs the FHIR server (outside the write lock), so the record is read again under
    the lock: if another submission of this review was accepted meanwhile, map again.

    Raises:
        StaleReviewError: an older version, or the same version with other content.
    """
    versions = outbox.reviews()
    digest = content_hash(review)
    key = f"study:{review.study_instance_uid}"
    for _ in range(3):
        stored = versions.get(review.review_id)
        if decide(stored, review, digest) is Decision.UNCHANGED:
            return None
        ctx = await resolve_context(review, outbox, fhir)
        if stored is not None:  # the record knows which requests exist: it wins
            ctx = replace(ctx, previous_placers=stored.active_placers, request_opened=stored.opened)
        later = note_job and deferrable(settings, out_dir=out_dir is not None)
        note = None
        if later:  # the note is its own job after the answer (adapter/review/note_job.py)
            output = build_review(review, ctx, settings, tables)
        else:  # the review note (issue 15): rendered once per version, in the chosen outputs,
            # from the store's records of the study and of the review's earlier notes.
            records = note_records(outbox, review)
            note = plan_note(review, ctx, settings, tables, records, out_dir=out_dir)
            note = await with_server_previous(note, fhir)
            output = apply_note(build_review(review, ctx, settings, tables), note, tables)
        # The HL7 rows are built (and can refuse) before anything is stored; then the review's
        # FHIR rows, its HL7 rows and their timers are stored together (order_rows.py).
        orders = await _prepare_orders(
            outbox, review, output, ctx, settings, tables, destinations, fhir
        )
        label = review_label(review)
        # The note's rows too are built (and can refuse) before anything is stored.
        notes_to_store: NoteRows | NewRow = (
            job_row(review, digest, ctx, key, note_outputs(settings, out_dir=out_dir))
            if note is None
            else prepare_note_rows(
                outbox, note, settings, tables, destinations, key=key, label=label
            )
        )
        review_rows = [
            NewRow(d, t, key, KIND_REVIEW, label, output.bundle) for d, t in destinations
        ]
        with outbox.transaction():
            now = versions.get(review.review_id)
            if (now and (now.version, now.content_hash)) != (
                stored and (stored.version, stored.content_hash)
            ):
                continue
            ids, cancels = _enqueue_review(outbox, key, review_rows, orders)
            notes = (
                outbox.enqueue_many([notes_to_store])
                if isinstance(notes_to_store, NewRow)
                else store_note(outbox, notes_to_store)
            )
            revoked = tuple(str(c["placer_order_number"]["value"]) for c in output.hl7_cancels)
            findings = tuple(sorted({finding_key(f) for f in review.findings}))
            versions.accept(
                accepted_record(
                    review, digest, stored, placer=output.placer, findings=findings, revoked=revoked
                )
            )
            return output, ids, cancels, notes
    raise StaleReviewError(
        [("/version", "other versions of this review kept arriving at the same time; resubmit")]
    )


async def _prepare_orders(
    outbox: Store,
    review: ReviewInput,
    output: ReviewOutput,
    ctx: StudyContext,
    settings: Settings,
    tables: Tables,
    destinations: list[tuple[str, str]],
    fhir: FhirClient | None,
) -> list[PreparedOrder]:
    # Lazy (downward) for start-up time only: hl7apy, loaded when a review has an order.
    from adapter.review.order_rows import held, prepare_orders

    if not output.placer and not output.hl7_cancels:
        return []
    orders = prepare_orders(
        outbox,
        review,
        output,
        ctx,
        settings,
        tables,
        destinations,
        receivers=receivers_dir(settings),
        now=datetime.now(UTC),
    )
    record = outbox.study(review.study_instance_uid)
    fields = await patient_disagreement(fhir, ctx.patient_identifier, record)
    return held(orders, fields)


def _enqueue_review(
    outbox: Store, key: str, review_rows: list[NewRow], orders: list[PreparedOrder]
) -> tuple[list[int], list[int]]:
    if not orders:
        with outbox.batch() as batch:
            return [batch.enqueue(row) for row in review_rows], []
    from adapter.review.order_rows import enqueue_review  # lazy for start-up time: hl7apy

    return enqueue_review(outbox, key, review_rows, orders)


def preview_review(
    data: Mapping[str, Any] | ReviewInput,
    settings: Settings,
    *,
    out_dir: Path | None = None,
    tables: Tables | None = None,
) -> ReviewOutput:
    """The Bundle (and HL7 cancel requests) a submission would write; sends nothing.

    Reads the outbox (when its file exists) and the FHIR server to find the study.
    """
    tables = tables or load_tables(settings.mappings_dir)
    review = parse_review(data, tables)
    ctx, records = _preview_context(review, settings, out_dir)
    # The review note too (presentedForm, or the DocumentReference in the report's place), so
    # the preview is exactly the Bundle a submission would write.
    note = plan_note(review, ctx, settings, tables, records, out_dir=out_dir)
    return apply_note(build_review(review, ctx, settings, tables), note, tables)


def _preview_context(
    review: ReviewInput, settings: Settings, out_dir: Path | None
) -> tuple[StudyContext, NoteRecords]:
    """The study as known to the outbox (if its file exists) or the FHIR server, and the
    store's records for the review's note; reads only."""
    location = store_location(settings, out_dir)
    outbox = Outbox(location) if store_exists(location) else None
    try:
        ctx = asyncio.run(_resolve_with_own_client(review, settings, outbox))
        stored = outbox.reviews().get(review.review_id) if outbox else None
        if stored is not None:  # as a submission would see it (section 4 of docs/review.md)
            ctx = replace(ctx, previous_placers=stored.active_placers, request_opened=stored.opened)
        records = note_records(outbox, review)
    finally:
        if outbox is not None:
            outbox.close()
    return ctx, records


async def _resolve_with_own_client(
    review: ReviewInput, settings: Settings, outbox: Store | None
) -> StudyContext:
    """For the synchronous previews (one command, one loop): a client only if the outbox does
    not know the study."""
    if not settings.fhir.base_url:
        return await resolve_context(review, outbox, None)
    from adapter.fhir.connect import fhir_client  # lazy for start-up time: httpx, PyJWT

    async with fhir_client(settings.fhir) as client:
        return await resolve_context(review, outbox, client)


def _preview_record(
    review: ReviewInput, settings: Settings, out_dir: Path | None
) -> StudyRecord | None:
    """The study's record (patient and procedure ids from its DICOM headers), if stored."""
    location = store_location(settings, out_dir)
    if not store_exists(location):
        return None
    with Outbox(location) as outbox:
        return outbox.study(review.study_instance_uid)


def preview_orders(
    data: Mapping[str, Any] | ReviewInput,
    settings: Settings,
    *,
    out_dir: Path | None = None,
    tables: Tables | None = None,
) -> list[str]:
    """The HL7 message(s) a submission would send (MSH-10 ``PREVIEW``); sends nothing."""
    # Lazy (downward) for start-up time only: hl7apy.
    from adapter.hl7.preview import preview
    from adapter.review.orders import order_payloads, study_facts

    tables = tables or load_tables(settings.mappings_dir)
    review = parse_review(data, tables)
    ctx, _ = _preview_context(review, settings, out_dir)
    record = _preview_record(review, settings, out_dir)
    output = build_review(review, ctx, settings, tables)
    facts = study_facts(record)
    payloads = order_payloads(
        review,
        output,
        ctx,
        facts,
        tables,
        profile=settings.hl7.receiver,
        namespace=settings.hl7.placer_namespace,
        fhir_targets=[],
        already_ordered={},
    )
    now = datetime.now(UTC)
    return [
        preview(payload.order, settings.hl7.receiver, receivers_dir(settings), now=now)
        for _, payload in payloads
    ]
