"""A review's HL7 rows, prepared in full before anything is stored, then stored with its FHIR rows.

A concern must never reach the EHR without reaching radiology. So everything that can fail in
building an order (the receiver profile, the charset, the fields the message type requires) is
done by :func:`prepare_orders` *before* the review is stored: the message bytes are rendered
here, once, and kept in the row. :func:`enqueue_review` then stores the review's FHIR rows, the
HL7 rows and their T1 timers in one transaction: all of them, or none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from adapter.config import Settings
from adapter.errors import ConfigError
from adapter.hl7.deliverer import HL7, T1, prerender
from adapter.hl7.order_payload import KIND_CANCEL, KIND_ORDER, OrderPayload
from adapter.hl7.profiles import ReceiverProfile, load_profiles
from adapter.mapping.review_bundle import ReviewOutput, StudyContext
from adapter.mapping.review_input import ReviewInput
from adapter.review.orders import order_payloads, study_facts
from adapter.store.orders import QueuedOrder
from adapter.store.outbox import NewRow
from adapter.store.protocol import Store
from adapter.tables import Tables

JSON = dict[str, Any]
FHIR = "fhir"
IDENTITY = "identity"  # escalation: the order is held, the EHR's Patient disagrees


def held(orders: Sequence[PreparedOrder], fields: Sequence[str]) -> list[PreparedOrder]:
    """The orders, held when the EHR's Patient disagrees with the DICOM headers on
    ``fields`` (field names only, never values)."""
    if not fields:
        return list(orders)
    why = f"the EHR's patient {' and '.join(fields)} do not match the DICOM headers"
    return [replace(o, hold=why) if o.kind != KIND_CANCEL else o for o in orders]


@dataclass(frozen=True, slots=True)
class PreparedOrder:
    """One HL7 row, its message already rendered, not yet stored."""

    kind: str
    target: str  # the receiver profile's name
    placer: str
    label: str
    content: OrderPayload  # the row's payload, typed (stored as ``content.to_json()``)
    t1_seconds: float | None  # T1 starts with the row (MLLP only: a file is not a RIS)
    hold: str = ""  # why the order is held (stored, not sent) and escalated instead
    study_uid: str = ""

    def record(self) -> QueuedOrder:
        """What the store's order record keeps of this row (``adapter.store.orders``)."""
        payload = self.content
        return QueuedOrder(
            placer=self.placer,
            study_uid=self.study_uid,
            request_placer=payload.request_placer,
            receiver=self.target,
            control=payload.control,
            control_id=payload.control_id,
            order=payload.order,
            fhir=payload.fhir,
        )


def receiver_profile(settings: Settings, folder: Any) -> ReceiverProfile:
    """The configured receiver profile.

    Raises:
        ConfigError: no profile of that name (or a profile file is invalid).
    """
    profiles = load_profiles(folder)
    if settings.hl7.receiver not in profiles:
        raise ConfigError("hl7.receiver", f"no receiver profile named {settings.hl7.receiver!r}")
    return profiles[settings.hl7.receiver]


def prepare_orders(
    outbox: Store,
    review: ReviewInput,
    output: ReviewOutput,
    ctx: StudyContext,
    settings: Settings,
    tables: Tables,
    destinations: Sequence[tuple[str, str]],
    *,
    receivers: Any,
    now: datetime,
) -> list[PreparedOrder]:
    """The HL7 rows this review needs (new order, update, cancels), each rendered for the
    receiver. Reads the outbox; writes nothing.

    Raises:
        MessageBuildError: an order cannot be built for the receiver (names the segment-field
            and the character); nothing has been stored.
        ConfigError: the receiver profile is missing or invalid.
    """
    if not output.placer and not output.hl7_cancels:
        return []
    profile = receiver_profile(settings, receivers)
    uid = review.study_instance_uid
    previous = outbox.last_orders(uid)
    facts = study_facts(outbox.study(uid))
    fhir_targets = [d for d in destinations if d[0] in (FHIR, "files")]
    payloads = order_payloads(
        review,
        output,
        ctx,
        facts,
        tables,
        profile=profile.name,
        namespace=settings.hl7.placer_namespace,
        fhir_targets=fhir_targets,
        already_ordered=previous,
        updates=profile.updates,
    )
    prepared = []
    for kind, raw_payload in payloads:
        if kind != KIND_ORDER:  # a cancel or change names the RIS's own number when known
            known = outbox.order(raw_payload.placer)
            filler = known.filler if known is not None else ""
            raw_payload = replace(
                raw_payload, order={**raw_payload.order, "filler_order_number": filler}
            )
        payload = prerender(raw_payload, profile=profile, now=now)
        placer, control = payload.placer, payload.control
        t1 = None
        if kind == KIND_ORDER and settings.hl7.mllp:
            t1 = profile.escalation.t1_no_aa.total_seconds()
        label = f"Order-{placer}-{control}"
        prepared.append(
            PreparedOrder(kind, profile.name, placer, label, payload, t1, study_uid=uid)
        )
    return prepared


def enqueue_review(
    outbox: Store, key: str, review_rows: Sequence[NewRow], orders: Sequence[PreparedOrder]
) -> tuple[list[int], list[int]]:
    """Store the review's FHIR rows, its HL7 rows and their T1 timers in one transaction.

    Each HL7 row waits for the review's FHIR row (the FHIR server's when there is one, else
    the file writer's): the RIS never receives an order the EHR does not hold.
    """
    with outbox.batch() as batch:
        ids = [batch.enqueue(row) for row in review_rows]
        after = next(
            (i for row, i in zip(review_rows, ids, strict=True) if row.destination == FHIR),
            ids[0] if ids else None,
        )
        hl7_ids = []
        for order in orders:
            payload = order.content.to_json()
            new = NewRow(HL7, order.target, key, order.kind, order.label, payload, after)
            row_id = batch.enqueue(new)
            batch.record_order(row_id, order.record())
            hl7_ids.append(row_id)
            if order.hold:  # not sent until an analyst retries; escalated now instead of T1
                batch.hold(HL7, order.target, key, order.hold)
                batch.arm(order.placer, IDENTITY, 0, order.hold)
            elif order.t1_seconds is not None:
                batch.arm(order.placer, T1, order.t1_seconds, "no AA from RIS")
    return ids, hl7_ids
