"""Wire the outbox to its deliverers: the FHIR server and the output-folder file writer.

The embedded default and production use one path: ``--out DIR`` is a deliverer like any other,
behind the same outbox, so what works on a laptop is what runs against the EHR.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from adapter.config import Settings, is_loopback
from adapter.errors import ConfigError
from adapter.fhir.transaction_payload import KIND_TRANSACTION, TransactionPayload
from adapter.ingest.pipeline import IngestResult, Status
from adapter.jobs import payload_codecs  # noqa: F401  (the worker reads every kind)
from adapter.jobs.output import bundle_label, write_json_atomic
from adapter.jobs.retry_policies import fhir_policy, label_policy, receiver_policies
from adapter.outbox.offload import INLINE, StoreCalls
from adapter.outbox.worker import Attempt, Deliverer, DrainReport, RetryPolicy, Verdict, Worker
from adapter.review.note_job_payload import NOTE_JOB, NOTE_JOB_TARGET
from adapter.store import payloads
from adapter.store.identity import HeldRow, IngestedStudy, IngestWrite
from adapter.store.outbox import Row
from adapter.store.protocol import Store

if TYPE_CHECKING:
    import httpx

    from adapter.fhir.client import FhirClient

log = logging.getLogger(__name__)

# The FHIR stack (httpx, PyJWT, cryptography) is imported only when a FHIR destination is
# used: it is a fifth of the embedded default's start-up time otherwise.

FILES, FHIR, HL7 = "files", "fhir", "hl7"


class FileDeliverer:
    """Writes each Bundle as ``<dir>/fhir/<label>.json`` (atomic rename)."""

    def __init__(self, out_dir: Path) -> None:
        self.folder = out_dir / "fhir"

    async def deliver(self, row: Row) -> Attempt:
        target = self.folder / f"{row.label}.json"
        try:
            bundle = payloads.read_as(TransactionPayload, row.kind, row.payload).bundle
            # 0600, never through a symlink; fsynced: off the event loop.
            await asyncio.to_thread(write_json_atomic, target, bundle)
        except OSError as exc:
            return Attempt(Verdict.RETRY, f"cannot write the output file: {exc.strerror}")
        except ConfigError as exc:  # a symlink or a file where our folder should be
            return Attempt(Verdict.DEAD, f"refused to write the output file: {exc}")
        return Attempt(Verdict.DELIVERED, result={"file": str(target)})


def targets(settings: Settings, out_dir: Path | None) -> list[tuple[str, str]]:
    found = []
    if out_dir is not None:
        found.append((FILES, str(out_dir.resolve())))
    if settings.fhir.base_url:
        found.append((FHIR, settings.fhir.base_url))
    return found


def enqueue(outbox: Store, result: IngestResult, to: Iterable[tuple[str, str]]) -> list[int]:
    """One outbox row per mapped study and destination, keyed by the Study Instance UID, all
    stored in one transaction with the record (patient, order) of every study read; a study
    whose patient disagrees is held instead (see :func:`enqueue_ingest`)."""
    return enqueue_ingest(outbox, result, to).ids


def enqueue_ingest(
    outbox: Store, result: IngestResult, to: Iterable[tuple[str, str]]
) -> IngestWrite:
    """As :func:`enqueue`, and say which studies the store held (identity holds by UID)."""
    destinations = list(to)
    studies = [
        IngestedStudy(
            record=study.record,
            status=study.status.value,
            rows=tuple(
                HeldRow(
                    destination=destination,
                    target=target,
                    key=f"study:{study.study_uid}",
                    kind=KIND_TRANSACTION,
                    label=bundle_label(study),
                    payload=study.bundle,
                )
                for destination, target in destinations
                if study.bundle is not None
            ),
            held=study.problem if study.status is Status.HELD_IDENTITY else "",
        )
        for study in result.studies
        if study.record is not None
    ]
    return outbox.record_ingest(studies)


def held_by_store(result: IngestResult, held: Mapping[str, int]) -> IngestResult:
    """The ingest result as stored: a study the store held (another ingest recorded a different
    patient meanwhile) reads as held, not mapped."""
    studies = tuple(
        s
        if s.study_uid not in held or s.status is Status.HELD_IDENTITY
        else replace(
            s,
            status=Status.HELD_IDENTITY,
            problem="patient differs from the one recorded for this study",
        )
        for s in result.studies
    )
    return replace(result, studies=studies)


async def deliver(
    outbox: Store,
    settings: Settings,
    *,
    ids: list[int] | None = None,
    forever: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    out_dir: Path | None = None,
    fhir: FhirClient | None = None,
    calls: StoreCalls = INLINE,
    wake: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> DrainReport:
    """Deliver open rows (all, or ``ids``) until each is delivered, dead or held.

    HL7 rows go over MLLP when ``hl7.mllp`` is set, else into ``out_dir/hl7`` as files (the
    embedded default); without either they wait. ``fhir`` is the process's client for
    ``fhir.base_url`` (see :func:`adapter.jobs.fhir.fhir_session`): rows for that server use
    it; a client is opened here only for rows left for another server, or when none is given.

    ``calls`` runs the store calls (``rtplan serve``: on the connection's own thread, see
    :mod:`adapter.outbox.offload`); ``wake`` and ``stop`` are the forever worker's (see
    :meth:`Worker.drain`).
    """
    async with AsyncExitStack() as stack:
        deliverers: dict[tuple[str, str], Deliverer] = {}
        # The configured destinations always (the FHIR server and the output folder), so a
        # long-running worker delivers rows enqueued after it started, whatever created them
        # (escalations, radiologist results); plus whatever older rows are still waiting for.
        configured = targets(settings, out_dir)
        waiting = await calls.run(outbox.open_targets)
        note_fhir = fhir  # the client for fhir.base_url: note jobs search it for a previous note
        for destination, target in dict.fromkeys([*configured, *waiting]):
            if destination == FILES:
                deliverers[(destination, target)] = FileDeliverer(Path(target))
            elif destination == FHIR and settings.fhir.base_url in ("", target):
                # Downward and lazy for start-up time only: httpx, PyJWT (FHIR destinations).
                from adapter.fhir.connect import fhir_client
                from adapter.fhir.delivery import FhirDeliverer

                if fhir is not None and fhir.base_url == target:
                    client = fhir  # the process's one client: not closed here
                else:
                    # Rows keep the server they were meant for; the settings give auth and
                    # limits.
                    server = replace(settings.fhir, base_url=target)
                    client = await stack.enter_async_context(
                        fhir_client(server, transport=transport)
                    )
                deliverers[(destination, target)] = FhirDeliverer(
                    client, reconcile=settings.fhir.reconcile
                )
                if target == settings.fhir.base_url:
                    note_fhir = client
        # Review note jobs (adapter/review/note_job.py): in a forever worker always, so it runs
        # the jobs the API enqueues after it started; otherwise when one waits. Lazy for
        # start-up time only (the note renderer, pydantic): a plain ingest loads neither.
        if forever or (NOTE_JOB, NOTE_JOB_TARGET) in waiting:
            from adapter.jobs.note_job import NoteJobDeliverer
            from adapter.jobs.note_process import NoteProcess

            # A long-running worker (``rtplan serve``) builds notes in a child process: the GIL
            # stays the API's, and its own store transactions (SQLite's write lock held) are
            # never left waiting for it behind a note's CPU.
            process = None
            if forever:
                process = NoteProcess()
                stack.push_async_callback(asyncio.to_thread, process.close)
            deliverers[(NOTE_JOB, NOTE_JOB_TARGET)] = NoteJobDeliverer(
                outbox, settings, out_dir, fhir=note_fhir, fallback=configured, process=process
            )
        hl7_targets = {t for d, t in waiting if d == HL7}
        if settings.hl7.mllp or out_dir is not None:
            hl7_targets.add(settings.hl7.receiver)
            # The note's MDM/ORU receivers too: a forever worker (``rtplan serve``) must
            # deliver note rows enqueued after it started, not only those waiting then.
            hl7_targets.update(note_receivers(settings, out_dir))
        policies = {FHIR: fhir_policy(settings.fhir), FILES: RetryPolicy()}
        target_policies: dict[tuple[str, str], RetryPolicy] = {}
        if hl7_targets:
            deliverers.update(
                await _hl7_deliverers(stack, outbox, settings, hl7_targets, out_dir, calls)
            )
            # Over MLLP each receiver has its own policy (its profile's max_resends and waits);
            # a resend keeps its MSH-10 and the receiver de-duplicates. .hl7 files: the FHIR one.
            policies[HL7] = fhir_policy(settings.fhir)
            if settings.hl7.mllp:
                target_policies.update(_hl7_policies(settings, hl7_targets))
        # The PACS label KOS (issue 12): files, C-STORE, STOW-RS; the label's own retry policy.
        # Imported only when a label is configured or a label row waits (labelling off: none).
        from adapter.label.service import KOS_FILES, PACS, label_targets

        if label_targets(settings, out_dir) or any(d in (KOS_FILES, PACS) for d, _ in waiting):
            from adapter.label.delivery import pacs_deliverers

            deliverers.update(await pacs_deliverers(stack, settings, waiting, out_dir))
            policies[PACS] = label_policy(settings.label, settings.fhir)
            policies[KOS_FILES] = RetryPolicy()
        # Rows for a destination not configured now (another FHIR server) stay untouched.
        worker = Worker(
            outbox,
            deliverers,
            policies,
            target_policies=target_policies,
            concurrency=settings.fhir.concurrency,
            lease_seconds=settings.outbox.lease_seconds,
            calls=calls,
            wake=wake,
        )
        return await worker.drain(ids=ids, forever=forever, stop=stop)


def note_receivers(settings: Settings, out_dir: Path | None) -> list[str]:
    """The receiver profiles of the review note's HL7 outputs (``note.outputs``: mdm, oru)."""
    note = settings.note
    chosen = note.selected(out_dir=out_dir is not None, mllp=settings.hl7.mllp)
    return [name for output, name in (("mdm", note.mdm_receiver), ("oru", note.oru_receiver))
            if output in chosen]  # fmt: skip


async def _hl7_deliverers(
    stack: AsyncExitStack,
    outbox: Store,
    settings: Settings,
    profile_names: set[str],
    out_dir: Path | None,
    calls: StoreCalls = INLINE,
) -> dict[tuple[str, str], Deliverer]:
    from adapter.hl7.client import MllpClient, client_tls_context
    from adapter.hl7.deliverer import Hl7Deliverer, Hl7FileDeliverer
    from adapter.hl7.document_deliverer import Hl7DocumentDeliverer
    from adapter.hl7.profiles import DOCUMENT_MESSAGES, load_profiles, receivers_dir

    profiles = load_profiles(receivers_dir(settings))
    found: dict[tuple[str, str], Deliverer] = {}
    for name in sorted(profile_names):
        profile = profiles.get(name)
        if profile is None:
            continue  # rows for a profile that no longer exists wait, visibly, in the outbox
        document = profile.message in DOCUMENT_MESSAGES  # the review note (issue 15)
        if settings.hl7.mllp:
            conn = profile.connection
            # hl7.host/port point at the RIS; a document receiver keeps its own address.
            host = conn.host if document else settings.hl7.host or conn.host
            tls = None
            if conn.tls.on_for(host):  # on by default unless the host is loopback
                tls = client_tls_context(conn.tls.ca, certfile=conn.tls.cert, keyfile=conn.tls.key)
            elif not is_loopback(host):
                log.warning(
                    "SECURITY: receiver %s: orders (with PID) go to %s in clear "
                    "(connection.tls.enabled: false)",
                    name,
                    host,
                )
            client = MllpClient(
                host,
                conn.port if document else settings.hl7.port or conn.port,
                connect_timeout=conn.connect_timeout.total_seconds(),
                ack_timeout=conn.ack_timeout.total_seconds(),
                tls=tls,
            )
            await stack.enter_async_context(client)
            found[(HL7, name)] = (
                Hl7DocumentDeliverer(profile, client)
                if document
                else Hl7Deliverer(profile, client, timers=outbox.timers(), calls=calls)
            )
        elif out_dir is not None:
            found[(HL7, name)] = Hl7FileDeliverer(out_dir, profile)
    return found


def _hl7_policies(
    settings: Settings, profile_names: set[str]
) -> dict[tuple[str, str], RetryPolicy]:
    from adapter.hl7.profiles import load_profiles, receivers_dir  # only with HL7 receivers

    return receiver_policies(HL7, load_profiles(receivers_dir(settings)), profile_names)
