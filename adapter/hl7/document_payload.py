"""The payload of a review-note document row (kind ``hl7-document``): one MDM^T02/T11 or
ORU^R01 message about the oncologist's note, rendered when the row was stored.

Written by the note workflow (``adapter.review.note.service``, which records each message in
the note records beside the row), read by the document deliverer
(``adapter.hl7.document_deliverer``) and the HL7 file writer. Every attempt sends ``message`` as
stored, so a resend keeps its MSH-10 (``control_id``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from adapter.store import payloads

JSON = dict[str, Any]
KIND_DOCUMENT = "hl7-document"
# = adapter.hl7.mdm.Event (not imported: hl7apy is slow to load): MDM^T02 new or replacing
# document, T08 edit, T10 replace, T11 cancel; ORU^R01 the result form of the note.
EVENTS = ("T02", "T08", "T10", "T11", "R01")


@dataclass(frozen=True, slots=True)
class DocumentPayload:
    profile: str  # the receiver profile's name
    review_id: str
    version: int  # the review version the message documents
    event: str  # one of EVENTS
    document_number: str  # TXA-12 (ORU: the review's base number)
    control_id: str  # MSH-10 of the rendered message
    message: bytes  # the rendered message: every attempt sends these bytes

    def to_json(self) -> JSON:
        return {
            "profile": self.profile,
            "review_id": self.review_id,
            "version": self.version,
            "event": self.event,
            "document_number": self.document_number,
            "control_id": self.control_id,
            "message": base64.b64encode(self.message).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        version = data["version"]
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError("version: not a positive whole number")
        event = data["event"]
        if event not in EVENTS:
            raise ValueError(f"event: not one of {', '.join(EVENTS)}")
        text = data["message"]
        try:
            message = base64.b64decode(text, validate=True) if isinstance(text, str) else b""
        except binascii.Error:
            raise ValueError("message: not base64") from None
        if not message.startswith(b"MSH"):
            raise ValueError("message: not an HL7 v2 message (no MSH segment)")
        return cls(
            profile=_text(data, "profile"),
            review_id=_text(data, "review_id"),
            version=version,
            event=str(event),
            document_number=_text(data, "document_number"),
            control_id=_text(data, "control_id"),
            message=message,
        )


def _text(data: Mapping[str, Any], field: str) -> str:
    value = data[field]
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field}: missing or not a string")
    return value


payloads.register(DocumentPayload, KIND_DOCUMENT)
