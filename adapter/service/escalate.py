"""Escalations: an order the RIS never acknowledged (T1), a result that never came (T2), an
order the RIS rejected. Nothing is dropped quietly: each one is

- a metric (``escalations_<kind>``),
- a log line naming the placer order number and the kind, never patient data,
- a raised priority and a businessStatus saying why on the radiology Task (through the outbox),
- a row in ``rtplan escalations`` (the fired timer itself).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from adapter.fhir.transaction_payload import KIND_TRANSACTION
from adapter.hl7.deliverer import REJECTED, T1, T2
from adapter.review.radiology_result import task_entry, task_update, transaction
from adapter.store.outbox import NewRow
from adapter.store.protocol import Store
from adapter.store.timers import Timer

log = logging.getLogger(__name__)
WHY = {
    T1: "escalated: no acknowledgement (AA) from the RIS in time",
    T2: "escalated: no radiologist result in time",
    REJECTED: "escalated: the RIS rejected the order",
    "identity": "escalated: order held, not sent",
    "conflict": "escalated: a message reused a control id (MSH-10) with different content",
}
RAISE = {"routine": "urgent", "urgent": "asap", "asap": "stat", "stat": "stat"}


@dataclass
class Metrics:
    """Counters the service exposes (logged by ``rtplan serve``; asserted by tests)."""

    counters: Counter[str] = field(default_factory=Counter)

    def inc(self, name: str, by: int = 1) -> None:
        self.counters[name] += by


def escalate_due(
    outbox: Store, fhir_targets: list[tuple[str, str]], metrics: Metrics
) -> list[Timer]:
    """Fire every due timer once and store its Task update; return the fired timers."""
    fired = outbox.timers().take_due()
    for timer in fired:
        why = WHY.get(timer.kind, f"escalated: {timer.kind}")
        if timer.kind in (REJECTED, "identity") and timer.detail:  # codes, field names only
            why = f"{why} ({timer.detail})"
        metrics.inc(f"escalations_{timer.kind}")
        log.warning("ESCALATION %s for order %s: %s", timer.kind, timer.key, why)
        order = outbox.order(timer.key)
        outbox.audit(
            "escalation",
            outcome=timer.kind,
            actor="rtplan",
            study_uid=order.study_uid if order else "",
            detail=f"order {timer.key}: {why}",
        )
        task = order.fhir.get("radiology_task") if order else None
        if order is None or task is None:
            continue
        priority = RAISE.get(str(task.get("priority", "routine")), "urgent")
        bundle = transaction(
            task_entry(task_update(task, priority=priority, business_status=why), timer.key)
        )
        outbox.enqueue_many(
            [
                NewRow(
                    d,
                    t,
                    order.study_key,
                    KIND_TRANSACTION,
                    f"Escalation-{timer.key}-{timer.kind}",
                    bundle,
                )
                for d, t in fhir_targets
            ]
        )
    return fired
