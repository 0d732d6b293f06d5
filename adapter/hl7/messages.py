"""Build the HL7 v2 order for radiologist review: ORM^O01, OMG^O19 or OMI^O23, new or cancel.

Pure: no clock (``now`` is passed in), no I/O, no globals that change. hl7apy builds the
structure (message, groups, segments, fields, components, in the order its message definitions
give), and our :func:`~adapter.hl7.escape.escape` escapes every value. Each value reaches hl7apy
as an instance of a *pre-escaped* datatype class (a subclass of the version's own ``ST``/``FT``/
``IS``/``ID``… whose escaper is the identity), because hl7apy's own escaping is wrong for free
text (``escape.py`` explains how). The result is encoded in the receiver profile's MSH-18
charset; a character that charset cannot hold is an error naming the segment and field (or a
``?`` when the profile says ``unencodable: replace``), never a silent mojibake.

Where each piece goes (``docs/receivers.md`` has the full table):

* MSH-3..6 from the profile; MSH-7 ``now``; MSH-9 type^trigger^structure; MSH-10 ``control_id``
  (the caller stores it with the row, so a resend keeps it); MSH-11; MSH-12;
  MSH-15/16 only in enhanced ACK mode; MSH-18 charset (table 0211 of the version).
* PID-3 identifiers (CX: value^^^authority^type), PID-5 one XPN per name group the charset
  carries (``charset_fit.py``), PID-7 birth date, PID-8 sex.
* PV1-2 patient class (IHE requires PV1).
* ORC-1 NW/XO/CA, ORC-2 placer number (EI: number^namespace), ORC-3 filler number, ORC-5
  SC/CA (OMI only, IHE RAD-4), ORC-7.6 priority (ORM only), ORC-9 transaction time, ORC-12
  ordering provider (XCN with prefix and assigning authority), ORC-16 control reason.
* TQ1-9 priority (2.5.1 only).
* OBR-2 placer number, OBR-4 service, OBR-16 provider, OBR-24 the profile's diagnostic service
  section (table 0074), OBR-27.6 priority (ORM), OBR-31 reason; OBR-18 never (the reviewed
  study's accession is not the new order's); OBR-19/20 the reviewed study's requested
  procedure and scheduled step ids when the profile says ``study_ids: obr``; ZDS-1 Study UID.
* NTE-3 concern text then extra notes (FT).
* OMI: IPC-1 accession, IPC-2 requested procedure id, IPC-3 Study UID, IPC-4 SPS id, IPC-5 modality.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from functools import cache
from importlib import import_module
from typing import Any, Union

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message, Segment, is_base_datatype

from adapter.hl7.charset_fit import MessageBuildError, character, fit_order
from adapter.hl7.escape import escape
from adapter.hl7.model import OrderRequest
from adapter.hl7.profiles import ReceiverProfile

#: A value for one element: an escaped string, or components (each a value) in order.
Value = Union[str, Sequence["Value"]]  # noqa: UP007 - recursive alias needs the string form

STRUCTURES = {"ORM^O01": "ORM_O01", "OMG^O19": "OMG_O19", "OMI^O23": "OMI_O23"}
#: HL7 table 0027 (priority). FHIR has urgent and asap; table 0027 only A (ASAP) for both.
PRIORITY_CODES = {"routine": "R", "urgent": "A", "asap": "A", "stat": "S"}
_PLAIN_TYPES = frozenset({"DT", "DTM", "TM", "TS", "NM", "SI"})  # digits only: no escaping


__all__ = ["MessageBuildError", "build_message", "build_order", "encode", "segment_names"]


@cache
def _raw_type(datatype: str, version: str) -> type[Any]:
    """The version's datatype class, with hl7apy's escaper replaced by the identity.

    The class keeps the datatype's name, because hl7apy checks a value's class name against the
    element's datatype (also in STRICT mode).
    """
    module = import_module(f"hl7apy.v{version.replace('.', '_')}")
    base = getattr(module, datatype)

    def identity(self: Any, value: str, encoding_chars: Any = None) -> str:
        return value

    return type(datatype, (base,), {"_escape_value": identity})


def _fill(element: Any, value: Value, version: str) -> None:
    """Put an (escaped) value into an hl7apy field/component, recursing through components."""
    datatype = element.datatype
    if isinstance(value, str):
        if not value:
            return
        if datatype in _PLAIN_TYPES:
            element.value = value
        elif datatype is None or is_base_datatype(datatype, version):
            element.value = _raw_type(datatype or "ST", version)(value)
        else:  # a composite given one string: it is the first component
            _fill(getattr(element, f"{datatype.lower()}_1"), value, version)
        return
    for index, part in enumerate(value, 1):
        if part:
            _fill(getattr(element, f"{datatype.lower()}_{index}"), part, version)


def _has(value: Value) -> bool:
    return bool(value) if isinstance(value, str) else any(_has(v) for v in value)


def put_value(
    segment: Any, number: int, value: Value, version: str, *, repeat: bool = False
) -> None:
    """Set field ``number`` of an hl7apy segment to a pre-escaped value (a new repetition if asked).

    Empty values are skipped, so no empty field or component is created.
    """
    if not _has(value):
        return
    name = f"{segment.name.lower()}_{number}"
    element = segment.add_field(name) if repeat else getattr(segment, name)
    _fill(element, value, version)


def hl7_timestamp(moment: datetime) -> str:
    """``YYYYMMDDHHMMSS[+/-ZZZZ]`` (seconds precision; the offset when ``moment`` has one)."""
    text = moment.strftime("%Y%m%d%H%M%S")
    offset = moment.strftime("%z")
    return text + offset if offset else text


def _iso_to_hl7(text: str, location: str) -> str:
    try:
        return hl7_timestamp(datetime.fromisoformat(text))
    except ValueError as exc:
        raise MessageBuildError(location, "is not an ISO 8601 date-time") from exc


def _date(text: str, location: str) -> str:
    digits = text.replace("-", "")
    if digits and (not digits.isdigit() or len(digits) not in (4, 6, 8)):
        raise MessageBuildError(location, "is not a date (YYYY, YYYY-MM or YYYY-MM-DD)")
    return digits


def _e(text: str) -> str:
    return escape(text)


def put_msh(
    msg: Any,
    profile: ReceiverProfile,
    *,
    version: str,
    event: str,
    structure: str,
    control_id: str,
    now: datetime,
) -> None:
    """MSH for ``profile``'s receiver: applications, time, ``event`` (``ORM^O01``), structure,
    MSH-10, processing id, enhanced-mode ACK types and the charset. Orders and notes share it."""
    msh = msg.msh
    put_value(msh, 3, [_e(profile.sending_application)], version)
    put_value(msh, 4, [_e(profile.sending_facility)], version)
    put_value(msh, 5, [_e(profile.receiving_application)], version)
    put_value(msh, 6, [_e(profile.receiving_facility)], version)
    msh.msh_7 = hl7_timestamp(now)
    code, trigger = event.split("^")
    put_value(msh, 9, [code, trigger, structure], version)
    if not control_id or len(control_id) > 20:
        raise MessageBuildError("MSH-10", "control id must be 1 to 20 characters")
    put_value(msh, 10, _e(control_id), version)
    put_value(msh, 11, profile.defaults.processing_id, version)
    if profile.ack.mode == "enhanced":
        put_value(msh, 15, profile.ack.accept_ack_type, version)
        put_value(msh, 16, profile.ack.application_ack_type, version)
    put_value(msh, 18, profile.charset, version)


def _patient(group: Any, order: OrderRequest, profile: ReceiverProfile) -> None:
    v = profile.version
    pid = group.add_segment("PID")
    patient = order.patient
    if not patient.identifiers:
        raise MessageBuildError("PID-3", "the order has no patient identifier")
    for ident in patient.identifiers:
        authority = [_e(ident.assigning_authority)]
        put_value(pid, 3, [_e(ident.value), "", "", authority, _e(ident.type_code)], v, repeat=True)
    groups = patient.name_groups()
    if not groups:
        raise MessageBuildError("PID-5", "is required (HL7 v2, IHE RAD-2); the study has no name")
    for g in groups:  # XPN: family^given^middle^suffix^prefix^degree^type (L legal)^representation
        name = [[_e(g.family)], _e(g.given), _e(g.middle), _e(g.suffix), _e(g.prefix)]
        put_value(pid, 5, [*name, "", "L", g.representation], v, repeat=True)
    put_value(pid, 7, _date(patient.birth_date, "PID-7"), v)
    put_value(pid, 8, _e(patient.sex), v)
    visit = group.add_group(f"{STRUCTURES[profile.message]}_PATIENT_VISIT")
    pv1 = visit.add_segment("PV1")
    put_value(pv1, 2, _e(profile.defaults.patient_class), v)


def _provider(order: OrderRequest, version: str) -> Value:
    """XCN: id^family^given^middle^suffix^prefix^degree^source table^assigning authority."""
    p = order.ordering_provider
    if p is None:
        return ""
    name = [_e(p.identifier), [_e(p.family)], _e(p.given), "", "", _e(p.prefix), "", ""]
    return [*name, [_e(p.assigning_authority)]]


def _orc(group: Any, order: OrderRequest, profile: ReceiverProfile, now: datetime) -> None:
    v = profile.version
    orc = group.add_segment("ORC")
    put_value(orc, 1, order.control, v)
    if not order.placer_order_number:
        raise MessageBuildError("ORC-2", "the order has no placer order number")
    put_value(orc, 2, [_e(order.placer_order_number), _e(order.placer_namespace)], v)
    put_value(orc, 3, _e(order.filler_order_number), v)
    if profile.message == "OMI^O23":  # IHE RAD-4: NW_SC, XO_SC; cancels CA_CA
        put_value(orc, 5, "CA" if order.control == "CA" else "SC", v)
    if profile.message == "ORM^O01":
        put_value(orc, 7, ["", "", "", "", "", PRIORITY_CODES[order.priority]], v)
    moment = _iso_to_hl7(order.requested_at, "ORC-9") if order.requested_at else hl7_timestamp(now)
    put_value(orc, 9, moment, v)
    if profile.defaults.ordering_provider in ("both", "orc12"):
        put_value(orc, 12, _provider(order, v), v)
    put_value(orc, 16, ["", _e(order.control_reason)], v)


def _obr(group: Any, order: OrderRequest, profile: ReceiverProfile) -> None:
    v = profile.version
    obr = group.add_segment("OBR")
    put_value(obr, 1, "1", v)
    put_value(obr, 2, [_e(order.placer_order_number), _e(order.placer_namespace)], v)
    system = order.service_system or profile.defaults.service_coding_system
    put_value(obr, 4, [_e(order.service_code), _e(order.service_text), _e(system)], v)
    if profile.defaults.ordering_provider in ("both", "obr16"):
        put_value(obr, 16, _provider(order, v), v)
    # OBR-18 stays empty: the reviewed study's accession is not this new order's accession.
    if profile.message != "OMI^O23" and profile.defaults.study_ids == "obr":
        put_value(obr, 19, _e(order.requested_procedure_id), v)
        put_value(obr, 20, _e(order.scheduled_procedure_step_id), v)
    put_value(obr, 24, profile.defaults.diagnostic_service_section, v)
    if profile.message == "ORM^O01":
        put_value(obr, 27, ["", "", "", "", "", PRIORITY_CODES[order.priority]], v)
    system = order.reason_system
    if system == "SCT":  # SNOMED CT: named per the version's table 0396 (profile)
        system = profile.defaults.snomed_coding_system
    reason = [_e(order.reason_code), _e(order.reason_text), _e(system)]
    put_value(obr, 31, reason, v, repeat=True)


def _notes(group: Any, order: OrderRequest, version: str) -> None:
    texts = [t for t in (order.concern_text, *order.extra_notes) if t]
    for index, text in enumerate(texts, 1):
        nte = group.add_segment("NTE")
        put_value(nte, 1, str(index), version)
        put_value(nte, 3, escape(text, formatted=True), version)


def _zds(group: Any, order: OrderRequest, version: str) -> None:
    if not order.study_instance_uid:
        return
    zds = Segment("ZDS", version=version, validation_level=VALIDATION_LEVEL.TOLERANT)
    # A Z-segment has no datatypes in hl7apy: one pre-escaped ST carrying the RP components.
    zds.zds_1 = _raw_type("ST", version)(f"{_e(order.study_instance_uid)}^100^Application^DICOM")
    group.add(zds)


def _ipc(group: Any, order: OrderRequest, version: str) -> None:
    ipc = group.add_segment("IPC")
    step = order.scheduled_procedure_step_id or order.requested_procedure_id
    for number, text, where in (
        (1, order.accession_number, "IPC-1"),
        (2, order.requested_procedure_id, "IPC-2"),
        (3, order.study_instance_uid, "IPC-3"),
        (4, step, "IPC-4"),
    ):
        if not text:
            raise MessageBuildError(where, "is required for OMI^O23 and the order has none")
        put_value(ipc, number, [_e(text)], version)
    put_value(ipc, 5, [_e(order.modality), "", "DCM" if order.modality else ""], version)


def build_message(
    order: OrderRequest, profile: ReceiverProfile, *, control_id: str, now: datetime
) -> Any:
    """Build the hl7apy ``Message`` (TOLERANT) for ``order``; :func:`build_order` encodes it."""
    if profile.message not in STRUCTURES:
        raise MessageBuildError("MSH-9", "the receiver profile takes documents, not orders")
    structure = STRUCTURES[profile.message]
    v = profile.version
    order = fit_order(order, profile)
    msg = Message(structure, version=v, validation_level=VALIDATION_LEVEL.TOLERANT)
    put_msh(
        msg,
        profile,
        version=profile.version,
        event=profile.message,
        structure=STRUCTURES[profile.message],
        control_id=control_id,
        now=now,
    )
    _patient(msg.add_group(f"{structure}_PATIENT"), order, profile)
    order_group = msg.add_group(f"{structure}_ORDER")
    _orc(order_group, order, profile, now)
    if profile.message == "ORM^O01":
        detail = order_group.add_group("ORM_O01_ORDER_DETAIL")
        _obr(detail, order, profile)
        _notes(detail, order, v)
        _zds(detail, order, v)
        return msg
    timing = order_group.add_group(f"{structure}_TIMING")
    tq1 = timing.add_segment("TQ1")
    put_value(tq1, 1, "1", v)
    put_value(tq1, 9, [PRIORITY_CODES[order.priority], "", "HL70485"], v)
    _obr(order_group, order, profile)
    _notes(order_group, order, v)
    if profile.message == "OMG^O19":
        _zds(order_group, order, v)
    else:
        _ipc(order_group, order, v)
    return msg


def encode(text: str, profile: ReceiverProfile) -> bytes:
    """Encode ER7 text in the profile's charset; name the segment and field that cannot be."""
    try:
        return text.encode(profile.codec)
    except UnicodeEncodeError as exc:
        if profile.unencodable == "replace":
            return text.encode(profile.codec, errors="replace")
        bad = character(text[exc.start])
        raise MessageBuildError(
            _locate(text, exc.start), f"has a character that {profile.charset} cannot encode: {bad}"
        ) from exc


def _locate(text: str, index: int) -> str:
    """``SEG-n`` for a character index in ER7 text (for error messages without values)."""
    start = text.rfind("\r", 0, index) + 1
    line = text[start:index]
    name = line[:3]
    fields = line.count("|")
    return f"{name}-{fields + 1 if name == 'MSH' else fields}"


def build_order(
    order: OrderRequest, profile: ReceiverProfile, *, control_id: str, now: datetime
) -> bytes:
    """Render ``order`` (new or cancel) for ``profile``'s receiver.

    Parameters:
        order: the order contract (``order.control`` NW or CA picks new or cancel).
        profile: the receiver profile (message type, version, charset, ACK mode, defaults).
        control_id: MSH-10, 1 to 20 characters, derived by the caller from the outbox key so a
            resend of the same order carries the same id.
        now: MSH-7 (and ORC-9 when the order has no ``requested_at``).

    Returns:
        ER7 bytes in the profile's charset, segments ended by CR, without MLLP framing.

    Raises:
        MessageBuildError: a required piece is missing or a character cannot be encoded; the
            message names the segment and field, never the value.
    """
    msg = build_message(order, profile, control_id=control_id, now=now)
    return encode(msg.to_er7() + "\r", profile)


def segment_names(er7: bytes) -> list[str]:
    """The segment ids of an ER7 message, in order (for tests and previews)."""
    return [s[:3].decode("ascii", "replace") for s in er7.split(b"\r") if s]
