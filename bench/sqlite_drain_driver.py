"""One SQLite outbox drain in this process, with whichever ``adapter`` is first on the path.

Run by ``bench/store_bench.py --regression REF`` once with this tree and once with an export of
``REF`` (``PYTHONPATH``), so the same Bundles drain through both versions of the code in the
same run. Usage: ``python sqlite_drain_driver.py BUNDLES.json OUTBOX.sqlite FHIR_BASE``; prints
one JSON line: enqueue and drain seconds, this process's CPU seconds, rows delivered.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path


def main() -> None:
    bundles_file, outbox_file, base = sys.argv[1:4]
    from adapter.config import FhirSettings, OutboxSettings, Settings

    try:  # after issue 8's layering
        from adapter.jobs.deliver import FHIR, deliver
        from adapter.store.outbox import NewRow, Outbox
    except ImportError:  # before it (the pre-issue-8 tree)
        from adapter.outbox.store import NewRow, Outbox  # type: ignore[no-redef]
        from adapter.service.deliver import FHIR, deliver  # type: ignore[no-redef]

    bundles = json.loads(Path(bundles_file).read_text())
    settings = Settings(
        fhir=FhirSettings(base_url=base, concurrency=4, reconcile=True),
        outbox=OutboxSettings(path=outbox_file),
    )
    started, cpu0 = time.perf_counter(), time.process_time()
    with Outbox(Path(outbox_file)) as outbox:
        rows = [
            NewRow(FHIR, base, f"study:{k}", "fhir-transaction", f"ImagingStudy-{k}", bundle)
            for k, bundle in enumerate(bundles)
        ]
        outbox.enqueue_many(rows)
        enqueued = time.perf_counter()
        report = asyncio.run(deliver(outbox, settings))
        done = time.perf_counter()
    print(
        json.dumps(
            {
                "enqueue_s": enqueued - started,
                "drain_s": done - enqueued,
                "cpu_s": time.process_time() - cpu0,
                "delivered": report.delivered,
            }
        )
    )


if __name__ == "__main__":
    main()
