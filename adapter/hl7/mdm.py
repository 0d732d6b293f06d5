"""The review note as HL7 v2.5.1: MDM (T02 new, T08 edit, T10 replacement, T11 cancel) or ORU^R01.

Pure: no clock (``now`` is passed in), no I/O. hl7apy builds the structure (``MDM_T02`` for
T02/T08/T10, ``MDM_T01`` for T11, ``ORU_R01``); every value is escaped by
:func:`adapter.hl7.escape.escape` and reaches hl7apy pre-escaped (see ``messages.py`` for why).

Where each piece goes (``docs/ehr-note.md`` has the table):

* MSH-9 ``MDM^<event>^MDM_T02`` (``MDM_T01`` for T11) or ``ORU^R01^ORU_R01``; MSH-10 is stable
  per row, so a resend is the same message; MSH-18 the profile's charset.
* EVN-1 event, EVN-2 the build time; PID-3/5/7/8 as for orders; PV1-2 the profile's class.
* TXA-2 document type (profile), TXA-3 ``TX`` (text) or ``AP`` (PDF only), TXA-4/6 the review
  time, TXA-5/9 the oncologist, TXA-12 the document number, TXA-13 the parent document (a note
  that follows a cancelled one), TXA-17 completion status (profile: ``AU`` with TXA-22 the
  oncologist and the review time, or ``DO``), TXA-19 availability (``AV``; ``OB`` when
  cancelled), TXA-21 the reason for a change.
* OBX: ``TX`` one per line of the text note (OBX-3 the note's LOINC, OBX-4 ``1``), and/or one
  ``ED`` with the PDF (``^AP^PDF^Base64^<data>``); OBX-11 ``F`` (``C`` for a later version).
* ORU^R01: OBR-3 the document number, OBR-4 the note's LOINC, OBR-7 the review time, OBR-25
  ``F`` / ``C`` (later version) / ``P`` (not all images reviewed), then the same OBX.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from adapter.hl7.escape import escape
from adapter.hl7.messages import MessageBuildError, encode, hl7_timestamp, put_msh, put_value
from adapter.hl7.model import OrderPatient, PatientIdentifier, Provider
from adapter.hl7.profiles import ReceiverProfile

Event = Literal["T02", "T08", "T10", "T11", "R01"]
VERSION = "2.5.1"


@dataclass(frozen=True, slots=True)
class DocumentMessage:
    """What one MDM/ORU message about the note carries (JSON-serialisable for the outbox)."""

    event: Event
    document_number: str
    patient: OrderPatient
    author: Provider
    activity_time: str  # ISO 8601 with offset (the review time)
    lines: tuple[str, ...] = ()  # the text note, one OBX TX per line
    pdf_base64: str = ""  # the PDF note, one OBX ED
    parent_number: str = ""  # TXA-13
    availability: str = "AV"  # TXA-19 (table 0273)
    change_reason: str = ""  # TXA-21
    result_status: str = "F"  # OBX-11, OBR-25 (ORU)
    observation: tuple[str, str, str] = ("34832-6", "Radiation oncology Note", "LN")
    review_id: str = ""
    version: int = 1
    extra: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DocumentMessage:
        patient = data["patient"]
        return cls(
            **{
                **data,
                "patient": OrderPatient(
                    **{
                        **patient,
                        "identifiers": tuple(
                            PatientIdentifier(**i) for i in patient["identifiers"]
                        ),
                    }
                ),
                "author": Provider(**data["author"]),
                "lines": tuple(data.get("lines", ())),
                "observation": tuple(data["observation"]),
            }
        )


def _e(text: str) -> str:
    return escape(text)


def _iso(text: str, where: str) -> str:
    try:
        return hl7_timestamp(datetime.fromisoformat(text))
    except ValueError as exc:
        raise MessageBuildError(where, "is not an ISO 8601 date-time") from exc


def _pid(pid: Any, patient: OrderPatient) -> None:
    v = VERSION
    if not patient.identifiers:
        raise MessageBuildError("PID-3", "the note has no patient identifier")
    for ident in patient.identifiers:
        authority = [_e(ident.assigning_authority)]
        put_value(pid, 3, [_e(ident.value), "", "", authority, _e(ident.type_code)], v, repeat=True)
    put_value(pid, 5, [[_e(patient.family)], _e(patient.given)], v)
    digits = patient.birth_date.replace("-", "")
    if digits and (not digits.isdigit() or len(digits) not in (4, 6, 8)):
        raise MessageBuildError("PID-7", "is not a date (YYYY, YYYY-MM or YYYY-MM-DD)")
    put_value(pid, 7, digits, v)
    put_value(pid, 8, _e(patient.sex), v)


def _person(p: Provider) -> list[Any]:
    return [_e(p.identifier), [_e(p.family)], _e(p.given)]


def _txa(txa: Any, doc: DocumentMessage, profile: ReceiverProfile) -> None:
    v = VERSION
    options = profile.document
    when = _iso(doc.activity_time, "TXA-4")
    put_value(txa, 1, "1", v)
    put_value(txa, 2, _e(options.type_code), v)
    put_value(txa, 3, "AP" if options.content == "ED" else "TX", v)
    put_value(txa, 4, when, v)
    put_value(txa, 5, _person(doc.author), v)
    put_value(txa, 6, when, v)
    put_value(txa, 9, _person(doc.author), v)
    put_value(txa, 12, [_e(doc.document_number), _e(options.namespace)], v)
    if doc.parent_number:
        put_value(txa, 13, [_e(doc.parent_number), _e(options.namespace)], v)
    put_value(txa, 17, options.completion_status, v)
    put_value(txa, 19, doc.availability, v)
    put_value(txa, 21, _e(doc.change_reason), v)
    if options.completion_status == "AU":
        stamp = ["", "", "", "", "", "", "", "", "", "", "", "", "", "", when]
        put_value(txa, 22, [*_person(doc.author), *stamp[3:]], v)


def _observations(
    parent: Any, group_name: str, doc: DocumentMessage, profile: ReceiverProfile
) -> dict[str, str]:
    """Add the OBX segments; returns placeholder -> escaped OBX-5 value (see :func:`_finish`)."""
    v = VERSION
    code, text, system = doc.observation
    content = profile.document.content
    number = 0
    values: dict[str, str] = {}

    def obx(value_type: str, value: str) -> None:
        nonlocal number
        number += 1
        group = parent.add_group(group_name)
        seg = group.add_segment("OBX")
        put_value(seg, 1, str(number), v)
        put_value(seg, 2, value_type, v)
        put_value(seg, 3, [_e(code), _e(text), _e(system)], v)
        put_value(seg, 4, "1", v)
        if value:
            # OBX-5 is of type "varies": hl7apy re-escapes escape sequences it does not know
            # (\X0B\ becomes \E\X0B\E\), so a placeholder goes in and the value we
            # escaped replaces it in the encoded text.
            placeholder = f"RTPLANOBX5V{number:06d}"
            values[placeholder] = value
            seg.obx_5 = placeholder
        put_value(seg, 11, doc.result_status, v)

    if content in ("TX", "both"):
        for line in doc.lines:
            obx("TX", _e(line))
    if content in ("ED", "both"):
        if not doc.pdf_base64:
            raise MessageBuildError("OBX-5", "the profile wants the PDF and the note has none")
        obx("ED", f"^AP^PDF^Base64^{doc.pdf_base64}")
    return values


def _finish(msg: Any, values: dict[str, str], profile: ReceiverProfile) -> bytes:
    text = msg.to_er7() + "\r"
    for placeholder, value in values.items():
        if text.count(placeholder) != 1:  # pragma: no cover - a placeholder is unique
            raise MessageBuildError("OBX-5", "internal placeholder clash")
        text = text.replace(placeholder, value)
    return encode(text, profile)


def build_document_message(
    doc: DocumentMessage, profile: ReceiverProfile, *, control_id: str, now: datetime
) -> bytes:
    """Render one note message for a document profile (``MDM^T02`` or ``ORU^R01``).

    Returns ER7 bytes in the profile's charset, segments ended by CR, no MLLP framing.

    Raises:
        MessageBuildError: a required piece is missing or a character cannot be encoded (names
            the segment and field, never the value).
    """
    v = VERSION
    if profile.message == "ORU^R01":
        msg = Message("ORU_R01", version=v, validation_level=VALIDATION_LEVEL.TOLERANT)
        put_msh(
            msg, profile, version=VERSION, event="ORU^R01", structure="ORU_R01",
            control_id=control_id, now=now,
        )  # fmt: skip
        result = msg.add_group("ORU_R01_PATIENT_RESULT")
        patient = result.add_group("ORU_R01_PATIENT")
        _pid(patient.add_segment("PID"), doc.patient)
        visit = patient.add_group("ORU_R01_VISIT")
        put_value(visit.add_segment("PV1"), 2, _e(profile.defaults.patient_class), v)
        order = result.add_group("ORU_R01_ORDER_OBSERVATION")
        obr = order.add_segment("OBR")
        put_value(obr, 1, "1", v)
        put_value(obr, 3, [_e(doc.document_number), _e(profile.document.namespace)], v)
        code, text, system = doc.observation
        put_value(obr, 4, [_e(code), _e(text), _e(system)], v)
        put_value(obr, 7, _iso(doc.activity_time, "OBR-7"), v)
        put_value(obr, 22, hl7_timestamp(now), v)
        put_value(obr, 25, doc.result_status, v)
        put_value(
            obr, 32, [[_e(doc.author.identifier), _e(doc.author.family), _e(doc.author.given)]], v
        )
        values = _observations(order, "ORU_R01_OBSERVATION", doc, profile)
        return _finish(msg, values, profile)
    if profile.message != "MDM^T02":
        raise MessageBuildError("MSH-9", "the profile does not take documents (MDM^T02/ORU^R01)")
    if doc.event not in ("T02", "T08", "T10", "T11"):
        raise MessageBuildError("MSH-9", "an MDM event must be T02, T08, T10 or T11")
    structure = "MDM_T01" if doc.event == "T11" else "MDM_T02"
    msg = Message(structure, version=v, validation_level=VALIDATION_LEVEL.TOLERANT)
    put_msh(
        msg, profile, version=VERSION, event=f"MDM^{doc.event}", structure=structure,
        control_id=control_id, now=now,
    )  # fmt: skip
    evn = msg.add_segment("EVN")
    put_value(evn, 1, doc.event, v)
    put_value(evn, 2, hl7_timestamp(now), v)
    _pid(msg.add_segment("PID"), doc.patient)
    put_value(msg.add_segment("PV1"), 2, _e(profile.defaults.patient_class), v)
    _txa(msg.add_segment("TXA"), doc, profile)
    values = {}
    if doc.event != "T11":
        values = _observations(msg, "MDM_T02_OBXNTE_SUPPGRP", doc, profile)
    return _finish(msg, values, profile)
