"""Wire the review note into a review submission: render it, put it in the outputs the site
chose (``note.outputs``), and enqueue its FHIR and HL7 rows in the outbox.

Every row uses the study's outbox key (``study:<uid>``), like the review itself, so the outbox
serialises them per destination: a note version never overtakes the previous one, and an MDM
receiver gets T02, then T10/T08, then T11 in that order. HL7 note rows do not wait for the FHIR
rows: the EHR's document feed and its FHIR API are the same record keeper, not radiology.

What the note knows of the study and of its own history comes from the store's records
(issue 8), never from stored payloads: the header from the study record, the version a new one
replaces from the note versions, and what each document receiver already has from the note
messages. The version and its messages are recorded with its rows (:func:`store_note`).
"""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter.config import Settings
from adapter.dicom.charset import person_name
from adapter.errors import ConfigError, TransportError
from adapter.fhir.transaction_payload import KIND_NOTE
from adapter.hl7.document_payload import KIND_DOCUMENT, DocumentPayload
from adapter.hl7.document_profile import DocumentOptions
from adapter.hl7.model import OrderPatient, PatientIdentifier, Provider
from adapter.hl7.profiles import load_profiles, receivers_dir
from adapter.mapping.fhir_text import without_control_characters
from adapter.mapping.imaging_study import GENDER, human_names
from adapter.mapping.narrative import with_narratives
from adapter.mapping.review_bundle import REVIEW_SYSTEM, ReviewOutput, StudyContext
from adapter.mapping.review_input import ReviewInput
from adapter.review.note.facts import build_note, review_document_number, study_record
from adapter.review.note.fhir import (
    RenderedNote,
    note_entries,
    note_full_url,
    previous_note,
    with_presented_form,
)
from adapter.review.note.render import render_pdf, render_text
from adapter.store.notes import NoteMessage, NoteVersion
from adapter.store.outbox import NewRow
from adapter.store.protocol import Store
from adapter.store.studies import StudyRecord
from adapter.tables import Tables

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient
    from adapter.hl7.mdm import DocumentMessage

JSON = dict[str, Any]
HL7 = "hl7"


@dataclass(frozen=True, slots=True)
class NoteRecords:
    """What the store's records say that a note version needs (issue 8)."""

    study: StudyRecord | None = None  # the study's record: the note header, the MDM's PID
    previous: NoteVersion | None = None  # the version a new one replaces (its DocumentReference)


def note_records(outbox: Store | None, review: ReviewInput) -> NoteRecords:
    """The records for ``review``'s note from the store (none without a store)."""
    if outbox is None:
        return NoteRecords()
    return NoteRecords(
        outbox.study(review.study_instance_uid),
        outbox.notes().previous_document(review.review_id, review.version),
    )


@dataclass(frozen=True, slots=True)
class NotePlan:
    """One rendered note version and where it goes."""

    rendered: RenderedNote
    outputs: frozenset[str]
    review: ReviewInput
    ctx: StudyContext
    previous: JSON | None  # the previous version's DocumentReference, when the store has it
    study: StudyRecord | None = None  # the study's record (the MDM's PID)


def render_note(
    review: ReviewInput, ctx: StudyContext, tables: Tables, study: StudyRecord | None
) -> RenderedNote:
    """The note for ``review`` (text and PDF), with what the study's record says."""
    note = build_note(
        review,
        tables,
        study_uid=ctx.study_uid,
        patient_identifier=ctx.patient_identifier,
        accession=ctx.accession,
        study=study_record(study),
    )
    return RenderedNote(note, render_text(note), render_pdf(note))


def plan_note(
    review: ReviewInput,
    ctx: StudyContext,
    settings: Settings,
    tables: Tables,
    records: NoteRecords,
    *,
    out_dir: Path | None,
) -> NotePlan:
    """Render the note and decide its outputs. ``records``: what the store says of the study
    and of the review's earlier note versions (:func:`note_records`)."""
    outputs = settings.note.selected(out_dir=out_dir is not None, mllp=settings.hl7.mllp)
    previous = records.previous.document_reference if records.previous is not None else None
    return NotePlan(
        render_note(review, ctx, tables, records.study),
        outputs,
        review,
        ctx,
        previous,
        records.study,
    )


def note_version(plan: NotePlan, tables: Tables) -> NoteVersion:
    """The record of this version: its document number and state, the DocumentReference as
    written (when that is an output) and the version it replaces."""
    note = plan.rendered.note
    reference = None
    if "document-reference" in plan.outputs:
        entries = note_entries(
            plan.rendered,
            plan.ctx,
            tables,
            report_included="diagnostic-report" in plan.outputs,
            previous=plan.previous,
        )
        reference = entries[-1]["resource"]
    replaces = ""
    if reference is not None and plan.previous is not None:
        replaces = str(plan.previous["masterIdentifier"]["value"])
    return NoteVersion(
        review_id=note.review_id,
        version=note.version,
        study_uid=plan.ctx.study_uid,
        document_number=note.document_number,
        state=note.state,
        outputs=tuple(sorted(plan.outputs)),
        replaces=replaces,
        document_reference=reference,
    )


async def with_server_previous(plan: NotePlan, fhir: FhirClient | None) -> NotePlan:
    """The plan with the previous version's DocumentReference taken from the FHIR server, when
    the store does not hold it (an earlier version submitted through another outbox), so that
    version is still superseded. A failed search leaves the plan as it is: the new version is
    then written without ``relatesTo`` rather than not at all."""
    review = plan.review
    if (
        plan.previous is not None
        or review.version < 2
        or fhir is None
        or "document-reference" not in plan.outputs
    ):
        return plan
    params = {"identifier": f"{REVIEW_SYSTEM}|{review.review_id}", "status": "current"}
    try:
        response = await fhir.request("GET", "DocumentReference", params=params)
    except TransportError:
        return plan
    if not response.ok or response.body is None:
        return plan
    found = [e["resource"] for e in response.body.get("entry", []) if "resource" in e]
    previous = previous_note(
        [{"entry": [{"resource": r} for r in found]}], review.review_id, review.version
    )
    return dataclasses.replace(plan, previous=previous) if previous is not None else plan


def _repoint(value: Any, old: str, new: str | None) -> Any:
    """Replace references to ``old`` by ``new``. With ``new`` None drop them, together with
    what they leave meaningless: an element whose ``value[x]`` was the reference (a Task
    output) and a list left empty (FHIR allows no empty arrays)."""
    if isinstance(value, list):
        items = [i for i in (_repoint(v, old, new) for v in value) if i is not _DROP]
        return items if items or not value else _DROP
    if isinstance(value, dict):
        if value.get("reference") == old:
            return _DROP if new is None else {**value, "reference": new}
        out = {}
        for key, item in value.items():
            fixed = _repoint(item, old, new)
            if fixed is _DROP and key.startswith("value"):
                return _DROP
            if fixed is not _DROP:
                out[key] = fixed
        return out
    return value


_DROP: Any = object()


def apply_note(output: ReviewOutput, plan: NotePlan, tables: Tables) -> ReviewOutput:
    """The review Bundle as the site's outputs want it.

    With ``diagnostic-report``: the DiagnosticReport carries the note as presentedForm.
    Without it: the DiagnosticReport is left out; with ``document-reference`` the note's
    DocumentReference entries take its place (the Tasks and the request point at the note),
    otherwise references to the report are dropped.
    """
    bundle = output.bundle
    if "diagnostic-report" in plan.outputs:
        bundle = with_presented_form(bundle, plan.rendered)
    else:
        entries = bundle.get("entry", [])
        report = next(
            (e for e in entries if e["resource"].get("resourceType") == "DiagnosticReport"), None
        )
        if report is not None:
            rest = [e for e in entries if e is not report]
            replacement: list[JSON] = []
            new_ref: str | None = None
            if "document-reference" in plan.outputs:
                replacement = note_entries(
                    plan.rendered, plan.ctx, tables, report_included=False, previous=plan.previous
                )
                new_ref = note_full_url(plan.rendered.note.document_number)
            rest = [_repoint(e, str(report["fullUrl"]), new_ref) for e in rest]
            bundle = {**bundle, "entry": [*replacement, *rest]}
    return dataclasses.replace(output, bundle=with_narratives(bundle))


def note_bundle(plan: NotePlan, tables: Tables) -> JSON | None:
    """The DocumentReference transaction (its own outbox row), when the DiagnosticReport is
    written too; None when there is none to write or it travels in the review Bundle."""
    if "document-reference" not in plan.outputs or "diagnostic-report" not in plan.outputs:
        return None
    entries = note_entries(
        plan.rendered, plan.ctx, tables, report_included=True, previous=plan.previous
    )
    return with_narratives({"resourceType": "Bundle", "type": "transaction", "entry": entries})


# -- HL7 v2: MDM and ORU ----------------------------------------------------------------------


def _issuer(system: str, tables: Tables) -> str:
    for source, targets in tables.conceptmap("identifier-systems").rows.items():
        if any(t.code == system for t in targets):
            return source
    return system.rsplit("/", 1)[-1][:20]


_HL7_SEX = {"male": "M", "female": "F", "other": "O", "unknown": "U"}


@dataclass(frozen=True, slots=True)
class _PidPatient:
    family: str = ""
    given: str = ""
    birth_date: str = ""
    sex: str = ""


def _pid_patient(study: StudyRecord | None) -> _PidPatient:
    """PID-5/7/8 from the study's record, only when the adapter writes the Patient
    (``fhir.create_patient``; otherwise the EHR's Patient is the record): the first name the
    ingest wrote into that Patient (the alphabetic group, else the ideographic), the birth
    date, and the sex as FHIR ``gender`` then HL7 table 0001."""
    if study is None or not study.patient_created:
        return _PidPatient()
    names = without_control_characters(human_names(person_name(study.patient_name)))
    name = (names or [{}])[0]
    gender = GENDER.get(study.sex.upper(), "unknown" if study.sex else "")
    return _PidPatient(
        family=str(name.get("family", "")),
        given=" ".join(name.get("given", [])),
        birth_date=study.birth_date,
        sex=_HL7_SEX.get(gender, ""),
    )


def _document(plan: NotePlan, tables: Tables, **fields: Any) -> DocumentMessage:
    # Lazy (downward) for start-up time only: hl7apy, when an HL7 note is built.
    from adapter.hl7.mdm import DocumentMessage

    review, ctx = plan.review, plan.ctx
    facts = _pid_patient(plan.study)
    identifier = ctx.patient_identifier or {}
    value = str(identifier.get("value", ""))
    patient = OrderPatient(
        identifiers=(
            (PatientIdentifier(value, _issuer(str(identifier.get("system", "")), tables)),)
            if value
            else ()
        ),
        family=facts.family,
        given=facts.given,
        birth_date=facts.birth_date,
        sex=facts.sex,
    )
    name = review.reviewer.name.split()
    labels = tables.labels_table("review-note")
    code = labels.coding("document_type")
    system = "LN" if code.system == "http://loinc.org" else code.system
    note = plan.rendered.note
    status = "P" if not note.all_images_reviewed else ("F" if note.version == 1 else "C")
    return DocumentMessage(
        patient=patient,
        author=Provider(
            review.reviewer.identifier.value,
            family=name[-1] if name else "",
            given=" ".join(name[:-1]),
        ),
        activity_time=note.reviewed_at,
        lines=tuple(plan.rendered.text.rstrip("\n").split("\n")),
        pdf_base64=base64.b64encode(plan.rendered.pdf).decode("ascii"),
        result_status=status,
        observation=(code.code, code.display, system),
        review_id=review.review_id,
        version=review.version,
        **fields,
    )


def document_messages(
    plan: NotePlan,
    profile_message: str,
    options: DocumentOptions,
    tables: Tables,
    earlier: Sequence[NoteMessage],
) -> list[DocumentMessage]:
    """The MDM/ORU messages this version needs for one receiver, given the records of the
    earlier note messages for that receiver (oldest first). A version already sent needs none."""
    note = plan.rendered.note
    mine = [m for m in earlier if m.review_id == note.review_id]
    if any(m.version == note.version for m in mine):
        return []  # resubmission of a version already sent: the receiver has it
    base = review_document_number(note.review_id)
    if profile_message == "ORU^R01":
        return [_document(plan, tables, event="R01", document_number=base)]
    current, cancelled = "", set()
    for m in mine:
        if m.event == "T02":
            current = m.document_number
        elif m.event == "T11":
            cancelled.add(m.document_number)
    if not current:
        return [_document(plan, tables, event="T02", document_number=base)]
    if current in cancelled:  # its last document was cancelled: this version is a new one
        return [
            _document(
                plan,
                tables,
                event="T02",
                document_number=note.document_number,
                parent_number=current,
            )
        ]
    reason = f"version {note.version}: " + (
        "concern withdrawn" if note.concern_withdrawn else "amended"
    )
    if note.concern_withdrawn and options.withdrawal_event == "T11":
        # The withdrawal note first (a new document naming the one it ends), then the cancel:
        # the EHR is never left without the documented review.
        return [
            _document(
                plan,
                tables,
                event="T02",
                document_number=note.document_number,
                parent_number=current,
                change_reason=reason,
            ),
            _document(
                plan,
                tables,
                event="T11",
                document_number=current,
                availability="OB",
                change_reason=reason,
            ),
        ]
    event = options.withdrawal_event if note.concern_withdrawn else options.amendment_event
    return [_document(plan, tables, event=event, document_number=current, change_reason=reason)]


def note_rows(
    outbox: Store,
    plan: NotePlan,
    settings: Settings,
    tables: Tables,
    destinations: Sequence[tuple[str, str]],
    *,
    key: str,
    label: str,
) -> list[NewRow]:
    """The note's own rows: the DocumentReference transaction (one per FHIR/files destination)
    and the MDM/ORU messages, built (and so checked) before anything of the review is stored.
    Reads the store's note messages to know what each receiver already has.

    Raises:
        ConfigError: a note receiver profile is missing or takes another message type.
        MessageBuildError: a message cannot be encoded (names the segment and field).
    """
    rows: list[NewRow] = []
    bundle = note_bundle(plan, tables)
    if bundle is not None:
        note_label = label.replace("Review-", "Note-", 1)
        rows += [NewRow(d, t, key, KIND_NOTE, note_label, bundle) for d, t in destinations]
    wanted = [(settings.note.mdm_receiver, "mdm"), (settings.note.oru_receiver, "oru")]
    chosen = [(name, output) for name, output in wanted if output in plan.outputs]
    if not chosen:
        return rows
    # Lazy (downward) for start-up time only: hl7apy.
    from adapter.hl7.deliverer import new_control_id
    from adapter.hl7.mdm import build_document_message

    profiles = load_profiles(receivers_dir(settings))
    now = datetime.now(UTC)
    notes = outbox.notes()
    for name, output in chosen:
        profile = profiles.get(name)
        expected = "MDM^T02" if output == "mdm" else "ORU^R01"
        setting = "note.mdm_receiver" if output == "mdm" else "note.oru_receiver"
        if profile is None:
            raise ConfigError(setting, f"no receiver profile named {name!r}")
        if profile.message != expected:
            raise ConfigError(setting, f"the profile {name!r} does not take {expected}")
        earlier = notes.messages(plan.review.review_id, receiver=name)
        for doc in document_messages(plan, profile.message, profile.document, tables, earlier):
            control = new_control_id()  # random, stored in the row: resends keep it
            message = build_document_message(doc, profile, control_id=control, now=now)
            payload = DocumentPayload(
                profile=name,
                review_id=doc.review_id,
                version=doc.version,
                event=doc.event,
                document_number=doc.document_number,
                control_id=control,
                message=message,
            )
            doc_label = f"Note-{doc.document_number}-v{doc.version}-{doc.event}"
            rows.append(NewRow(HL7, name, key, KIND_DOCUMENT, doc_label, payload.to_json()))
    return rows


@dataclass(frozen=True, slots=True)
class NoteRows:
    """A note version's rows, built and checked, with the records stored beside them."""

    rows: list[NewRow]
    messages: list[NoteMessage | None]  # per row: the document message it sends (HL7 rows)
    version: NoteVersion


def prepare_note_rows(
    outbox: Store,
    plan: NotePlan,
    settings: Settings,
    tables: Tables,
    destinations: Sequence[tuple[str, str]],
    *,
    key: str,
    label: str,
) -> NoteRows:
    """The rows of :func:`note_rows` with the records :func:`store_note` writes beside them:
    the version, and each document message (taken from the rows just built, never from a
    stored one). Raises as :func:`note_rows`."""
    rows = note_rows(outbox, plan, settings, tables, destinations, key=key, label=label)
    return NoteRows(rows, [_message(row) for row in rows], note_version(plan, tables))


def _message(row: NewRow) -> NoteMessage | None:
    """The record of a document row as :func:`note_rows` just built it (None for FHIR rows)."""
    if row.kind != KIND_DOCUMENT:
        return None
    built = DocumentPayload.from_json(row.payload)
    return NoteMessage(
        receiver=built.profile,
        review_id=built.review_id,
        version=built.version,
        event=built.event,
        document_number=built.document_number,
        control_id=built.control_id,
    )


def store_note(outbox: Store, prepared: NoteRows) -> list[int]:
    """Store the note's rows and records (the version, each message's MSH-10) together; return
    the row ids. Call it inside ``Outbox.transaction()`` with the review's rows."""
    ids = outbox.enqueue_many(prepared.rows)
    sent = [(i, m) for i, m in zip(ids, prepared.messages, strict=True) if m is not None]
    outbox.notes().record(prepared.version, sent)
    return ids


__all__ = [
    "KIND_DOCUMENT",
    "KIND_NOTE",
    "NotePlan",
    "NoteRecords",
    "NoteRows",
    "apply_note",
    "document_messages",
    "note_bundle",
    "note_records",
    "note_rows",
    "note_version",
    "plan_note",
    "prepare_note_rows",
    "render_note",
    "store_note",
    "with_server_previous",
]
