"""Fit an order to the receiver's charset before it is built: choose the name groups the
charset can carry, and (when the profile says ``unencodable: transliterate``) transliterate
free text, saying so in an NTE.

Identifiers (patient id, placer number, Study UID, accession, procedure ids) are never
transliterated or replaced: a changed identifier would point at someone else. A character in
one of them that the charset cannot hold is always an error.

Errors name the segment-field and the character (``U+00D8 LATIN CAPITAL LETTER O WITH
STROKE``): one character identifies no-one, and the analyst can see what to fix.
"""

from __future__ import annotations

import unicodedata
from dataclasses import replace

from anyascii import anyascii

from adapter.errors import MappingError
from adapter.hl7.model import OrderRequest, PersonNameGroup, Provider
from adapter.hl7.profiles import ReceiverProfile

TRANSLITERATION_NOTE = (
    "Note from the adapter: characters that the receiver's character set ({charset}) cannot "
    "hold were transliterated; the original text is in the EHR."
)


class MessageBuildError(MappingError):
    """An order that cannot be rendered for a receiver (names segment and field, never values)."""

    def __init__(self, location: str, problem: str) -> None:
        super().__init__(f"{location}: {problem}")
        self.location = location
        self.problem = problem


def character(char: str) -> str:
    """``U+00D8 LATIN CAPITAL LETTER O WITH STROKE`` (code point and Unicode name)."""
    return f"U+{ord(char):04X} {unicodedata.name(char, '')}".strip()


def first_unencodable(text: str, codec: str) -> str | None:
    for char in text:
        try:
            char.encode(codec)
        except UnicodeEncodeError:
            return char
    return None


def transliterate(text: str, codec: str) -> str:
    """Each character the codec cannot hold: its base letter (``Ø`` → ``O``), else AnyASCII's
    romanisation (``山田`` → ``ShanTian``: Chinese readings, hence the NTE), else ``?``."""
    out = []
    for char in text:
        if first_unencodable(char, codec) is None:
            out.append(char)
            continue
        decomposed = unicodedata.normalize("NFKD", char)
        base = "".join(c for c in decomposed if not unicodedata.combining(c))
        if base and first_unencodable(base, codec) is None:
            out.append(base)
            continue
        romanised = anyascii(char)
        out.append(romanised if romanised and first_unencodable(romanised, codec) is None else "?")
    return "".join(out)


def _name_text(group: PersonNameGroup) -> str:
    return "".join((group.family, group.given, group.middle, group.prefix, group.suffix))


def _check_identifiers(order: OrderRequest, codec: str, charset: str) -> None:
    fields: list[tuple[str, str]] = [
        ("ORC-2", order.placer_order_number),
        ("ORC-2.2", order.placer_namespace),
        ("ORC-3", order.filler_order_number),
        ("ZDS-1", order.study_instance_uid),
        ("IPC-1", order.accession_number),
        ("IPC-2", order.requested_procedure_id),
        ("IPC-4", order.scheduled_procedure_step_id),
        *(("PID-3", i.value) for i in order.patient.identifiers),
        *(("PID-3.4", i.assigning_authority) for i in order.patient.identifiers),
    ]
    if order.ordering_provider is not None:
        fields.append(("ORC-12", order.ordering_provider.identifier))
    for location, text in fields:
        bad = first_unencodable(text, codec)
        if bad is not None:
            raise MessageBuildError(
                location,
                f"an identifier has a character that {charset} cannot encode: {character(bad)}",
            )


def fit_order(order: OrderRequest, profile: ReceiverProfile) -> OrderRequest:
    """The order as it will be built for ``profile``'s charset.

    Raises:
        MessageBuildError: an identifier cannot be encoded, or no name group can be and the
            profile does not allow replacing or transliterating it.
    """
    codec, charset = profile.codec, profile.charset
    _check_identifiers(order, codec, charset)
    groups = order.patient.name_groups()
    carried = tuple(g for g in groups if first_unencodable(_name_text(g), codec) is None)
    if groups and not carried:
        if profile.unencodable == "error":
            bad = first_unencodable(_name_text(groups[0]), codec) or "?"
            raise MessageBuildError(
                "PID-5", f"no name group can be encoded in {charset}: {character(bad)}"
            )
        carried = (replace(groups[0], representation="A"),)
    patient = replace(order.patient, names=carried, family="", given="")
    order = replace(order, patient=patient)
    if profile.unencodable != "transliterate":
        return order
    return _transliterated(order, codec, charset)


def _transliterated(order: OrderRequest, codec: str, charset: str) -> OrderRequest:
    def t(text: str) -> str:
        return transliterate(text, codec)

    names = tuple(
        replace(
            g,
            family=t(g.family),
            given=t(g.given),
            middle=t(g.middle),
            prefix=t(g.prefix),
            suffix=t(g.suffix),
        )
        for g in order.patient.names
    )
    provider: Provider | None = order.ordering_provider
    if provider is not None:
        provider = replace(
            provider, family=t(provider.family), given=t(provider.given), prefix=t(provider.prefix)
        )
    changed = replace(
        order,
        patient=replace(order.patient, names=names),
        ordering_provider=provider,
        concern_text=t(order.concern_text),
        extra_notes=tuple(t(n) for n in order.extra_notes),
        reason_text=t(order.reason_text),
        service_text=t(order.service_text),
        control_reason=t(order.control_reason),
    )
    if changed == order:
        return order
    note = TRANSLITERATION_NOTE.format(charset=charset)
    return replace(changed, extra_notes=(*changed.extra_notes, note))
