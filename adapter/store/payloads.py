"""One typed payload codec per outbox row kind.

The outbox stores a payload as JSON and never looks inside it (no SQL reads a payload). What a
payload of a kind holds is written down once, as a codec: a class with ``to_json()`` and
``from_json(data)``, registered here for the kinds it serves by the module that defines it,
beside its domain (docs/store.md, "Row payloads"):

- ``fhir-transaction``, ``fhir-review-transaction``, ``fhir-note-transaction``:
  ``adapter.fhir.transaction_payload.TransactionPayload`` (a FHIR transaction Bundle);
- ``hl7-order``, ``hl7-change``, ``hl7-cancel``: ``adapter.hl7.order_payload.OrderPayload``;
- ``hl7-document``: ``adapter.hl7.document_payload.DocumentPayload`` (the note's MDM/ORU);
- ``dicom-kos``: ``adapter.label.kos_payload.KosPayload`` (the PACS label KOS).

Producers build the typed value and store ``to_json()``; the store passes every payload it is
given through its kind's codec (:func:`encode`), so a row never holds a payload its deliverer
cannot read. Consumers (the worker, the deliverers, ``rtplan outbox replay``) read it back with
:func:`decode`. A payload that does not fit its kind (a hand-edited replay, say) is refused
with one line naming the kind and the field (:class:`PayloadError`); a kind with no codec is
refused too. ``adapter.jobs.payload_codecs`` imports every codec module, so a process that
stores or delivers rows it did not build (the worker, replay) knows every kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, Self, TypeVar

from adapter.errors import ParseError

JSON = dict[str, Any]


class PayloadCodec(Protocol):
    """A typed payload: built by its producer, stored as JSON, decoded by its consumers.

    ``from_json`` raises ``KeyError`` (a missing field), ``TypeError`` or ``ValueError`` (a
    field of the wrong shape; the message starts with the field's name)."""

    def to_json(self) -> JSON: ...

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self: ...


_CODECS: dict[str, type[PayloadCodec]] = {}
C = TypeVar("C", bound=PayloadCodec)


class PayloadError(ParseError, ValueError):
    """A payload that its kind's codec cannot read (the message names the kind and field)."""


def register(codec: type[PayloadCodec], *kinds: str) -> None:
    """Make ``codec`` the payload type of each of ``kinds`` (one codec per kind)."""
    for kind in kinds:
        existing = _CODECS.get(kind)
        if existing is not None and existing is not codec:
            raise ValueError(f"kind {kind!r} already has the codec {existing.__name__}")
        _CODECS[kind] = codec


def codec_for(kind: str) -> type[PayloadCodec] | None:
    return _CODECS.get(kind)


def kinds() -> dict[str, type[PayloadCodec]]:
    """Every registered kind and its codec (those of the codec modules imported so far)."""
    return dict(_CODECS)


def decode(kind: str, payload: Mapping[str, Any]) -> PayloadCodec:
    """The typed payload of a row of ``kind``.

    Raises:
        PayloadError: no codec for the kind, or the payload does not fit it.
    """
    codec = _CODECS.get(kind)
    if codec is None:
        raise PayloadError(f"no payload codec for kind {kind!r}")
    return read_as(codec, kind, payload)


def read_as(codec: type[C], kind: str, payload: Mapping[str, Any]) -> C:
    """``payload`` read with ``codec`` (a consumer that knows its type), errors as in
    :func:`decode`."""
    if not isinstance(payload, Mapping):
        raise PayloadError(f"{kind} payload: not a JSON object")
    try:
        return codec.from_json(payload)
    except KeyError as exc:
        raise PayloadError(f"{kind} payload: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise PayloadError(f"{kind} payload: {exc}") from None


def encode(kind: str, payload: Mapping[str, Any]) -> JSON:
    """The JSON to store for a row of ``kind``: ``payload`` read with the kind's codec and
    written back (so what is stored always fits it).

    Raises:
        PayloadError: no codec for the kind, or the payload does not fit it.
    """
    return decode(kind, payload).to_json()
