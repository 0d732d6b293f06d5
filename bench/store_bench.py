"""Store benchmark (issue 8): delivery drain on SQLite vs PostgreSQL, one process vs two.

Run in the project venv from the repository root::

    .venv/bin/python bench/store_bench.py             # 300 studies x 30 instances, 3 rounds
    .venv/bin/python bench/store_bench.py --quick     # 40 studies, 1 round

Peers: Medplum 4.5.2 in memory (``tests/peers/medplum/server.js``, as in deliver_bench.py) and
a throwaway PostgreSQL cluster from Debian's ``postgresql`` package
(``tests/peers/postgres_fixture.start_cluster``, Unix socket only) with its durable defaults
(``fsync`` on, ``synchronous_commit`` on), to compare with SQLite's ``synchronous=FULL``.

Backlog: ``--studies`` distinct copies of one ingested planning CT (deliver_bench.py's
``Studies``: each copy its own UIDs and Patient), one FHIR transaction row each, enqueued with
``adapter.jobs.deliver.enqueue`` into a fresh store before each trial; Medplum is emptied
(``POST /$reset``) before each trial and checked after it (ImagingStudy total = studies).

Configurations, interleaved in each round:

* ``sqlite, 1 process``: one ``rtplan outbox run`` on a SQLite file;
* ``postgresql, 1 process``: the same on a fresh PostgreSQL database (``RTPLAN_STORE__URL``);
* ``postgresql, 2 processes``: two ``rtplan outbox run`` started together on it.

Each process uses ``fhir.concurrency`` 4 and reconcile on (the default). Timed: the *drain
span*, from the first ``claimed`` event to the last ``delivered`` event in the store (process
start-up excluded), and the wall time from starting the processes until all exited.
Medplum's CPU use during the trial (psutil; 1.0 = one core busy: Node runs JavaScript on one
core, so near 1.0 means the peer is saturated) says whether the FHIR server limits the
figure. Load average at start is printed: on a shared machine the figures move.

Output: a Markdown report on stdout, also written to ``bench/results/store.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapter.jobs.deliver import FHIR, enqueue  # noqa: E402
from adapter.store.outbox import Outbox  # noqa: E402
from bench.deliver_bench import Peer, Studies, as_result, template_study  # noqa: E402
from tests.peers.launch import free_port  # noqa: E402
from tests.peers.postgres_fixture import (  # noqa: E402
    PgCluster,
    pg_bin,
    start_cluster,
    stop_cluster,
)

RTPLAN = str(Path(sys.executable).parent / "rtplan")


def fill(location: Path | str, studies: Studies, n: int, base: str) -> None:
    with Outbox(location) as outbox:
        ids = enqueue(outbox, as_result([studies.make(k) for k in range(n)]), [(FHIR, base)])
    if len(ids) != n:
        raise SystemExit(f"enqueued {len(ids)} rows for {n} studies")


def drain_span(location: Path | str) -> tuple[float, set[str]]:
    """Seconds from the first claim to the last delivery, and the owners that claimed."""
    with Outbox(location) as outbox:
        claims: list[float] = []
        delivered: list[float] = []
        owners: set[str] = set()
        for row in outbox.rows(limit=1_000_000):
            for at, event, detail in outbox.events(row.id):
                if event == "claimed":
                    claims.append(at)
                    owners.add(detail)
                elif event == "delivered":
                    delivered.append(at)
        counts = outbox.counts()
    if counts["delivered"] != sum(counts.values()):
        raise SystemExit(f"not every row was delivered: {counts}")
    return max(delivered) - min(claims), owners


def trial(
    peer: Peer, location: Path | str, processes: int, studies: Studies, n: int
) -> dict[str, Any]:
    peer.reset()
    fill(location, studies, n, peer.base)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTPLAN_")}
    env.update(
        RTPLAN_FHIR__BASE_URL=peer.base, RTPLAN_FHIR__CONCURRENCY="4", RTPLAN_LABEL__ENABLED="false"
    )
    argv = [RTPLAN, "outbox", "run"]
    env["RTPLAN_STORE__URL"] = f"sqlite:///{location}" if isinstance(location, Path) else location
    medplum = psutil.Process(peer.pid)
    cpu0 = sum(medplum.cpu_times()[:2])
    started = time.perf_counter()
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL) for _ in range(processes)]
    codes = [p.wait(timeout=900) for p in procs]
    wall = time.perf_counter() - started
    peer_cpu = sum(medplum.cpu_times()[:2]) - cpu0
    if codes != [0] * processes:
        raise SystemExit(f"rtplan outbox run exited {codes}")
    span, owners = drain_span(location)
    if len(owners) != processes:
        raise SystemExit(f"{processes} processes, but {len(owners)} claimed rows")
    with peer.client() as client:
        total = client.get("ImagingStudy", params={"_summary": "count"}).json()["total"]
    if total != n:
        raise SystemExit(f"{total} ImagingStudy for {n} studies")
    return {"span": span, "wall": wall, "peer_cpu": peer_cpu / span}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--instances", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "store.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.studies, args.repeats = 40, 1
        args.results = ROOT / "bench" / ".work" / "store-quick.md"
    work = Path(tempfile.mkdtemp(prefix="store-bench-"))
    load = os.getloadavg()
    studies = Studies(template_study(work, args.instances))
    peer = Peer(work, free_port())
    peer.start()
    cluster: PgCluster = start_cluster(durable=True)
    results: dict[str, list[dict[str, Any]]] = {}
    try:
        for round_ in range(args.repeats):
            configs: list[tuple[str, Path | str, int]] = [
                ("sqlite, 1 process", work / f"r{round_}.sqlite", 1),
                ("postgresql, 1 process", cluster.new_database(), 1),
                ("postgresql, 2 processes", cluster.new_database(), 2),
            ]
            for name, location, processes in configs:
                result = trial(peer, location, processes, studies, args.studies)
                results.setdefault(name, []).append(result)
                print(f"round {round_ + 1} {name}: {result}", file=sys.stderr)
    finally:
        stop_cluster(cluster)
        peer.stop()
    lines = report(args, results, load)
    text = "\n".join(lines) + "\n"
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text)
    return 0


def report(
    args: argparse.Namespace, results: dict[str, list[dict[str, Any]]], load: tuple[float, ...]
) -> list[str]:
    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    n = args.studies
    lines = [
        f"Store drain: {n} studies x {args.instances} instances, {args.repeats} round(s), "
        f"medians. {platform.platform()}, {os.cpu_count()} CPUs, load average at start "
        f"{load[0]:.1f}. PostgreSQL {cluster_version()}, durable settings.",
        "",
        "| configuration | drain span s | studies/s | wall s | Medplum CPU (1.0 = one core) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in results:
        span = med(name, "span")
        lines.append(
            f"| {name} | {span:.2f} | {n / span:.1f} | {med(name, 'wall'):.2f} | "
            f"{med(name, 'peer_cpu'):.2f} |"
        )
    one, two = med("postgresql, 1 process", "span"), med("postgresql, 2 processes", "span")
    sqlite = med("sqlite, 1 process", "span")
    lines += [
        "",
        f"PostgreSQL 2 processes / 1 process: **{one / two:.2f}x** (goal >= 1.6x). "
        f"PostgreSQL / SQLite, 1 process: {sqlite / one:.2f}x the SQLite rate.",
    ]
    return lines


def cluster_version() -> str:
    answer = subprocess.run(
        [str(pg_bin() / "postgres"), "--version"], capture_output=True, text=True, check=False
    )
    # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    return answer.stdout.removeprefix("postgres (PostgreSQL)").strip()


if __name__ == "__main__":
    raise SystemExit(main())
