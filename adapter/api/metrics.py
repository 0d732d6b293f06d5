"""``GET /metrics`` (prometheus_client): read from the store at scrape time, so the figures are
the store's own (they survive a restart and agree across processes sharing one store).

* ``rtplan_outbox_rows{state,destination}``: rows by state (delivered and dead are totals)
* ``rtplan_queue_depth`` / ``rtplan_queue_oldest_age_seconds``: open rows and the oldest's age
* ``rtplan_ack_latency_seconds``: HL7 orders, enqueued to accepting ACK (histogram)
* ``rtplan_escalations_fired_total``: escalation timers that fired
* ``rtplan_receiver_*_total``: C-STORE associations, instances and received studies by
  outcome (``RECEIVER_HELP``), counted by this process since it started (reset by a restart),
  each from 0 while the receiver runs

No label carries a UID, name or any other value from the data.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from adapter.store.outbox import OPEN_STATES, Row
from adapter.store.protocol import Store

ORDER_KIND = "hl7-order"
RECEIVER_HELP = {
    "associations": "C-STORE associations accepted",
    "associations_rejected": "C-STORE associations rejected (A-ASSOCIATE-RJ)",
    "received": "instances received and stored in the spool",
    "duplicates": "instances received again (same SOP Instance UID), kept once",
    "refused": "instances refused (C000 or 0122): not DICOM, no UIDs, unreadable, wrong class",
    "failed": "instances answered A700 (out of resources: spool not written, or memory full)",
    "studies_mapped": "study processing passes that mapped the study (late instances: one more)",
    "studies_held_not_planning": "study processing passes that held the study: not a planning scan",
    "studies_held_incomplete": "study processing passes that held the study: instances missing",
    "studies_held_identity": "study processing passes that held the study: identity disagrees",
    "studies_failed": "study processing passes whose mapping failed",
    "studies_errors": "study processing attempts that raised (the study is retried)",
    "studies_rejected_files": "received files ingest refused (quarantined)",
}
"""Every ``rtplan_receiver_<name>_total`` series; the name as the receiver counts it."""
ACK_BUCKETS = (0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 14400.0, 86400.0)


class StoreCollector(Collector):
    def __init__(self, outbox: Store, receiver: Mapping[str, int]) -> None:
        self.outbox = outbox
        self.receiver = receiver

    def collect(self) -> Iterator[Metric]:
        by_state: Counter[tuple[str, str]] = Counter()
        depth = 0
        oldest: float | None = None
        ack_seconds: list[float] = []
        for row in self.outbox.rows(limit=1_000_000):
            by_state[(row.state.value, row.destination)] += 1
            if _acked(row):
                ack_seconds.append(max(0.0, row.updated_at - row.created_at))
            if row.state.value in OPEN_STATES:
                depth += 1
                oldest = row.created_at if oldest is None else min(oldest, row.created_at)
        rows = GaugeMetricFamily(
            "rtplan_outbox_rows",
            "Outbox rows by state and destination",
            labels=["state", "destination"],
        )
        for (state, destination), count in sorted(by_state.items()):
            rows.add_metric([state, destination], count)
        yield rows
        yield GaugeMetricFamily("rtplan_queue_depth", "Rows not yet delivered or dead", value=depth)
        age = time.time() - oldest if oldest is not None else 0.0
        yield GaugeMetricFamily(
            "rtplan_queue_oldest_age_seconds", "Age of the oldest open row", value=age
        )
        yield _histogram(ack_seconds)
        timers = self.outbox.timers()
        yield CounterMetricFamily(
            "rtplan_escalations_fired", "Escalation timers fired", value=len(timers.fired())
        )
        # Issue 13: a study held for a patient-identity disagreement stays visible to alerting
        # until an operator resolves it (`rtplan identity resolve`).
        yield GaugeMetricFamily(
            "rtplan_identity_holds_open",
            "Studies held because their patient identity disagrees, not yet resolved",
            value=len(self.outbox.identity_holds(open_only=True)),
        )
        for name, count in sorted(self.receiver.items()):
            yield CounterMetricFamily(
                receiver_metric(name),
                RECEIVER_HELP.get(name, f"DICOM receiver: {name}")
                + " (since this process started)",
                value=count,
            )


def receiver_metric(name: str) -> str:
    """``studies_mapped`` -> ``rtplan_receiver_studies_mapped`` (``_total`` is added on
    exposition); anything but letters and digits becomes an underscore, as Prometheus needs."""
    return "rtplan_receiver_" + "".join(c if c.isalnum() else "_" for c in name)


def _acked(row: Row) -> bool:
    """An HL7 order the receiver accepted (not one still awaiting an application ACK)."""
    if row.kind != ORDER_KIND or row.state.value != "delivered" or not row.result:
        return False
    return bool(row.result.get("ack")) and not row.result.get("awaiting")


def _histogram(values: list[float]) -> HistogramMetricFamily:
    buckets = [(f"{bound:g}", sum(1 for v in values if v <= bound)) for bound in ACK_BUCKETS]
    buckets.append(("+Inf", len(values)))
    return HistogramMetricFamily(
        "rtplan_ack_latency_seconds",
        "HL7 order: from enqueued to the receiver's accepting ACK",
        buckets=buckets,
        sum_value=sum(values),
    )


def metrics_text(outbox: Store, receiver: Mapping[str, int]) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(outbox, receiver))
    return generate_latest(registry), CONTENT_TYPE_LATEST
