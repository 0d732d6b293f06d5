"""The HTTP API (FastAPI). The OpenAPI document is published as ``docs/openapi.json``.

Every route but ``/healthz`` and ``/readyz`` needs ``Authorization: Bearer <token>`` with a
token from ``http.tokens_file``; without tokens every such request is refused (401). Answers
carry UIDs, states and FHIR ids, never names, birth dates or other patient data.

``POST /reviews`` validates and stores the review (and its radiology order) in the outbox and
answers 202 with the review's location; delivery runs in the background (in this process, or
in another one when ``serve.delivery`` is off here), so ``GET /reviews/{id}`` shows it progress
to "delivered" and the order's ACK. The review note (PDF, DocumentReference, MDM/ORU) is built
after the answer, as a job of its own: ``GET /reviews/{id}`` shows each version's note state
(``notes``); a failed build is a dead job row that ``POST /outbox/{id}/retry`` runs again.

Store calls run on worker threads with pooled connections, never on the serving event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from adapter.api.guards import Guard, load_tokens, token_accepted
from adapter.api.metrics import metrics_text
from adapter.api.store_pool import StorePool
from adapter.config import Settings
from adapter.errors import ConfigError
from adapter.jobs.deliver import deliver
from adapter.jobs.fhir import fhir_session, read_capabilities
from adapter.mapping.review_input import ReviewError, ReviewInput, parse_review
from adapter.private import log_key
from adapter.review.note_job import BUILT, KIND_NOTE_JOB, SUPERSEDED, is_note_row, job_label
from adapter.review.versions import StaleReviewError
from adapter.store.location import store_location
from adapter.store.orders import OrderRecord
from adapter.store.outbox import Outbox, Row, State
from adapter.store.protocol import Store
from adapter.store.studies import StudyRecord
from adapter.tables import Tables, load_tables

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient

ORDER_KINDS = ("hl7-order", "hl7-cancel")
REVIEW_SCHEMA = "#/components/schemas/ReviewInput"  # docs/review.schema.json
Stats = Callable[[], dict[str, int]]
RowId = Annotated[int, PathParam(ge=1, le=2**63 - 1)]  # SQLite INTEGER range


class RowState(BaseModel):
    id: int
    destination: str
    kind: str
    label: str
    state: str
    attempts: int
    last_error: str
    result: dict[str, Any] | None


class Accepted(BaseModel):
    review: str
    version: int
    rows: list[int]


class NoteState(BaseModel):
    """The review note of one version (adapter/review/note_job.py)."""

    version: int
    # building (queued or being built) | built (its rows queued: see ``rows``) |
    # superseded (a newer version came first; its note is the one sent) |
    # failed (see ``last_error``; POST /outbox/{job}/retry builds it again) | inline (built
    # with the submission: the CLI, or a site whose review Bundle needs the note)
    state: str
    job: int | None
    last_error: str
    rows: list[RowState]


class ReviewState(BaseModel):
    review: str
    versions: list[int]
    rows: list[RowState]
    orders: list[RowState]
    notes: list[NoteState] = []


class LabelState(BaseModel):
    state: str  # none | sent | accepted | failed
    kos_instance_number: int | None
    superseded: int


class EvidenceState(BaseModel):
    rule: str
    strength: str  # conclusive | supporting | counter
    text: str  # names series numbers, modalities and rule values, never patient data
    series_uid: str


class ClassificationState(BaseModel):
    """The classifier's decision on the study's newest stored ingest, and why."""

    decision: str  # planning | not-planning | "" (recorded before decisions were kept)
    evidence: list[EvidenceState]


class TransmissionState(BaseModel):
    control_id: str  # MSH-10
    control: str  # ORC-1: NW | XO | CA
    ack: str  # MSA-1, "" until answered
    ack_error: str


class OrderState(BaseModel):
    placer_order_number: str
    receiver: str
    state: str  # queued | sent | acknowledged | resulted | rejected | cancel-queued | cancelled
    transmissions: list[TransmissionState]


class StudyState(BaseModel):
    study_instance_uid: str
    recorded: bool
    rows: list[RowState]
    label: LabelState
    classification: ClassificationState | None = None
    orders: list[OrderState] = []


class Escalation(BaseModel):
    order: str
    kind: str
    due_at: float
    fired_at: float | None
    detail: str


class Health(BaseModel):
    status: str


class Problem(BaseModel):
    detail: str


class FieldProblem(BaseModel):
    loc: str
    msg: str


class ValidationProblem(BaseModel):
    detail: list[FieldProblem]


UNAUTHORIZED: dict[int | str, dict[str, Any]] = {401: {"model": Problem}}


def create_app(
    settings: Settings,
    out_dir: Path | None,
    *,
    tables: Tables | None = None,
    receiver_stats: Stats | None = None,
    fhir: FhirClient | None = None,
    deliver_soon: Callable[[list[int]], None] | None = None,
) -> FastAPI:
    """The API; ``fhir`` is the serving process's FHIR client (``rtplan serve`` passes it):
    readiness and review submissions use it instead of opening their own. ``deliver_soon``
    (``rtplan serve``) hands accepted rows to the process's one outbox worker."""
    tokens = load_tokens(settings.http.tokens_file)
    tables = tables or load_tables(settings.mappings_dir)
    state: dict[str, Any] = {"tasks": set(), "deliver_soon": deliver_soon}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Store connections for the handlers' worker threads (adapter/api/store_pool.py); the
        # first is opened now, so a store that cannot be opened stops the start.
        pool = StorePool(store_location(settings, out_dir))
        try:
            async with contextlib.AsyncExitStack() as stack:
                # Review submissions reach the FHIR server through one client on this loop:
                # the serving process's, or (the API served on its own) one for its life.
                state["fhir"] = fhir
                if fhir is None and settings.fhir.base_url:
                    state["fhir"] = await stack.enter_async_context(fhir_session(settings))
                await pool.run(lambda store: None)
                state["pool"] = pool
                from adapter.api.intake import freeze_startup_heap

                freeze_startup_heap()  # long-lived start-up objects: out of full collections
                yield
                for task in list(state["tasks"]):
                    await task  # a delivery in flight finishes (or is taken up after its lease)
        finally:
            state.pop("pool", None)
            pool.close()

    app = FastAPI(
        title="rtplan adapter API",
        version="1",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description=__doc__,
    )

    def store() -> StorePool:
        found = state.get("pool")
        if not isinstance(found, StorePool):
            raise HTTPException(503, "the store is not open")
        return found

    def authorised(request: Request) -> None:
        if not token_accepted(request.headers.get("authorization"), tokens):
            raise HTTPException(401, "a valid bearer token is required")

    auth = [Depends(authorised)]

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default body repeats the value it refused ("input"): paths, never values.
        kept = [{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in exc.errors()]
        return JSONResponse({"detail": kept}, 422)

    @app.exception_handler(HTTPException)
    async def http_problem(request: Request, exc: HTTPException) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse({"detail": str(exc.detail)}, exc.status_code, headers=headers)

    @app.get("/healthz", response_model=Health)
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: {"model": Problem}})
    async def readyz() -> Any:
        from adapter.api.readiness import readiness_problems  # every dependency, at once

        found = state.get("pool")
        reachable = _store_reachable(found) if isinstance(found, StorePool) else None
        fhir_ready = _fhir_reachable(settings, fhir) if settings.fhir.base_url else None
        problems = await readiness_problems(
            settings, out_dir, None, fhir_ready, store_reachable=reachable
        )
        if problems:
            return JSONResponse({"detail": "; ".join(problems)}, 503)
        return Health(status="ready")

    @app.get("/metrics", dependencies=auth, responses=UNAUTHORIZED, response_class=Response)
    async def metrics() -> Response:
        stats = receiver_stats() if receiver_stats is not None else {}
        body, content_type = await store().run(lambda outbox: metrics_text(outbox, stats))
        return Response(body, media_type=content_type)

    @app.post(
        "/reviews",
        status_code=202,
        dependencies=auth,
        response_model=Accepted,
        responses={
            **UNAUTHORIZED,
            409: {"model": Problem},
            413: {"model": Problem},
            422: {"model": ValidationProblem},
            503: {"model": Problem},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ReviewInput"}}
                },
            }
        },
    )
    async def post_review(request: Request) -> Any:
        try:
            data = json.loads(await request.body())
        except (ValueError, RecursionError):
            return _invalid([("", "not JSON")])
        if not isinstance(data, dict):
            return _invalid([("", "a review must be a JSON object")])
        try:
            review = parse_review(data, tables)
        except ReviewError as exc:
            return _invalid(exc.problems)
        pool = store()
        from adapter.api.intake import submit_off_loop

        try:  # off the serving loop; the note is a job for later (adapter/api/intake.py)
            result = await submit_off_loop(
                review, settings, out_dir, tables, pool, state.get("fhir")
            )
        except StaleReviewError as exc:  # not newer than the accepted version (versions.py)
            detail = "; ".join(message for _, message in exc.problems)
            return JSONResponse({"detail": f"stale version: {detail}"}, 409)
        except ReviewError as exc:  # unknown study
            return _invalid(exc.problems)
        except ConfigError as exc:
            return JSONResponse({"detail": str(exc)}, 503)
        ids = [*result.row_ids, *result.hl7_rows, *result.note_rows]
        _deliver_later(state, settings, pool.location, ids, out_dir)
        location = f"/reviews/{quote(review.review_id, safe='')}"
        body = Accepted(review=review.review_id, version=review.version, rows=ids)
        return JSONResponse(body.model_dump(), 202, headers={"Location": location})

    @app.get(
        "/reviews/{review_id}",
        dependencies=auth,
        response_model=ReviewState,
        responses={**UNAUTHORIZED, 404: {"model": Problem}},
    )
    async def get_review(review_id: str) -> ReviewState:
        found = await store().run(lambda outbox: review_state(outbox, review_id))
        if found is None:
            raise HTTPException(404, "no such review")
        return found

    @app.get(
        "/studies/{study_uid}",
        dependencies=auth,
        response_model=StudyState,
        responses={**UNAUTHORIZED, 404: {"model": Problem}},
    )
    async def get_study(study_uid: str) -> StudyState:
        found = await store().run(lambda outbox: _study_state(outbox, study_uid))
        if found is None:
            raise HTTPException(404, "no such study")
        return found

    @app.get("/outbox", dependencies=auth, response_model=list[RowState], responses=UNAUTHORIZED)
    async def list_outbox(state_: State | None = Query(None, alias="state")) -> list[RowState]:  # noqa: B008
        return await store().run(lambda outbox: [_row(r) for r in outbox.rows(state=state_)])

    @app.post(
        "/outbox/{row_id}/retry",
        dependencies=auth,
        response_model=RowState,
        responses={**UNAUTHORIZED, 404: {"model": Problem}, 409: {"model": Problem}},
    )
    async def retry(row_id: RowId) -> RowState:
        pool = store()
        try:
            row = await pool.run(lambda outbox: outbox.retry(row_id))
        except KeyError:
            raise HTTPException(404, "no such row") from None
        except ValueError as exc:
            raise HTTPException(409, str(exc)) from None
        _deliver_later(state, settings, pool.location, [row.id], out_dir)
        return _row(row)

    @app.get(
        "/escalations", dependencies=auth, response_model=list[Escalation], responses=UNAUTHORIZED
    )
    async def escalations() -> list[Escalation]:
        return await store().run(_escalations)

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return Guard(app, settings.http.max_body_bytes)  # type: ignore[return-value]


def review_state(store: Store, review_id: str) -> ReviewState | None:
    """The review's rows, orders and note states, from the study's rows (its outbox key)."""
    digest = _digest(review_id)
    prefix = f"Review-{digest}-v"
    accepted = store.reviews().get(review_id)
    if accepted is not None:
        study = store.rows_for_key(f"study:{accepted.study_uid}")
    else:  # no version record (a store written before there were any): search by label
        study = [r for r in store.rows(limit=100_000) if r.label.startswith(prefix)]
    rows = [r for r in study if r.label.startswith(prefix)]
    if not rows:
        return None
    versions = sorted({int(r.label[len(prefix) :]) for r in rows})
    orders = [r for k in ORDER_KINDS for r in store.rows_for_key(rows[0].key, kind=k)]
    return ReviewState(
        review=review_id,
        versions=versions,
        rows=[_row(r) for r in rows],
        orders=[_row(r) for r in sorted(orders, key=lambda r: r.id)],
        notes=[n for v in versions if (n := _note_state(study, review_id, v)) is not None],
    )


def _note_state(study: list[Row], review_id: str, version: int) -> NoteState | None:
    label = job_label(review_id, version)
    jobs = [r for r in study if r.kind == KIND_NOTE_JOB and r.label == label]
    rows = [r for r in study if is_note_row(r, review_id, version)]
    if not jobs:
        if not rows:
            return None  # no note outputs chosen
        return NoteState(version=version, state="inline", job=None, last_error="", rows=[
            _row(r) for r in rows])  # fmt: skip
    job = jobs[-1]  # the newest, should an analyst have replayed one
    if job.state is State.DELIVERED:
        superseded = (job.result or {}).get("note") == SUPERSEDED
        note = "superseded" if superseded else "built"
    elif job.state is State.DEAD:
        note = "failed"
    else:
        note = "building"
    return NoteState(
        version=version,
        state=note,
        job=job.id,
        last_error=job.last_error,
        rows=[_row(r) for r in rows],
    )


def _study_state(store: Store, study_uid: str) -> StudyState | None:
    rows = store.rows_for_key(f"study:{study_uid}")
    record = store.study(study_uid)
    recorded = record is not None
    if not rows and not recorded:
        return None
    label = store.labels().status(study_uid)
    return StudyState(
        study_instance_uid=study_uid,
        recorded=recorded,
        rows=[_row(r) for r in rows],
        label=LabelState(
            state=label.state.value,
            kos_instance_number=label.current.instance_number if label.current else None,
            superseded=label.superseded,
        ),
        classification=_classification(record) if record is not None else None,
        orders=[_order(o) for o in store.orders_for_study(study_uid)],
    )


def _escalations(store: Store) -> list[Escalation]:
    timers = store.timers()
    return [
        Escalation(order=t.key, kind=t.kind, due_at=t.due_at, fired_at=t.fired_at, detail=t.detail)
        for t in [*timers.fired(), *timers.open()]
    ]


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    review = ReviewInput.model_json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(review.pop("$defs", {}))
    components["ReviewInput"] = review
    schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    schema["security"] = [{"bearer": []}]
    for path in ("/healthz", "/readyz"):
        schema["paths"][path]["get"]["security"] = []
    app.openapi_schema = schema
    return schema


def openapi_document(settings: Settings) -> dict[str, Any]:
    """The document published as ``docs/openapi.json``."""
    guard = create_app(settings, None)
    app: FastAPI = guard.app  # type: ignore[attr-defined]
    return app.openapi()


async def _store_reachable(pool: StorePool) -> bool:
    """The store answers a read (on a worker thread, within 5 s)."""
    try:
        await asyncio.wait_for(pool.run(lambda store: store.counts()), timeout=5.0)
    except Exception:  # any store failure means not ready
        return False
    return True


async def _fhir_reachable(settings: Settings, fhir: FhirClient | None) -> bool:
    """The configured FHIR server answers its CapabilityStatement (within 5 s)."""

    async def ask() -> None:
        if fhir is not None:
            await read_capabilities(fhir)
            return
        async with fhir_session(settings) as own:  # the API served on its own (tests, scripts)
            if own is not None:
                await read_capabilities(own)

    try:
        await asyncio.wait_for(ask(), timeout=5.0)
    except Exception:  # unreachable, refused, timed out, not FHIR: not ready either way
        return False
    return True


def _invalid(problems: list[tuple[str, str]]) -> JSONResponse:
    detail = [{"loc": path or "/", "msg": message} for path, message in problems]
    return JSONResponse({"detail": detail}, 422)


def _digest(review_id: str) -> str:
    return log_key(review_id)


def _row(row: Row) -> RowState:
    return RowState(
        id=row.id,
        destination=row.destination,
        kind=row.kind,
        label=row.label,
        state=row.state.value,
        attempts=row.attempts,
        last_error=row.last_error,
        result=json.loads(json.dumps(row.result)) if row.result is not None else None,
    )


def _deliver_later(
    state: dict[str, Any],
    settings: Settings,
    location: Path | str,
    ids: list[int],
    out_dir: Path | None,
) -> None:
    """Queue ``ids`` for the one background drainer: requests arriving while it delivers are
    taken in its next batch, so a burst of reviews shares one delivery set-up."""
    if not ids or not settings.serve.delivery:
        return  # serve.delivery off: another process's worker delivers them
    if state.get("deliver_soon") is not None:  # rtplan serve: its worker, on this loop
        state["deliver_soon"](ids)
        return
    state.setdefault("pending", []).extend(ids)
    drainer = state.get("drainer")
    if drainer is None or drainer.done():
        task = asyncio.create_task(_drain(state, settings, location, out_dir))
        state["drainer"] = task
        state["tasks"].add(task)
        task.add_done_callback(state["tasks"].discard)


async def _drain(
    state: dict[str, Any], settings: Settings, location: Path | str, out_dir: Path | None
) -> None:
    while state.get("pending"):
        batch, state["pending"] = state["pending"], []
        # On its own thread, loop and store connection: delivery (file writes, fsyncs, peers,
        # note jobs) does not hold up the requests being answered. Only where the app runs
        # without ``rtplan serve`` (which hands rows to its one worker, ``deliver_soon``).
        # A daemon thread, not the default executor: a delivery waiting out a peer's retry
        # policy must not keep the process from exiting; its rows stay in the store, leased,
        # and are delivered after the lease (docs/delivery.md).
        await _on_daemon_thread(_deliver_batch, settings, location, batch, out_dir)


async def _on_daemon_thread(call: Callable[..., None], *args: Any) -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if not done.done():
            done.set_result(None) if error is None else done.set_exception(error)

    def run() -> None:
        error: BaseException | None = None
        try:
            call(*args)
        except BaseException as exc:  # handed to the awaiting task, raised there
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            loop.call_soon_threadsafe(settle, error)

    threading.Thread(target=run, name="api-delivery", daemon=True).start()
    await done


def _deliver_batch(
    settings: Settings, location: Path | str, ids: list[int], out_dir: Path | None
) -> None:
    """Deliver ``ids``, then the rows the note jobs among them queued (a job stores its
    note's rows itself, after its version check: adapter/jobs/note_job.py)."""
    with Outbox(location) as outbox:
        while ids:
            asyncio.run(deliver(outbox, settings, ids=ids, out_dir=out_dir))
            ids = [
                int(i)
                for row in map(outbox.get, ids)
                if row.kind == KIND_NOTE_JOB and row.result and row.result.get("note") == BUILT
                for i in row.result.get("rows", [])
            ]


def _classification(record: StudyRecord) -> ClassificationState:
    return ClassificationState(
        decision=record.classification,
        evidence=[
            EvidenceState(rule=e.rule, strength=e.strength, text=e.text, series_uid=e.series_uid)
            for e in record.evidence
        ],
    )


def _order(order: OrderRecord) -> OrderState:
    return OrderState(
        placer_order_number=order.placer,
        receiver=order.receiver,
        state=order.state,
        transmissions=[
            TransmissionState(
                control_id=t.control_id, control=t.control, ack=t.ack_code, ack_error=t.ack_error
            )
            for t in order.transmissions
        ],
    )
