"""``GET /metrics`` (prometheus_client): read from the store at scrape time, so the figures are
the store's own (they survive a restart and agree across processes sharing one store).

* ``rtplan_outbox_rows{state,destination}``: rows by state (delivered and dead are totals)
* ``rtplan_queue_depth`` / ``rtplan_queue_oldest_age_seconds``: open rows and the oldest's age
* ``rtplan_escalations_fired_total``: escalation timers that fired
* ``rtplan_receiver_*_total``: C-STORE associations and instances (received, duplicates,
  refused, failed) and received studies by outcome, since this process started

No label carries a UID, name or any other value from the data.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from adapter.outbox.store import OPEN_STATES, Outbox


class StoreCollector(Collector):
    def __init__(self, outbox: Outbox, receiver: Mapping[str, int]) -> None:
        self.outbox = outbox
        self.receiver = receiver

    def collect(self) -> Iterator[Metric]:
        by_state: Counter[tuple[str, str]] = Counter()
        depth = 0
        oldest: float | None = None
        for row in self.outbox.rows(limit=1_000_000):
            by_state[(row.state.value, row.destination)] += 1
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
        timers = self.outbox.timers()
        yield CounterMetricFamily(
            "rtplan_escalations_fired", "Escalation timers fired", value=len(timers.fired())
        )
        for name, count in sorted(self.receiver.items()):
            metric = "rtplan_receiver_" + "".join(c if c.isalnum() else "_" for c in name)
            yield CounterMetricFamily(metric, f"DICOM receiver: {name}", value=count)


def metrics_text(outbox: Outbox, receiver: Mapping[str, int]) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(outbox, receiver))
    return generate_latest(registry), CONTENT_TYPE_LATEST
