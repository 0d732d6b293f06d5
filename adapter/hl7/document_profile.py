"""The ``document:`` section of a receiver profile that takes the review note (MDM or ORU).

Keys (all optional; ``docs/receivers.md`` documents them):

* ``content``: ``TX`` (the text note, one OBX of type TX per line), ``ED`` (the PDF, one OBX of
  type ED, base64) or ``both``.
* ``amendment_event``: ``T10`` (document replacement) or ``T08`` (document edit) for a later
  version of the review.
* ``withdrawal_event``: ``T10`` (the withdrawal note replaces the earlier one) or ``T11`` (the
  earlier document is cancelled and the withdrawal note follows as a new document whose
  TXA-13 names the cancelled one, so the EHR never ends up without the documented review).
* ``type_code``: TXA-2 document type (HL7 table 0270 is user-defined: agree it with the site).
* ``completion_status``: TXA-17 (table 0271): ``AU`` authenticated (the oncologist signed the
  review in the submitting system; TXA-22 then names them) or ``DO`` documented.
* ``namespace``: EI namespace of the document numbers (TXA-12, OBR-3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

DOCUMENT_KEYS = frozenset(
    {
        "content",
        "amendment_event",
        "withdrawal_event",
        "type_code",
        "completion_status",
        "namespace",
    }
)


class _Reader(Protocol):  # adapter.hl7.profiles._Reader (no import: it imports this module)
    def str_(
        self, name: str, default: str | None = None, *, choices: tuple[str, ...] = ()
    ) -> str: ...


@dataclass(frozen=True, slots=True)
class DocumentOptions:
    content: Literal["TX", "ED", "both"] = "TX"
    amendment_event: Literal["T10", "T08"] = "T10"
    withdrawal_event: Literal["T10", "T11"] = "T10"
    type_code: str = "PN"
    completion_status: Literal["AU", "DO"] = "AU"
    namespace: str = "RTPLAN"


def parse_document_options(reader: _Reader) -> DocumentOptions:
    values: dict[str, Any] = {
        "content": reader.str_("content", "TX", choices=("TX", "ED", "both")),
        "amendment_event": reader.str_("amendment_event", "T10", choices=("T10", "T08")),
        "withdrawal_event": reader.str_("withdrawal_event", "T10", choices=("T10", "T11")),
        "type_code": reader.str_("type_code", "PN"),
        "completion_status": reader.str_("completion_status", "AU", choices=("AU", "DO")),
        "namespace": reader.str_("namespace", "RTPLAN"),
    }
    return DocumentOptions(**values)
