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
import asyncio
import contextlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapter.hl7.deliverer import KIND_ORDER, OrderPayload, prerender  # noqa: E402
from adapter.hl7.profiles import load_profiles  # noqa: E402
from adapter.jobs.deliver import FHIR, HL7, enqueue  # noqa: E402
from adapter.store.outbox import NewRow, Outbox  # noqa: E402
from bench.deliver_bench import (  # noqa: E402
    Peer,
    Studies,
    as_result,
    post_direct,
    template_study,
)
from tests.integration.test_store_two_instances import NOW, RECEIVER, order  # noqa: E402
from tests.peers.launch import free_port  # noqa: E402
from tests.peers.postgres_fixture import (  # noqa: E402
    PgCluster,
    pg_bin,
    start_cluster,
    stop_cluster,
)

RTPLAN = str(Path(sys.executable).parent / "rtplan")
PEER_ALONE = "peer alone: bare httpx, 8 concurrent"
MLLP_1 = "postgresql, 1 process, HL7 over MLLP"
REGRESSION_RESULTS = ROOT / "bench" / "results" / "store-regression.md"
BEFORE_ISSUE_8 = "2108c50"  # main just before issue 8's first commit (9155434)
MLLP_2 = "postgresql, 2 processes, HL7 over MLLP"
# Runs argv[2:] (the rtplan script) under cProfile with the process's CPU clock, so that
# waiting (for PostgreSQL, for the FHIR server) does not count; stats to argv[1].
PROFILED = """
import cProfile, runpy, sys, time
out, script = sys.argv[1], sys.argv[2]
sys.argv = sys.argv[2:]
profiler = cProfile.Profile(time.process_time)
try:
    profiler.runcall(runpy.run_path, script, run_name="__main__")
except SystemExit as exc:
    code = exc.code
else:
    code = 0
profiler.dump_stats(out)
sys.exit(code)
"""


def fill(location: Path | str, studies: Studies, n: int, base: str) -> None:
    with Outbox(location) as outbox:
        ids = enqueue(outbox, as_result([studies.make(k) for k in range(n)]), [(FHIR, base)])
    if len(ids) != n:
        raise SystemExit(f"enqueued {len(ids)} rows for {n} studies")


def fill_orders(location: Path | str, n: int) -> None:
    """``n`` HL7 ORM^O01 order rows (one per study, independent of each other) for the
    default RIS profile, rendered as the review workflow stores them."""
    profile = load_profiles(ROOT / "mappings" / "receivers")[RECEIVER]
    rows = []
    for k in range(n):
        study_uid = f"2.25.{900_000 + k}"
        raw = OrderPayload(RECEIVER, order(k, study_uid).to_json())
        payload = prerender(raw, profile=profile, now=NOW).to_json()
        label = f"Order-PG{k:06d}-NW"
        rows.append(NewRow(HL7, RECEIVER, f"study:{study_uid}", KIND_ORDER, label, payload))
    with Outbox(location) as outbox:
        ids = outbox.enqueue_many(rows)
    if len(ids) != n:
        raise SystemExit(f"enqueued {len(ids)} order rows for {n}")


class Receiver:
    """python-hl7's MLLP receiver (tests/peers/hl7_receiver.py) as its own process, so that
    its CPU is measured apart; it prints one ``RECEIVED <MSH-10>`` line per message."""

    def __init__(self, work: Path) -> None:
        self.log = work / "receiver.log"
        self.port = free_port()
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.peers.hl7_receiver", "--port", str(self.port)],
                cwd=ROOT,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while "LISTENING" not in self.log.read_text():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"MLLP receiver did not start: {self.log.read_text()[-500:]}")
            time.sleep(0.1)
        self.pid = self.proc.pid

    def received(self) -> list[str]:
        lines = self.log.read_text().splitlines()
        return [line.split()[1] for line in lines if line.startswith("RECEIVED ")]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def drain_span(location: Path | str) -> tuple[float, set[str], float, float]:
    """Seconds from the first claim to the last delivery, the owners that claimed, and the
    first claim's and last delivery's times."""
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
    return max(delivered) - min(claims), owners, min(claims), max(delivered)


class PgCpu:
    """CPU seconds of the whole PostgreSQL cluster: the postmaster, its live children
    (background workers, backends) and the backends it has reaped (``children_*``)."""

    def __init__(self, cluster: PgCluster) -> None:
        pid = int((cluster.root / "data" / "postmaster.pid").read_text().split()[0])
        self.postmaster = psutil.Process(pid)

    def children(self) -> list[psutil.Process]:
        return self.postmaster.children()

    def seconds(self) -> float:
        times = self.postmaster.cpu_times()
        total = times.user + times.system + times.children_user + times.children_system
        for child in self.children():
            # a backend that just exited is counted as reaped
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(child.cpu_times()[:2])
        return total

    def settle(self, baseline: int, timeout: float = 5.0) -> None:
        """Wait until the backends of the finished processes have exited."""
        deadline = time.monotonic() + timeout
        while len(self.children()) > baseline and time.monotonic() < deadline:
            time.sleep(0.05)


class Sampler(threading.Thread):
    """CPU seconds of rtplan, PostgreSQL, Medplum and the whole machine, sampled every
    ``every`` s with their wall-clock time, so the CPU of the drain span alone (process
    start-up excluded) can be read off afterwards."""

    def __init__(
        self, procs: list[subprocess.Popen[bytes]], pg: PgCpu | None, peer_pid: int
    ) -> None:
        super().__init__(daemon=True)
        self.procs = [psutil.Process(p.pid) for p in procs]
        self.last = [0.0] * len(procs)
        self.pg = pg
        self.medplum = psutil.Process(peer_pid)
        self.samples: list[tuple[float, float, float, float, float]] = []
        self.stopping = threading.Event()

    def sample(self) -> None:
        for i, proc in enumerate(self.procs):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.ZombieProcess):
                self.last[i] = sum(proc.cpu_times()[:2])
        self.samples.append(
            (
                time.time(),
                sum(self.last),
                self.pg.seconds() if self.pg else 0.0,
                sum(self.medplum.cpu_times()[:2]),
                machine_busy(),
            )
        )

    def run(self) -> None:
        while not self.stopping.wait(0.02):
            self.sample()

    def stop(self) -> None:
        self.stopping.set()
        self.join()

    def between(self, start: float, end: float) -> tuple[float, ...]:
        """CPU seconds (rtplan, PostgreSQL, Medplum, machine) from ``start`` to ``end``:
        the samples nearest outside the span (the span gains at most one interval)."""
        before = [s for s in self.samples if s[0] <= start] or self.samples[:1]
        after = [s for s in self.samples if s[0] >= end] or self.samples[-1:]
        a, b = before[-1], after[0]
        return (b[0] - a[0], *(y - x for x, y in zip(a[1:], b[1:], strict=True)))


def pg_commits(url: str) -> int:
    """Transactions committed in the database so far (the statistics collector's count)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")  # this backend's counts are current
        raw = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(raw[0]) if raw else 0


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (every process, ours and others')."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def trial(
    peer: Peer,
    location: Path | str,
    processes: int,
    studies: Studies,
    n: int,
    pg: PgCpu | None,
    profile: Path | None = None,
    receiver: Receiver | None = None,
) -> dict[str, Any]:
    """Drain ``n`` rows with ``processes`` ``rtplan outbox run``: FHIR transactions to
    Medplum, or (``receiver``) HL7 orders over MLLP to the python-hl7 receiver."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTPLAN_")}
    env["RTPLAN_LABEL__ENABLED"] = "false"
    if receiver is None:
        peer.reset()
        fill(location, studies, n, peer.base)
        env.update(RTPLAN_FHIR__BASE_URL=peer.base, RTPLAN_FHIR__CONCURRENCY="4")
        peer_pid = peer.pid
    else:
        seen = len(receiver.received())
        fill_orders(location, n)
        env.update(
            RTPLAN_HL7__MLLP="true",
            RTPLAN_HL7__HOST="127.0.0.1",
            RTPLAN_HL7__PORT=str(receiver.port),
            RTPLAN_HL7__RECEIVER=RECEIVER,
        )
        peer_pid = receiver.pid
    commits0 = pg_commits(location) if isinstance(location, str) else 0
    argv = [RTPLAN, "outbox", "run"]
    if profile is not None:  # one process under cProfile, counting CPU time (--profile)
        argv = [sys.executable, "-c", PROFILED, str(profile), *argv]
    env["RTPLAN_STORE__URL"] = f"sqlite:///{location}" if isinstance(location, Path) else location
    backends = len(pg.children()) if pg else 0
    load = os.getloadavg()[0]
    pg0 = pg.seconds() if pg else 0.0
    ours0, busy0 = children_cpu(), machine_busy()
    started = time.perf_counter()
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL) for _ in range(processes)]
    sampler = Sampler(procs, pg, peer_pid)
    sampler.start()
    codes = [p.wait(timeout=900) for p in procs]
    wall = time.perf_counter() - started
    sampler.stop()
    rtplan_cpu = children_cpu() - ours0
    if pg:
        pg.settle(backends)
    pg_cpu = pg.seconds() - pg0 if pg else 0.0
    busy = machine_busy() - busy0
    if codes != [0] * processes:
        raise SystemExit(f"rtplan outbox run exited {codes}")
    span, owners, first, last = drain_span(location)
    if len(owners) != processes:
        raise SystemExit(f"{processes} processes, but {len(owners)} claimed rows")
    if receiver is None:
        with peer.client() as client:
            total = client.get("ImagingStudy", params={"_summary": "count"}).json()["total"]
        if total != n:
            raise SystemExit(f"{total} ImagingStudy for {n} studies")
    else:  # every order once (no process died, so nothing may arrive twice)
        received = receiver.received()[seen:]
        if len(received) != n or len(set(received)) != n:
            raise SystemExit(f"{len(received)} messages ({len(set(received))} distinct) for {n}")
    seconds, s_rtplan, s_pg, s_peer, s_busy = sampler.between(first, last)
    commits = pg_commits(location) - commits0 if isinstance(location, str) else None
    return {
        # PostgreSQL transactions per row (an autocommit statement is one too)
        "commits": commits / n if commits is not None else None,
        "span": span,
        "wall": wall,
        "load": load,
        "peer_cpu": s_peer / seconds,
        # CPU milliseconds per delivered row, over the whole trial (rtplan: start-up included)
        "rtplan_ms_all": 1000 * rtplan_cpu / n,
        "pg_ms_all": 1000 * pg_cpu / n,
        # ... and during the drain span only (sampled every 20 ms)
        "rtplan_ms": 1000 * s_rtplan / n,
        "pg_ms": 1000 * s_pg / n,
        "peer_ms": 1000 * s_peer / n,
        # what the whole machine did during the drain span, in cores (2.0 = both busy)
        "busy_cores": s_busy / seconds,
        "other_cores": max(0.0, s_busy - s_rtplan - s_pg - s_peer) / seconds,
        "rtplan_cores": s_rtplan / seconds,
        "pg_cores": s_pg / seconds,
        "busy_all": busy / wall,
    }


def store_path(location: Path | str, studies: Studies, n: int, pg: PgCpu | None) -> dict[str, Any]:
    """The store's part of a delivery alone, in this process, no FHIR server: claim up to 8
    rows as the worker does (``2 x fhir.concurrency``), mark each delivered with a result like
    a FHIR transaction response (three entries, so the study record gets its ids)."""
    fill(location, studies, n, "http://fhir.invalid/fhir")
    result = {
        "entries": [
            {"status": "201 Created", "type": kind, "id": f"{kind.lower()}-1", "version": "1"}
            for kind in ("Patient", "ImagingStudy", "Task")
        ]
    }
    statements = 0
    with Outbox(location) as outbox:
        database = outbox._db
        execute = database.execute

        def counted(sql: str, params: Any = ()) -> Any:
            nonlocal statements
            statements += 1
            return execute(sql, params)

        database.execute = counted  # type: ignore[method-assign]
        commits0 = pg_commits(location) if isinstance(location, str) else 0
        pg0 = pg.seconds() if pg else 0.0
        cpu0, started = time.process_time(), time.perf_counter()
        done = 0
        while done < n:
            rows = outbox.claim(8, targets=[(FHIR, "http://fhir.invalid/fhir")])
            if not rows:
                raise SystemExit(f"claim found nothing after {done} of {n} rows")
            for row in rows:
                outbox.mark_delivered(row.id, result)
            done += len(rows)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu0
        database.execute = execute  # type: ignore[method-assign]
    pg_cpu = 0.0
    if pg:
        pg.settle(0)
        pg_cpu = pg.seconds() - pg0
    commits = pg_commits(location) - commits0 if isinstance(location, str) else None
    return {
        "wall_ms": 1000 * wall / n,
        "client_ms": 1000 * cpu / n,
        "pg_ms": 1000 * pg_cpu / n,
        "statements": statements / n,
        "commits": None if commits is None else commits / n,
    }


def peer_alone(peer: Peer, studies: Studies, n: int, concurrency: int) -> dict[str, Any]:
    """The FHIR peer's capacity without rtplan: the same Bundles and reconcile batches posted
    by a bare httpx loop (this process), ``concurrency`` requests at once."""
    peer.reset()
    bundles = [studies.make(k).bundle for k in range(n)]
    medplum = psutil.Process(peer.pid)
    load = os.getloadavg()[0]
    cpu0 = sum(medplum.cpu_times()[:2])
    outcome = asyncio.run(post_direct(peer.base, bundles, concurrency, search=True))  # type: ignore[arg-type]
    peer_cpu = sum(medplum.cpu_times()[:2]) - cpu0
    if outcome["failures"]:
        raise SystemExit(f"peer alone: {outcome['failures']} failed requests")
    seconds = outcome["seconds"]
    return {
        "span": seconds,
        "wall": seconds,
        "load": load,
        "peer_cpu": peer_cpu / seconds,
        "peer_ms": 1000 * peer_cpu / n,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--instances", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--mllp",
        action="store_true",
        help="also drain HL7 orders over MLLP to python-hl7's receiver (a cheaper peer)",
    )
    parser.add_argument(
        "--regression",
        metavar="REF",
        help="only the SQLite drain of this tree against git REF's (issue 8's 10 %% rule; "
        f"the last commit before issue 8 is {BEFORE_ISSUE_8})",
    )
    parser.add_argument(
        "--store-only",
        action="store_true",
        help="only the store's part of a delivery (claim, mark delivered), no FHIR server",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="only profile one 'rtplan outbox run' on PostgreSQL with cProfile; stats to PATH",
    )
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "store.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.studies, args.repeats = 40, 1
        args.results = ROOT / "bench" / ".work" / "store-quick.md"
    work = Path(tempfile.mkdtemp(prefix="store-bench-"))
    load = os.getloadavg()
    studies = Studies(template_study(work, args.instances))
    if args.store_only:
        return store_only(args, work, studies)
    if args.regression:
        return regression(args, work, studies)
    peer = Peer(work, free_port())
    peer.start()
    cluster: PgCluster = start_cluster(durable=True)
    pg = PgCpu(cluster)
    receiver = Receiver(work) if args.mllp else None
    results: dict[str, list[dict[str, Any]]] = {}
    if args.profile is not None:
        try:
            result = trial(peer, cluster.new_database(), 1, studies, args.studies, pg, args.profile)
            print(f"profiled postgresql, 1 process: {result}")
            show_profile(args.profile)
        finally:
            stop_cluster(cluster)
            peer.stop()
        return 0
    try:
        for round_ in range(args.repeats):
            configs: list[tuple[str, Path | str, int]] = [
                ("sqlite, 1 process", work / f"r{round_}.sqlite", 1),
                ("postgresql, 1 process", cluster.new_database(), 1),
                ("postgresql, 2 processes", cluster.new_database(), 2),
            ]
            if args.mllp:
                configs += [
                    (MLLP_1, cluster.new_database(), 1),
                    (MLLP_2, cluster.new_database(), 2),
                ]
            if round_ % 2:  # interleaved, the order reversed every other round
                configs.reverse()
            for name, location, processes in configs:
                mllp = receiver if name in (MLLP_1, MLLP_2) else None
                result = trial(peer, location, processes, studies, args.studies, pg, receiver=mllp)
                results.setdefault(name, []).append(result)
                print(f"round {round_ + 1} {name}: {result}", file=sys.stderr)
            name = PEER_ALONE
            result = peer_alone(peer, studies, args.studies, 8)
            results.setdefault(name, []).append(result)
            print(f"round {round_ + 1} {name}: {result}", file=sys.stderr)
    finally:
        stop_cluster(cluster)
        peer.stop()
        if receiver is not None:
            receiver.stop()
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

    def cell(name: str, key: str, digits: int = 2) -> str:
        if key not in results[name][0]:
            return ""
        return f"{med(name, key):.{digits}f}"

    n = args.studies
    loads = [r["load"] for runs in results.values() for r in runs]
    lines = [
        f"Store drain: {n} studies x {args.instances} instances, {args.repeats} round(s), "
        f"medians. {platform.platform()}, {os.cpu_count()} CPUs, load average at start "
        f"{load[0]:.1f} (during the trials {min(loads):.1f}-{max(loads):.1f}). "
        f"PostgreSQL {cluster_version()}, durable settings.",
        "",
        "CPU during the drain span (sampled every 20 ms): the peer (Medplum, or the MLLP "
        "receiver on the HL7 rows) in cores (1.0 = one core: both run their code on one, so "
        "near 1.0 the peer is saturated); CPU ms per row = CPU seconds in the span / rows, for "
        "rtplan (all its processes), PostgreSQL (the whole cluster) and the peer; the "
        "machine's busy cores (2.0 = both) and what other processes used of them. Last "
        "column: rtplan's CPU ms per row over the whole run, start-up and exit included.",
        "",
        "| configuration | drain span s | rows/s | wall s | peer cores "
        "| CPU ms/row rtplan | PostgreSQL | peer | machine busy | other | rtplan incl. start |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in results:
        span = med(name, "span")
        lines.append(
            f"| {name} | {span:.2f} | {n / span:.1f} | {med(name, 'wall'):.2f} | "
            f"{med(name, 'peer_cpu'):.2f} | {cell(name, 'rtplan_ms', 1)} | "
            f"{cell(name, 'pg_ms', 1)} | {cell(name, 'peer_ms', 1)} | "
            f"{cell(name, 'busy_cores')} | {cell(name, 'other_cores')} | "
            f"{cell(name, 'rtplan_ms_all', 1)} |"
        )
    one, two = med("postgresql, 1 process", "span"), med("postgresql, 2 processes", "span")
    sqlite = med("sqlite, 1 process", "span")
    ratios = [
        a["span"] / b["span"]
        for a, b in zip(
            results["postgresql, 1 process"], results["postgresql, 2 processes"], strict=True
        )
    ]
    if MLLP_1 in results:
        one_h, two_h = med(MLLP_1, "span"), med(MLLP_2, "span")
        same = [
            a["span"] / b["span"] for a, b in zip(results[MLLP_1], results[MLLP_2], strict=True)
        ]
        lines += [
            "",
            f"HL7 orders over MLLP (the cheaper real-protocol peer), PostgreSQL 2 processes / 1 "
            f"process: **{one_h / two_h:.2f}x** (same-round ratios "
            f"{', '.join(f'{r:.2f}' for r in same)}); receiver "
            f"{med(MLLP_2, 'peer_cpu'):.2f} of a core with 2 processes.",
        ]
    alone = n / med(PEER_ALONE, "span")
    per_row = med(PEER_ALONE, "peer_ms")
    lines += [
        "",
        f"PostgreSQL 2 processes / 1 process: **{one / two:.2f}x** (goal >= 1.6x; same-round "
        f"ratios {', '.join(f'{r:.2f}' for r in ratios)}). "
        f"PostgreSQL / SQLite, 1 process: {sqlite / one:.2f}x the SQLite rate.",
        "",
        f"FHIR peer alone (no rtplan, {PEER_ALONE}): {alone:.1f} studies/s, Medplum "
        f"{med(PEER_ALONE, 'peer_cpu'):.2f} of a core, {per_row:.1f} CPU ms per study: one "
        f"Medplum core could serve at most {1000 / per_row:.0f} studies/s. PostgreSQL 2 "
        f"processes reached {n / two:.1f} studies/s = {n / two / alone:.2f} of the peer-alone "
        f"rate; 1.6x one process would be {1.6 * n / one:.1f} studies/s.",
    ]
    return lines


def store_only(args: argparse.Namespace, work: Path, studies: Studies) -> int:
    cluster: PgCluster = start_cluster(durable=True)
    pg = PgCpu(cluster)
    found: dict[str, list[dict[str, Any]]] = {}
    try:
        for round_ in range(args.repeats):
            for name, location in (
                ("sqlite", work / f"store-{round_}.sqlite"),
                ("postgresql", cluster.new_database()),
            ):
                result = store_path(location, studies, args.studies, pg)
                found.setdefault(name, []).append(result)
                print(f"round {round_ + 1} {name}: {result}", file=sys.stderr)
    finally:
        stop_cluster(cluster)
    print(
        f"Store path alone: {args.studies} rows, {args.repeats} round(s), medians; load "
        f"average {os.getloadavg()[0]:.1f}.\n\n"
        "| backend | wall ms/row | client CPU ms/row | PostgreSQL CPU ms/row | statements/row "
        "| transactions/row |\n|---|---:|---:|---:|---:|---:|"
    )
    for name, runs in found.items():

        def med(key: str, runs: list[dict[str, Any]] = runs) -> str:
            values = [r[key] for r in runs if r[key] is not None]
            return f"{statistics.median(values):.2f}" if values else ""

        print(
            f"| {name} | {med('wall_ms')} | {med('client_ms')} | {med('pg_ms')} | "
            f"{med('statements')} | {med('commits')} |"
        )
    return 0


def regression(args: argparse.Namespace, work: Path, studies: Studies) -> int:
    """The SQLite drain (enqueue + ``deliver``, ``fhir.concurrency`` 4, reconcile on, as in
    deliver_bench.py's "outbox, 4 concurrent, reconcile on") by this tree and by ``REF``,
    interleaved, in one process each (``bench/sqlite_drain_driver.py``)."""
    from bench.startup_bench import export

    old_tree = export(args.regression, prefix="store-regression")
    bundles = work / "bundles.json"
    bundles.write_text(json.dumps([studies.make(k).bundle for k in range(args.studies)]))
    trees = {"this tree": ROOT, args.regression: old_tree}
    peer = Peer(work, free_port())
    peer.start()
    found: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    try:
        for round_ in range(args.repeats):
            order_ = list(trees.items())
            if round_ % 2:
                order_.reverse()
            for name, tree in order_:
                peer.reset()
                box = work / f"regression-{round_}-{len(found[name])}.sqlite"
                env = {k: v for k, v in os.environ.items() if not k.startswith("RTPLAN_")}
                env["PYTHONPATH"] = str(tree)
                load = os.getloadavg()[0]
                answer = subprocess.run(
                    [
                        sys.executable,
                        str(ROOT / "bench" / "sqlite_drain_driver.py"),
                        str(bundles),
                        str(box),
                        peer.base,
                    ],
                    cwd=work,
                    env=env,
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if answer.returncode != 0:
                    raise SystemExit(f"{name}: {answer.stderr[-2000:]}")
                result = json.loads(answer.stdout.strip().splitlines()[-1])
                if result["delivered"] != args.studies:
                    raise SystemExit(f"{name}: delivered {result['delivered']}")
                result["load"] = load
                found[name].append(result)
                print(f"round {round_ + 1} {name}: {result}", file=sys.stderr)
    finally:
        peer.stop()
    lines = [
        f"SQLite drain, this tree vs {args.regression}: {args.studies} studies x "
        f"{args.instances} instances, {args.repeats} round(s) interleaved, medians; load "
        f"average {min(r['load'] for v in found.values() for r in v):.1f}-"
        f"{max(r['load'] for v in found.values() for r in v):.1f}.",
        "",
        "| tree | drain s | studies/s | enqueue s | CPU s (enqueue + drain) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, runs in found.items():

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        lines.append(
            f"| {name} | {med('drain_s'):.2f} | {args.studies / med('drain_s'):.1f} | "
            f"{med('enqueue_s'):.2f} | {med('cpu_s'):.2f} |"
        )
    mine, theirs = found["this tree"], found[args.regression]
    same = [b["drain_s"] / a["drain_s"] for a, b in zip(mine, theirs, strict=True)]
    ratio = statistics.median(r["drain_s"] for r in theirs) / statistics.median(
        r["drain_s"] for r in mine
    )
    lines += [
        "",
        f"Drain rate, this tree / {args.regression}: **{ratio:.2f}** (same-round "
        f"{', '.join(f'{r:.2f}' for r in same)}); issue 8 allows no figure worse by more "
        "than 10 % (>= 0.90).",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    REGRESSION_RESULTS.parent.mkdir(parents=True, exist_ok=True)
    REGRESSION_RESULTS.write_text(text)
    return 0


def show_profile(path: Path) -> None:
    import pstats

    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(30)
    stats.sort_stats("cumulative").print_stats(40)


def cluster_version() -> str:
    answer = subprocess.run(
        [str(pg_bin() / "postgres"), "--version"], capture_output=True, text=True, check=False
    )
    # "postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"
    return answer.stdout.removeprefix("postgres (PostgreSQL)").strip()


if __name__ == "__main__":
    raise SystemExit(main())
