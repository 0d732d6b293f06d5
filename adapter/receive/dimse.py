"""DIMSE command sets (PS3.7 §9.3, §E) and the Part 10 file meta the receiver writes.

A command set is group 0000 in Implicit VR Little Endian. The receiver reads a handful of its
elements and answers with C-STORE-RSP or C-ECHO-RSP; the received data set is never decoded,
only prefixed with its file meta (PS3.10 §7.1) so that the spool holds a Part 10 file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from adapter.receive.pdu import PduError

C_STORE_RQ: Final = 0x0001
C_ECHO_RQ: Final = 0x0030
C_CANCEL_RQ: Final = 0x0FFF
RESPONSE_BIT: Final = 0x8000
NO_DATA_SET: Final = 0x0101

AFFECTED_SOP_CLASS: Final = 0x0002
COMMAND_FIELD: Final = 0x0100
MESSAGE_ID: Final = 0x0110
MESSAGE_ID_RESPONDED_TO: Final = 0x0120
DATA_SET_TYPE: Final = 0x0800
STATUS: Final = 0x0900
AFFECTED_SOP_INSTANCE: Final = 0x1000

_ELEMENT: Final = struct.Struct("<HHI")  # group, element, value length (implicit VR LE)
_EXPLICIT_SHORT: Final = struct.Struct("<HH2sH")  # group, element, VR, 16-bit length
# (0002,0001) File Meta Information Version, OB: a 4-byte length after two reserved bytes.
_META_VERSION: Final = struct.pack("<HH2sHI2s", 0x0002, 0x0001, b"OB", 0, 2, b"\x00\x01")
MAX_COMMAND_BYTES: Final = 64 * 1024  # a command set is a few hundred bytes


@dataclass(frozen=True, slots=True)
class Command:
    field: int
    message_id: int
    has_data_set: bool
    sop_class: str
    sop_instance: str


def parse_command(data: bytes) -> Command:
    """The elements of a request's command set that the receiver acts on."""
    if len(data) > MAX_COMMAND_BYTES:
        raise PduError("command set larger than 64 KiB")
    values: dict[int, bytes] = {}
    offset = 0
    while offset < len(data):
        if offset + 8 > len(data):
            raise PduError("command element header cut short")
        group, element, length = _ELEMENT.unpack_from(data, offset)
        offset += 8
        if group != 0x0000 or offset + length > len(data):
            raise PduError("command set element outside group 0000 or its length")
        values[element] = data[offset : offset + length]
        offset += length
    field = _us(values, COMMAND_FIELD)
    if field is None:
        raise PduError("command set without a Command Field (0000,0100)")
    return Command(
        field=field,
        message_id=_us(values, MESSAGE_ID) or 0,
        has_data_set=_us(values, DATA_SET_TYPE) not in (None, NO_DATA_SET),
        sop_class=_ui(values, AFFECTED_SOP_CLASS),
        sop_instance=_ui(values, AFFECTED_SOP_INSTANCE),
    )


def response(request: Command, status: int) -> bytes:
    """The response command set to ``request`` (C-STORE-RSP, C-ECHO-RSP, or the same field
    with the response bit for an operation we do not perform)."""
    elements = [_element(AFFECTED_SOP_CLASS, _uid(request.sop_class))] if request.sop_class else []
    elements += [
        _element(COMMAND_FIELD, (request.field | RESPONSE_BIT).to_bytes(2, "little")),
        _element(MESSAGE_ID_RESPONDED_TO, request.message_id.to_bytes(2, "little")),
        _element(DATA_SET_TYPE, NO_DATA_SET.to_bytes(2, "little")),
        _element(STATUS, status.to_bytes(2, "little")),
    ]
    if request.sop_instance:
        elements.append(_element(AFFECTED_SOP_INSTANCE, _uid(request.sop_instance)))
    body = b"".join(elements)
    return _element(0x0000, len(body).to_bytes(4, "little")) + body


def file_meta(
    sop_class: str,
    sop_instance: str,
    transfer_syntax: str,
    *,
    implementation_uid: str,
    implementation_version: str,
) -> bytes:
    """Preamble, ``DICM`` and group 0002 in Explicit VR Little Endian (PS3.10 §7.1).

    No Source Application Entity Title (0002,0016): the caller's AE title is a claim, not an
    identity, and the classifier's ``ae_titles`` rule reads that element. Written from the
    association, it would make whatever a sender calls itself planning evidence (a diagnostic
    CT pushed as ``CTSIM1`` would be labelled a planning scan).
    """
    body = b"".join(
        (
            _META_VERSION,
            _explicit(0x0002, b"UI", _uid(sop_class)),
            _explicit(0x0003, b"UI", _uid(sop_instance)),
            _explicit(0x0010, b"UI", _uid(transfer_syntax)),
            _explicit(0x0012, b"UI", _uid(implementation_uid)),
            _explicit(0x0013, b"SH", _padded(implementation_version)),
        )
    )
    length = _EXPLICIT_SHORT.pack(0x0002, 0x0000, b"UL", 4) + len(body).to_bytes(4, "little")
    return bytes(128) + b"DICM" + length + body


def _us(values: dict[int, bytes], element: int) -> int | None:
    value = values.get(element)
    if value is None or len(value) != 2:
        return None
    return int.from_bytes(value, "little")


def _ui(values: dict[int, bytes], element: int) -> str:
    try:
        return values.get(element, b"").decode("ascii").rstrip("\x00 ")
    except UnicodeDecodeError:
        raise PduError("non-ASCII UID in the command set") from None


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0x0000, element, len(value)) + value


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    return _EXPLICIT_SHORT.pack(0x0002, element, vr, len(value)) + value


def _uid(uid: str) -> bytes:
    raw = uid.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw  # UI is padded with NUL to even length


def _padded(text: str) -> bytes:
    raw = text.encode("ascii")
    return raw + b" " if len(raw) % 2 else raw
