"""The payload of a PACS label row (kind ``dicom-kos``): one Key Object Selection document.

Written by the label workflow (``adapter.label.service``) with the document's bytes as stored
in the label record; read by the KOS deliverers (``adapter.label.delivery``: C-STORE, STOW-RS,
files), which check before every attempt that the bytes still are the document named by
``sop_instance_uid``. ``supersedes``: the SOP Instance UID of the study's previous label KOS
("" for the first).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from adapter.store import payloads
from adapter.store.labels import KIND_KOS

JSON = dict[str, Any]
_UID_CHARS = frozenset("0123456789.")


@dataclass(frozen=True, slots=True)
class KosPayload:
    study_uid: str
    sop_instance_uid: str
    instance_number: int
    document: bytes  # the DICOM file (Part 10) as stored in the label record
    supersedes: str = ""

    def to_json(self) -> JSON:
        return {
            "study_uid": self.study_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "instance_number": self.instance_number,
            "supersedes": self.supersedes,
            "document": base64.b64encode(self.document).decode("ascii"),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        number = data["instance_number"]
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValueError("instance_number: not a positive whole number")
        text = data["document"]
        if not isinstance(text, str):
            raise ValueError("document: not base64 text")
        try:
            document = base64.b64decode(text, validate=True)
        except binascii.Error:
            raise ValueError("document: not base64") from None
        if document[128:132] != b"DICM":
            raise ValueError("document: not a DICOM file (no DICM preamble)")
        supersedes = data.get("supersedes", "")
        return cls(
            study_uid=_uid(data["study_uid"], "study_uid"),
            sop_instance_uid=_uid(data["sop_instance_uid"], "sop_instance_uid"),
            instance_number=number,
            document=document,
            supersedes=_uid(supersedes, "supersedes") if supersedes else "",
        )


def _uid(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or not set(value) <= _UID_CHARS:
        raise ValueError(f"{field}: not a DICOM UID")
    return value


payloads.register(KosPayload, KIND_KOS)
