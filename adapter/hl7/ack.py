"""ACKs: read a receiver's answer (:func:`parse_ack`); answer inbound messages (:func:`build_ack`).

A peer's answer is a value, never an exception (style guide point 10): anything that is not a
readable ACK with MSA becomes ``Ack(valid=False, problem=...)`` so the deliverer can count it as
"not delivered" and resend or escalate. ``problem`` names segments and fields, never values.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.core import Message

from adapter.hl7.escape import decode_message, escape, split_segments, unescape
from adapter.hl7.messages import hl7_timestamp, put_value
from adapter.hl7.profiles import CHARSET_CODECS

ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
SUPPORTED_VERSIONS = ("2.3.1", "2.4", "2.5", "2.5.1")


@dataclass(frozen=True, slots=True)
class AckError:
    """One ERR segment: HL7 table 0357 code (ERR-3 in 2.5, ERR-1.4 in 2.3.1) and location."""

    code: str = ""
    text: str = ""
    location: str = ""  # SEG-field, e.g. "PID-3"
    severity: str = ""  # ERR-4: E, W, I


@dataclass(frozen=True, slots=True)
class Ack:
    """What a receiver answered. ``valid`` is False for garbage, empty or MSA-less answers."""

    valid: bool
    code: str = ""  # MSA-1: AA AE AR CA CE CR
    control_id: str = ""  # MSA-2: the MSH-10 it acknowledges
    text: str = ""  # MSA-3
    message_type: str = ""  # MSH-9, e.g. ACK^O01^ACK or ORG^O20^ORG_O20
    ack_control_id: str = ""  # the ACK's own MSH-10
    errors: tuple[AckError, ...] = ()
    problem: str = ""

    @property
    def accepted(self) -> bool:
        """An application accept (AA)."""
        return self.valid and self.code == "AA"

    def acknowledges(self, control_id: str) -> bool:
        """True when MSA-2 names our MSH-10 (a wrong MSA-2 is not our answer)."""
        return self.valid and self.control_id == control_id


def field_of(segment: list[str], number: int) -> str:
    """Field ``number`` of a split segment ('' when absent). For MSH the split puts MSH-n at n-1;
    callers account for that."""
    return segment[number] if len(segment) > number else ""


def component(value: str, number: int) -> str:
    """Component ``number`` (1-based) of the first repetition of a field ('' when absent)."""
    parts = value.split("~", 1)[0].split("^")
    return parts[number - 1] if len(parts) >= number else ""


def parse_ack(raw: bytes) -> Ack:
    """Read an ACK (or an ORR/ORG/ORI carrying MSA); never raises."""
    try:
        return _parse_ack(raw)
    except Exception as exc:  # a peer's garbage must never escape as an exception
        return Ack(valid=False, problem=f"unreadable ACK ({type(exc).__name__})")


def _parse_ack(raw: bytes) -> Ack:
    raw = raw.strip(b"\x0b\x1c\r\n ")
    if not raw:
        return Ack(valid=False, problem="empty ACK")
    text, codec = decode_message(raw)
    segments = split_segments(text)
    if not segments or segments[0][0] != "MSH" or len(segments[0]) < 10:
        return Ack(valid=False, problem="no MSH segment")
    msh = segments[0]
    msa = next((s for s in segments if s[0] == "MSA"), None)
    if msa is None:
        return Ack(valid=False, problem="no MSA segment", message_type=field_of(msh, 9))
    code = field_of(msa, 1).strip()
    if code not in ACK_CODES:
        return Ack(valid=False, problem="MSA-1 is not an acknowledgment code")
    control_id = unescape(field_of(msa, 2), charset=codec)
    if not control_id:
        return Ack(valid=False, code=code, problem="MSA-2 is empty")
    errors = tuple(_parse_err(s, codec) for s in segments if s[0] == "ERR")
    return Ack(
        valid=True,
        code=code,
        control_id=control_id,
        text=unescape(field_of(msa, 3), charset=codec),
        message_type=field_of(msh, 9),
        ack_control_id=unescape(field_of(msh, 10), charset=codec),
        errors=errors,
    )


def _parse_err(seg: list[str], codec: str) -> AckError:
    err3 = field_of(seg, 3)
    if err3:  # v2.5+: ERR-2 location (ERL), ERR-3 code (CWE), ERR-4 severity, ERR-8 user message
        loc = field_of(seg, 2)
        location = f"{component(loc, 1)}-{component(loc, 3)}" if component(loc, 1) else ""
        return AckError(
            code=component(err3, 1),
            text=unescape(component(err3, 2) or field_of(seg, 8), charset=codec),
            location=location,
            severity=field_of(seg, 4),
        )
    err1 = field_of(seg, 1)  # v2.3.1: ERR-1 ELD = segment^sequence^field^code(CE)
    code = err1.split("~", 1)[0].split("^")
    location = f"{code[0]}-{code[2]}" if len(code) > 2 and code[0] else ""
    text = code[3].split("&") if len(code) > 3 else []
    return AckError(
        code=text[0] if text else "",
        text=unescape(text[1], charset=codec) if len(text) > 1 else "",
        location=location,
    )


def build_ack(
    message_bytes: bytes,
    code: str,
    *,
    control_id: str,
    now: datetime,
    text: str = "",
    error_code: str | None = None,
    error_location: tuple[str, int] | None = None,
) -> bytes:
    """Answer an inbound message with an ACK (MSH, MSA and, for ``error_code``, ERR).

    Parameters:
        message_bytes: the inbound message as received (it may be unparseable: then the ACK
            uses v2.5.1, UTF-8 and an empty MSA-2, which is what an AR for garbage can do).
        code: MSA-1, one of AA AE AR CA CE CR.
        control_id: the ACK's own MSH-10.
        now: MSH-7.
        text: MSA-3 (escaped here); never put patient data in it.
        error_code: HL7 table 0357 code (e.g. 100 segment sequence, 101 required field missing,
            102 data type, 200 unsupported message type, 204 unknown key, 207 internal error).
        error_location: (segment id, field number) for ERR.

    Returns:
        ER7 bytes (segments ended by CR, no MLLP framing) in the inbound message's charset.
    """
    if code not in ACK_CODES:
        raise ValueError("MSA-1 must be one of AA AE AR CA CE CR")
    inbound, _codec = decode_message(message_bytes.strip(b"\x0b\x1c\r\n "))
    segments = split_segments(inbound)
    msh = segments[0] if segments and segments[0][0] == "MSH" else ["MSH"]
    version = field_of(msh, 12).split("^")[0]
    version = version if version in SUPPORTED_VERSIONS else "2.5.1"
    charset = field_of(msh, 18).split("~")[0].split("^")[0]
    charset = charset if charset in CHARSET_CODECS else "UNICODE UTF-8"
    trigger = component(field_of(msh, 9), 2)

    msg = Message("ACK", version=version, validation_level=VALIDATION_LEVEL.TOLERANT)
    m = msg.msh
    for ours, theirs in ((3, 5), (4, 6), (5, 3), (6, 4)):
        value = field_of(msh, theirs)  # already ER7-escaped by the sender: reuse as written
        if value:
            put_value(m, ours, [escape(unescape(c)) for c in value.split("^")], version)
    m.msh_7 = hl7_timestamp(now)
    put_value(m, 9, ["ACK", escape(trigger), "ACK"], version)
    put_value(m, 10, escape(control_id), version)
    put_value(m, 11, component(field_of(msh, 11), 1) or "P", version)
    put_value(m, 18, charset, version)
    msa = msg.add_segment("MSA")
    put_value(msa, 1, code, version)
    put_value(msa, 2, escape(unescape(field_of(msh, 10))), version)
    put_value(msa, 3, escape(text), version)
    if error_code is not None:
        err = msg.add_segment("ERR")
        seg, fld = error_location if error_location else ("", 0)
        if version in ("2.5", "2.5.1"):
            if seg:
                put_value(err, 2, [escape(seg), "1", str(fld)], version)
            put_value(err, 3, [escape(error_code), "", "HL70357"], version)
            put_value(err, 4, "E", version)
        else:
            put_value(err, 1, [escape(seg), "1" if seg else "", str(fld) if seg else "",
                          [escape(error_code), "", "HL70357"]], version)  # fmt: skip
    er7: str = msg.to_er7() + "\r"
    return er7.encode(CHARSET_CODECS[charset], errors="replace")
