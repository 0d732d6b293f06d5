"""The payload of a FHIR transaction row: one ``transaction`` Bundle, sent as it is.

Kinds: ``fhir-transaction`` (an ingest's ImagingStudy Bundle, a Task update on an ACK or an
escalation, a radiology result), ``fhir-review-transaction`` (a review's report, requests and
Task) and ``fhir-note-transaction`` (the review note's DocumentReference). The Bundle's
contract is the FHIR specification; this codec checks the part the deliverers rely on (a
``transaction`` Bundle whose entries each have a request with a method and a URL, and a
resource where the method writes one), so a hand-edited replay that is not one is refused with
the field that is wrong, before anything is sent. The full profile check is the FHIR server's.

Built by the ingest, review, note and inbound workflows; read by the FHIR deliverer and the
output-folder file writer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

from adapter.store import payloads

JSON = dict[str, Any]
KIND_TRANSACTION = "fhir-transaction"
KIND_REVIEW = "fhir-review-transaction"
KIND_NOTE = "fhir-note-transaction"
TRANSACTION_KINDS = (KIND_TRANSACTION, KIND_REVIEW, KIND_NOTE)

# R4 http-verb; a transaction's POST and PUT carry the resource they write.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"})
_WRITES = frozenset({"POST", "PUT"})


@dataclass(frozen=True, slots=True)
class TransactionPayload:
    bundle: JSON  # the Bundle as sent (resourceType Bundle, type transaction)

    def to_json(self) -> JSON:
        return self.bundle

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        if data.get("resourceType") != "Bundle":
            raise ValueError("resourceType: not 'Bundle'")
        if data.get("type") != "transaction":
            raise ValueError("type: not 'transaction'")
        entries = data.get("entry", [])
        if not isinstance(entries, list):
            raise ValueError("entry: not a list")
        for index, entry in enumerate(entries):
            _check_entry(index, entry)
        return cls(data if isinstance(data, dict) else dict(data))


def _check_entry(index: int, entry: object) -> None:
    where = f"entry[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: not an object")
    request = entry.get("request")
    if not isinstance(request, dict):
        raise ValueError(f"{where}.request: missing or not an object")
    method = request.get("method")
    if method not in _METHODS:
        raise ValueError(f"{where}.request.method: not one of {', '.join(sorted(_METHODS))}")
    url = request.get("url")
    if not isinstance(url, str) or not url:
        raise ValueError(f"{where}.request.url: missing or not a string")
    resource = entry.get("resource")
    if resource is None and method not in _WRITES:
        return
    if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
        raise ValueError(f"{where}.resource.resourceType: missing")


payloads.register(TransactionPayload, *TRANSACTION_KINDS)
