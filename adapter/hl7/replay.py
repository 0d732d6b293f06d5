"""``rtplan outbox replay`` of an HL7 row: a new transmission of the same order.

A resend (the worker trying the same row again) keeps its MSH-10, so the RIS can recognise
it. A replay is an analyst's decision to send the order again, often after the RIS rejected
it: a RIS that de-duplicates on MSH-10 would drop it under the old id. So a replay gets a new
MSH-10 and MSH-7, the same placer order number, and (over MLLP) a new T1.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from adapter.config import Settings
from adapter.hl7.deliverer import KIND_ORDER, ORDER_KINDS, T1, new_transmission
from adapter.hl7.profiles import load_profiles, receivers_dir
from adapter.store.outbox import Row
from adapter.store.protocol import Store

JSON = dict[str, Any]


def replay_hl7(outbox: Store, row: Row, settings: Settings, payload: JSON | None) -> int:
    """Enqueue ``row``'s order (or a corrected ``payload``) as a new transmission; return the
    new row's id.

    Raises:
        MessageBuildError: the order cannot be built for its receiver.
        PayloadError: the corrected payload does not fit the row's kind (names the field).
    """
    profile = load_profiles(receivers_dir(settings)).get(row.target)
    if profile is None or row.kind not in ORDER_KINDS:  # a note document is sent as stored
        return outbox.replay(row.id, payload)  # waits, visibly, for its profile to return
    source = row if payload is None else _with_payload(row, payload)
    fresh = new_transmission(source, profile, datetime.now(UTC))
    with outbox.transaction():  # the row and the order record's new transmission together
        new_id = outbox.replay(row.id, fresh.to_json())
        outbox.record_transmission(new_id, fresh.placer, fresh.control, fresh.control_id)
    if row.kind == KIND_ORDER and settings.hl7.mllp:
        outbox.timers().arm(
            fresh.placer, T1, profile.escalation.t1_no_aa.total_seconds(), "replayed"
        )
    return new_id


def _with_payload(row: Row, payload: JSON) -> Row:
    return replace(row, payload=payload)
