"""Read inbound results and order responses: ORU^R01, ORR^O02, ORG^O20, ORI^O24.

The listener needs only a few facts to close the loop: which order (placer number from ORC-2,
else OBR-2), the filler's number, the order control/status, the report text, the result status
and time, and the Study Instance UID when the report carries one. :func:`parse_inbound` reads
them with a tolerant ER7 reader and raises :class:`InboundParseError` naming the segment/field
(never a value) when a fact the listener must have is missing; the listener answers AR/AE.
"""

from __future__ import annotations

from dataclasses import dataclass

from adapter.errors import ParseError
from adapter.hl7.ack import Ack, component, field_of, parse_ack
from adapter.hl7.escape import CHARSETS, decode_message, split_segments, unescape

KNOWN_TYPES = frozenset({"ORU^R01", "ORR^O02", "ORG^O20", "ORI^O24"})
TEXT_TYPES = frozenset({"TX", "FT", "ST"})


class InboundParseError(ParseError):
    """An inbound message we cannot act on; ``location`` is ``SEG-n`` (or ``SEG``)."""

    def __init__(self, location: str, problem: str, error_code: str = "101") -> None:
        super().__init__(f"{location}: {problem}")
        self.location = location
        self.problem = problem
        self.error_code = error_code  # HL7 table 0357, for the ERR segment of our AE/AR


@dataclass(frozen=True, slots=True)
class InboundMessage:
    message_type: str  # e.g. ORU^R01
    control_id: str  # MSH-10
    version: str
    placer_order_number: str
    placer_namespace: str
    filler_order_number: str
    order_control: str  # ORC-1
    order_status: str  # ORC-5
    report_text: str  # every TX/FT/ST OBX-5, joined with newlines
    result_status: str  # OBR-25
    observation_time: str  # OBR-7 (HL7 TS as sent)
    study_instance_uid: str
    ack: Ack | None = None  # the MSA of an ORR/ORG/ORI, when present


def parse_inbound(raw: bytes) -> InboundMessage:
    """Read an inbound ORU^R01 / ORR^O02 / ORG^O20 / ORI^O24 (ER7 bytes, no MLLP framing).

    Raises:
        InboundParseError: not HL7, an unsupported type (error code 200), or no placer order
            number in ORC-2/OBR-2 (101).
    """
    body = raw.strip(b"\x0b\x1c\r\n ")
    text, codec = decode_message(body)
    segments = split_segments(text)
    if not segments or segments[0][0] != "MSH" or len(segments[0]) < 12:
        raise InboundParseError("MSH", "no readable MSH segment", "100")
    msh = segments[0]
    declared = component(field_of(msh, 18), 1).strip()
    if declared not in CHARSETS:  # never guess: a wrong guess garbles the report text
        raise InboundParseError("MSH-18", "unsupported character set", "103")
    message_type = "^".join(field_of(msh, 9).split("^")[:2])
    if message_type not in KNOWN_TYPES:
        raise InboundParseError("MSH-9", "unsupported message type", "200")
    control_id = unescape(field_of(msh, 10), charset=codec)
    if not control_id:
        raise InboundParseError("MSH-10", "message control id is empty")

    def first(name: str) -> list[str]:
        return next((s for s in segments if s[0] == name), [name])

    orc, obr = first("ORC"), first("OBR")
    placer_field, where = (
        (field_of(orc, 2), "ORC-2")
        if component(field_of(orc, 2), 1)
        else (field_of(obr, 2), "OBR-2")
    )
    placer = unescape(component(placer_field, 1), charset=codec)
    if not placer:
        raise InboundParseError(where, "no placer order number in ORC-2 or OBR-2")
    filler_field = field_of(orc, 3) if component(field_of(orc, 3), 1) else field_of(obr, 3)
    texts: list[str] = []
    study_uid = ""
    for seg in segments:
        if seg[0] != "OBX":
            continue
        value_type, ident = field_of(seg, 2), field_of(seg, 3)
        values = [unescape(v, charset=codec) for v in field_of(seg, 5).split("~")]
        if "Study Instance UID" in ident or value_type == "UI" or component(ident, 1) == "110180":
            study_uid = study_uid or component(field_of(seg, 5), 1)
        elif value_type in TEXT_TYPES:
            texts.extend(v for v in values if v)
    if not study_uid:
        zds = first("ZDS")
        study_uid = component(field_of(zds, 1), 1)
    if not study_uid:
        ipc = first("IPC")
        study_uid = component(field_of(ipc, 3), 1)
    msa = next((s for s in segments if s[0] == "MSA"), None)
    return InboundMessage(
        message_type=message_type,
        control_id=control_id,
        version=component(field_of(msh, 12), 1),
        placer_order_number=placer,
        placer_namespace=unescape(component(placer_field, 2), charset=codec),
        filler_order_number=unescape(component(filler_field, 1), charset=codec),
        order_control=field_of(orc, 1),
        order_status=field_of(orc, 5),
        report_text="\n".join(texts),
        result_status=field_of(obr, 25),
        observation_time=component(field_of(obr, 7), 1),
        study_instance_uid=unescape(study_uid, charset=codec),
        ack=parse_ack(body) if msa is not None else None,
    )
