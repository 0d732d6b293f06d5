"""DICOM upper-layer PDUs (PS3.8 §9.3) as the C-STORE receiver needs them: pure bytes in, bytes out.

Only the acceptor's half is here: read an A-ASSOCIATE-RQ, answer it with an A-ASSOCIATE-AC or
-RJ, walk the PDVs of a P-DATA-TF, and write P-DATA-TF, A-RELEASE-RP and A-ABORT. Anything
malformed raises :class:`PduError` carrying the A-ABORT reason to send; nothing here reads a
socket or keeps state.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

HEADER: Final = struct.Struct(">BxI")  # PDU type, reserved, length (PS3.8 §9.3.1)
ASSOCIATE_RQ: Final = 0x01
ASSOCIATE_AC: Final = 0x02
ASSOCIATE_RJ: Final = 0x03
P_DATA_TF: Final = 0x04
RELEASE_RQ: Final = 0x05
RELEASE_RP: Final = 0x06
ABORT: Final = 0x07

APPLICATION_CONTEXT: Final = "1.2.840.10008.3.1.1.1"  # the DICOM application context name
PROTOCOL_VERSION: Final = 0x0001

# A-ABORT reasons (PS3.8 table 9-26), source "service-provider" (2).
ABORT_NO_REASON: Final = 0x00
ABORT_UNRECOGNIZED_PDU: Final = 0x01
ABORT_UNEXPECTED_PDU: Final = 0x02
ABORT_UNEXPECTED_PARAMETER: Final = 0x05
ABORT_INVALID_PARAMETER: Final = 0x06

# Presentation context results (PS3.8 table 9-18).
ACCEPTANCE: Final = 0
ABSTRACT_SYNTAX_NOT_SUPPORTED: Final = 3
TRANSFER_SYNTAXES_NOT_SUPPORTED: Final = 4

_ITEM: Final = struct.Struct(">BxH")  # item type, reserved, item length
_PDV: Final = struct.Struct(">IBB")  # item length, presentation context id, control header


class PduError(ValueError):
    """The peer broke the protocol: answer with A-ABORT (``reason``) and close."""

    def __init__(self, message: str, reason: int = ABORT_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ProposedContext:
    id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AssociateRequest:
    protocol_version: int
    called_ae: str
    calling_ae: str
    called_field: bytes  # the 16 bytes as sent: the AC echoes them (PS3.8 §9.3.3)
    calling_field: bytes
    application_context: str
    contexts: tuple[ProposedContext, ...]
    max_pdu_length: int  # the requestor's maximum receive length; 0 = no limit


@dataclass(frozen=True, slots=True)
class ContextResult:
    id: int
    result: int
    transfer_syntax: str  # the accepted one; not significant when refused


@dataclass(slots=True)
class PData:
    """One PDV of a P-DATA-TF."""

    context_id: int
    is_command: bool
    is_last: bool
    data: memoryview = field(repr=False)


def parse_associate_rq(body: bytes | bytearray) -> AssociateRequest:
    """Decode the variable part of an A-ASSOCIATE-RQ (the bytes after its 6-byte header)."""
    if len(body) < 68:
        raise PduError("A-ASSOCIATE-RQ shorter than its fixed fields")
    version = int.from_bytes(body[0:2], "big")
    called_field, calling_field = bytes(body[4:20]), bytes(body[20:36])
    context_name = ""
    contexts: list[ProposedContext] = []
    max_length = 0
    for kind, value in _items(memoryview(body)[68:]):
        if kind == 0x10:
            context_name = _text(value)
        elif kind == 0x20:
            context = _proposed_context(value)
            if context.id % 2 == 0 or any(c.id == context.id for c in contexts):
                raise PduError("presentation context ID even or repeated (PS3.8 §9.3.2.2)")
            contexts.append(context)
        elif kind == 0x50:
            for sub_kind, sub_value in _items(value):
                if sub_kind == 0x51:
                    if len(sub_value) != 4:
                        raise PduError("maximum length sub-item is not 4 bytes")
                    max_length = int.from_bytes(sub_value, "big")
        # Other item types are reserved; PS3.8 §9.3.1 says to ignore them.
    return AssociateRequest(
        protocol_version=version,
        called_ae=_text(called_field),
        calling_ae=_text(calling_field),
        called_field=called_field,
        calling_field=calling_field,
        application_context=context_name,
        contexts=tuple(contexts),
        max_pdu_length=max_length,
    )


def _proposed_context(value: memoryview) -> ProposedContext:
    if len(value) < 4:
        raise PduError("presentation context item too short")
    abstract = ""
    syntaxes: list[str] = []
    for kind, sub in _items(value[4:]):
        if kind == 0x30:
            abstract = _text(sub)
        elif kind == 0x40:
            syntaxes.append(_text(sub))
    if not abstract or not syntaxes:
        raise PduError("presentation context without an abstract or a transfer syntax")
    return ProposedContext(value[0], abstract, tuple(syntaxes))


def _items(data: memoryview) -> Iterator[tuple[int, memoryview]]:
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise PduError("item header cut short")
        kind, length = _ITEM.unpack_from(data, offset)
        end = offset + 4 + length
        if end > len(data):
            raise PduError("item longer than its PDU")
        yield kind, data[offset + 4 : end]
        offset = end


def _text(value: bytes | memoryview) -> str:
    """A UID or AE title field: ASCII, trailing NUL and space padding removed."""
    try:
        return bytes(value).decode("ascii").strip("\x00 ")
    except UnicodeDecodeError:
        raise PduError("non-ASCII UID or AE title") from None


def iter_pdvs(body: memoryview) -> Iterator[PData]:
    """The PDVs of a P-DATA-TF body (views into it: no copy)."""
    offset = 0
    if not body:
        raise PduError("P-DATA-TF without a PDV")
    while offset < len(body):
        if offset + 6 > len(body):
            raise PduError("PDV header cut short")
        length, context_id, control = _PDV.unpack_from(body, offset)
        end = offset + 4 + length
        if length < 2 or end > len(body):
            raise PduError("PDV length outside its PDU")
        if control & ~0x03:
            raise PduError("PDV message control header has reserved bits set")
        yield PData(context_id, bool(control & 0x01), bool(control & 0x02), body[offset + 6 : end])
        offset = end


def associate_ac(
    request: AssociateRequest,
    results: list[ContextResult],
    *,
    max_pdu_length: int,
    implementation_uid: str,
    implementation_version: str,
) -> bytes:
    contexts = b"".join(
        _item(
            0x21,
            bytes((result.id, 0, result.result, 0)) + _item(0x40, _uid(result.transfer_syntax)),
        )
        for result in results
    )
    user = _item(
        0x50,
        _item(0x51, max_pdu_length.to_bytes(4, "big"))
        + _item(0x52, _uid(implementation_uid))
        + _item(0x55, implementation_version.encode("ascii")),
    )
    body = (
        PROTOCOL_VERSION.to_bytes(2, "big")
        + b"\x00\x00"
        + request.called_field
        + request.calling_field
        + bytes(32)
        + _item(0x10, _uid(APPLICATION_CONTEXT))
        + contexts
        + user
    )
    return HEADER.pack(ASSOCIATE_AC, len(body)) + body


def associate_rj(result: int, source: int, reason: int) -> bytes:
    return HEADER.pack(ASSOCIATE_RJ, 4) + bytes((0, result, source, reason))


def release_rp() -> bytes:
    return HEADER.pack(RELEASE_RP, 4) + bytes(4)


def abort(reason: int, source: int = 2) -> bytes:
    return HEADER.pack(ABORT, 4) + bytes((0, 0, source, reason))


def p_data(context_id: int, payload: bytes, *, command: bool, max_pdu_length: int) -> list[bytes]:
    """One message (command or data set) as P-DATA-TF PDUs of at most ``max_pdu_length``
    (the peer's limit; 0 = none), the last fragment flagged (PS3.8 annex E)."""
    room = len(payload) if max_pdu_length == 0 else max(max_pdu_length - 6, 1)
    pdus: list[bytes] = []
    offset = 0
    while True:
        chunk = payload[offset : offset + room]
        offset += len(chunk)
        last = offset >= len(payload)
        control = (0x01 if command else 0x00) | (0x02 if last else 0x00)
        pdv = _PDV.pack(len(chunk) + 2, context_id, control) + chunk
        pdus.append(HEADER.pack(P_DATA_TF, len(pdv)) + pdv)
        if last:
            return pdus


def _item(kind: int, value: bytes) -> bytes:
    return _ITEM.pack(kind, len(value)) + value


def _uid(uid: str) -> bytes:
    return uid.encode("ascii")  # UIDs in PS3.8 items are not padded
