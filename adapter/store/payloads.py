"""One typed payload codec per outbox row kind.

The outbox stores a payload as JSON and never looks inside it. What a payload of a kind holds
is written down once, as a codec: a class with ``to_json()`` and ``from_json(data)``,
registered for the kinds it serves (``adapter.hl7.order_payload`` for the HL7 order kinds).
Producers build the typed value and store ``to_json()`` (so a payload has the codec's shape
by construction); consumers (the deliverer, replay) read it back with :func:`decode`, which
names the kind and the field when a payload (a hand-edited replay, say) does not fit.

Kinds without a registered codec (FHIR transaction Bundles, whose contract is the FHIR
specification itself) are stored as given.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, Self

JSON = dict[str, Any]


class PayloadCodec(Protocol):
    """A typed payload: built by its producer, stored as JSON, decoded by its consumers."""

    def to_json(self) -> JSON: ...

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self: ...


_CODECS: dict[str, type[PayloadCodec]] = {}


class PayloadError(ValueError):
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


def decode(kind: str, payload: Mapping[str, Any]) -> PayloadCodec:
    """The typed payload of a row of ``kind``.

    Raises:
        PayloadError: no codec for the kind, or the payload does not fit it.
    """
    codec = _CODECS.get(kind)
    if codec is None:
        raise PayloadError(f"no payload codec for kind {kind!r}")
    try:
        return codec.from_json(payload)
    except (KeyError, TypeError, ValueError) as exc:
        raise PayloadError(f"{kind} payload: {exc}") from None
