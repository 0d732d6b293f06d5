"""HL7 v2 order delivery: the outbox path against plain MLLP loops, build rates, latency.

Run in the project venv from the repository root::

    .venv/bin/python bench/hl7_bench.py                   # 5,000 orders, 200 latency samples
    .venv/bin/python bench/hl7_bench.py --quick           # 300 orders, 20 samples (smoke run)

Peer: the python-hl7 asyncio receiver of ``tests/peers/hl7_receiver.py`` (``Hl7Receiver``,
AA for everything, MSA-2 = MSH-10), started by this script (``--serve``) in its *own process*
on 127.0.0.1 and a free port, so its CPU does not share the client's GIL; stopped by PID.

Parts (all in one run, so the ratios compare figures of the same run):

1. **Build rate** (hl7apy): ``build_order`` for ORM^O01 2.3.1 (default-ris), OMG^O19 2.5.1
   (swfb-ris) and OMI^O23 2.5.1 (imaging-procedure-control), messages/s, one process.
2. **Throughput**, ``--orders`` distinct orders (distinct study keys), one in flight:
   * ``raw``: asyncio ``open_connection``, write VT+msg+FS CR, ``readuntil(FS CR)``, check
     ``MSA|AA``: pre-built messages.
   * ``client``: ``MllpClient.send`` + ``judge_ack`` per message: pre-built messages.
   * enqueue (the real path, as ``adapter/review/order_rows.py`` ``prepare_orders`` does it):
     each payload (``adapter.hl7.order_payload.OrderPayload``) goes through
     ``adapter.hl7.deliverer.prerender(payload, profile=, now=)``,
     which builds the message once (hl7apy) and stores its bytes and its MSH-10 in the
     payload. The prerender is timed once for all orders and reported as the enqueue cost,
     with the ``enqueue_many`` of the rows (one transaction) and, for comparison, one
     ``Outbox.enqueue`` per row (one fsync'd commit each, as ``submit_review`` does).
   * ``raw``: asyncio ``open_connection``, write VT+msg+FS CR, ``readuntil(FS CR)``, check
     ``MSA|AA``, over the prerendered messages (the same bytes the outbox sends).
   * ``client``: ``MllpClient.send`` + ``judge_ack`` per message, the same messages.
   * ``outbox``: a fresh ``Outbox`` (WAL, ``synchronous=FULL``) holding the prerendered
     ``hl7-order`` rows (``enqueue_many``, before the clock starts), drained by
     ``Worker(outbox, {("hl7", "default-ris"): Hl7Deliverer(profile, MllpClient(...))},
     {"hl7": RetryPolicy()}, concurrency=c).drain()``; the deliverer sends the stored bytes
     (``render`` decodes them). c = 1 and 4.
   Each drain runs ``--drain-rounds`` times, interleaved with the baselines (order reversed
   every other round); medians are reported. Where the outbox time goes is summed by thin
   wrappers (two ``perf_counter`` calls per call) around ``render``, ``MllpClient.send`` and the
   ``Outbox`` calls the worker makes (shown for the median drain of each configuration).
3. **Concern-to-AA latency**: ``submit_review_async(concern, Settings(hl7.mllp=True,
   host/port = the peer), out_dir=DIR)`` on a copy of an output folder where
   ``fixtures/dicom/planning-ct`` was ingested (the order is prerendered inside the call, as in
   production); from just before the call to the ``delivered``
   event of the HL7 order row (written in the transaction that records the AA). A fresh copy of
   the folder per sample (copied outside the timing); tables loaded once, as a service would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import math
import os
import platform
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORK = ROOT / "bench" / ".work" / "hl7"
RESULTS = ROOT / "bench" / "results" / "hl7.md"
NOW = datetime(2026, 3, 4, 14, 20, 0, tzinfo=UTC)


# ---- the peer (this script with --serve, in its own process) ----
def serve(port: int) -> None:
    from tests.peers.hl7_receiver import Hl7Receiver

    rx = Hl7Receiver("127.0.0.1", port).start()
    print(f"READY {rx.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ---- orders ----
def make_order(n: int, control: str = "NW") -> Any:
    from adapter.hl7.model import OrderPatient, OrderRequest, PatientIdentifier, Provider

    return OrderRequest(
        control=control,  # type: ignore[arg-type]
        placer_order_number=f"RV{n:08d}A1B2",
        placer_namespace="RTPLAN",
        patient=OrderPatient(
            identifiers=(PatientIdentifier(f"MRN{n:07d}", "HOSP-MRN"),),
            family="Testpatient",
            given="Alpha",
            birth_date="1960-01-01",
            sex="F",
        ),
        study_instance_uid=f"2.25.31214922167018315178807460698017{n:06d}",
        accession_number=f"ACC{n:07d}",
        requested_procedure_id=f"RP{n:07d}",
        modality="CT",
        priority="urgent",
        reason_code="94222008",
        reason_text="Secondary malignant neoplasm of liver",
        reason_system="SCT",
        concern_text=(
            "RT planning scan - radiologist review requested: metastasis: Two hypodense "
            "lesions in the right lobe of the liver, not seen before. (urgent); other-pathology: "
            "Small right pleural effusion. (routine)"
        ),
        ordering_provider=Provider("ONC-0001", "Oncologist", "Dr Anna"),
        requested_at="2026-03-04T14:20:00+00:00",
        review_id=f"REV-2026-{n:06d}",
    )


def build_rates(count: int) -> list[tuple[str, str, int, float]]:
    from adapter.hl7.messages import build_order
    from adapter.hl7.profiles import load_profiles

    profiles = load_profiles(ROOT / "mappings" / "receivers")
    build_order(make_order(0), profiles["default-ris"], control_id="W", now=NOW)  # warm-up
    out = []
    for name in ("default-ris", "swfb-ris", "imaging-procedure-control"):
        profile = profiles[name]
        orders = [make_order(n) for n in range(1, count + 1)]
        started = time.perf_counter()
        size = 0
        for n, order in enumerate(orders, 1):
            size += len(build_order(order, profile, control_id=f"RTP{n:09d}", now=NOW))
        seconds = time.perf_counter() - started
        label = f"{profile.message} {profile.version}"
        out.append((label, name, size // count, count / seconds))
    return out


# ---- baselines over pre-built messages ----
async def raw_loop(port: int, messages: list[bytes]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for m in messages:
            writer.write(b"\x0b" + m + b"\x1c\r")
            await writer.drain()
            ack = await reader.readuntil(b"\x1c\r")
            if b"MSA|AA|" not in ack:
                raise SystemExit(f"raw loop: not AA: {ack[:80]!r}")
    finally:
        writer.close()
        await writer.wait_closed()


async def client_loop(port: int, messages: list[bytes], controls: list[str]) -> None:
    from adapter.hl7.ack_judge import judge_ack
    from adapter.hl7.client import MllpClient

    async with MllpClient("127.0.0.1", port, ack_timeout=30) as client:
        for m, control in zip(messages, controls, strict=True):
            if not judge_ack(control, await client.send(m)).delivered:
                raise SystemExit(f"client loop: not delivered: {control}")


# ---- the outbox path ----
class Timed:
    """Sums the wall time of calls (sync or async) by name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def sync(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def wrapper(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.seconds[name] += time.perf_counter() - t
                self.calls[name] += 1

        return wrapper

    def coro(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        async def wrapper(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return await fn(*a, **k)
            finally:
                self.seconds[name] += time.perf_counter() - t
                self.calls[name] += 1

        return wrapper


def prerendered_rows(orders: list[Any], profile: Any) -> tuple[list[Any], float]:
    """The outbox rows as ``prepare_orders`` makes them: every payload through ``prerender``
    (the message built once, its bytes and MSH-10 stored). Returns the rows and the seconds
    spent in ``prerender`` (all orders)."""
    from adapter.hl7.deliverer import KIND_ORDER, OrderPayload, prerender
    from adapter.store.outbox import NewRow

    rows = []
    spent = 0.0
    for order in orders:
        key = f"study:{order.study_instance_uid}"
        raw = OrderPayload(profile.name, order.to_json())
        t = time.perf_counter()
        payload = prerender(raw, profile=profile, now=NOW).to_json()
        spent += time.perf_counter() - t
        rows.append(
            NewRow(
                destination="hl7",
                target=profile.name,
                key=key,
                kind=KIND_ORDER,
                label=f"Order-{order.placer_order_number}-NW",
                payload=payload,
            )
        )
    return rows, spent


async def outbox_drain(
    port: int, rows: list[Any], concurrency: int, *, peer_pid: int
) -> dict[str, Any]:
    import adapter.hl7.deliverer as deliverer_module
    from adapter.hl7.client import MllpClient
    from adapter.hl7.deliverer import Hl7Deliverer
    from adapter.hl7.profiles import load_profiles
    from adapter.outbox.worker import RetryPolicy, Worker
    from adapter.store.outbox import Outbox, State

    profile = load_profiles(ROOT / "mappings" / "receivers")["default-ris"]
    folder = Path(tempfile.mkdtemp(prefix="outbox-", dir=WORK))
    outbox = Outbox(folder / "outbox.sqlite")
    assert outbox._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert outbox._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    started = time.perf_counter()
    ids = outbox.enqueue_many(rows)
    enqueue_s = time.perf_counter() - started
    assert len(ids) == len(rows)
    timed = Timed()
    original_render = deliverer_module.render
    original_build = deliverer_module.build_order
    builds = 0

    def counting_build(*a: Any, **k: Any) -> Any:
        nonlocal builds
        builds += 1
        return original_build(*a, **k)

    deliverer_module.build_order = counting_build  # must stay at 0: the bytes are stored
    deliverer_module.render = timed.sync("render (stored bytes)", deliverer_module.render)
    for name in ("claim", "mark_delivered", "mark_retry", "mark_dead", "open_rows",
                 "seconds_until_due"):  # fmt: skip
        setattr(outbox, name, timed.sync(f"sqlite: {name}", getattr(outbox, name)))
    try:
        async with MllpClient("127.0.0.1", port, ack_timeout=30) as client:
            client.send = timed.coro("MLLP send -> ACK (awaited)", client.send)  # type: ignore[method-assign]
            deliverer = Hl7Deliverer(profile, client, timers=None)
            worker = Worker(
                outbox, {("hl7", "default-ris"): deliverer}, {"hl7": RetryPolicy()},
                concurrency=concurrency,
            )  # fmt: skip
            peer0, cpu0 = cpu_seconds(peer_pid), time.process_time()
            started = time.perf_counter()
            report = await worker.drain()
            seconds = time.perf_counter() - started
            cpu, peer_cpu = time.process_time() - cpu0, cpu_seconds(peer_pid) - peer0
            stats = client.stats
    finally:
        deliverer_module.render = original_render
        deliverer_module.build_order = original_build
    counts = outbox.counts()
    acks = outbox._db.execute(
        "SELECT COUNT(*) FROM outbox WHERE json_extract(result, '$.ack') = 'AA'"
    ).fetchone()[0]
    outbox.close()
    shutil.rmtree(folder, ignore_errors=True)
    if counts[State.DELIVERED.value] != len(rows) or acks != len(rows) or report.retries:
        raise SystemExit(f"outbox drain incomplete: {counts}, AA {acks}, report {report}")
    if builds:
        raise SystemExit(f"the deliverer built {builds} messages: the stored bytes were not used")
    return {
        "seconds": seconds,
        "enqueue_s": enqueue_s,
        "cpu": cpu,
        "peer_cpu": peer_cpu,
        "timed": dict(timed.seconds),
        "calls": dict(timed.calls),
        "connects": stats.connects,
    }


def commit_cost(rows: list[Any], count: int) -> float:
    """ms per ``Outbox.enqueue`` (one committed, fsync'd transaction per row)."""
    from adapter.store.outbox import Outbox

    folder = Path(tempfile.mkdtemp(prefix="enqueue-", dir=WORK))
    with Outbox(folder / "outbox.sqlite") as outbox:
        started = time.perf_counter()
        for new in rows[:count]:
            outbox.enqueue(
                destination=new.destination, target=new.target, key=new.key, kind=new.kind,
                label=new.label, payload=new.payload,
            )  # fmt: skip
        seconds = time.perf_counter() - started
    shutil.rmtree(folder, ignore_errors=True)
    return seconds / count * 1000


# ---- concern-to-AA latency through submit_review_async ----
def ingest_template() -> Path:
    from adapter.cli import main as cli

    template = WORK / "review-template"
    shutil.rmtree(template, ignore_errors=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = cli(["ingest", str(ROOT / "fixtures" / "dicom" / "planning-ct"), "--out",
                    str(template)])  # fmt: skip
    if code != 0:
        raise SystemExit(f"ingest of fixtures/dicom/planning-ct failed: exit {code}")
    return template


async def latency(port: int, template: Path, samples: int, warmup: int) -> dict[str, Any]:
    from adapter.config import Hl7Settings, Settings
    from adapter.jobs.review import submit_review_async
    from adapter.store.outbox import Outbox, State
    from adapter.tables import load_tables

    concern = json.loads((ROOT / "fixtures" / "reviews" / "concern.json").read_text())
    settings = Settings(hl7=Hl7Settings(mllp=True, host="127.0.0.1", port=port))
    tables = load_tables(settings.mappings_dir)
    out: dict[str, list[float]] = defaultdict(list)
    for i in range(warmup + samples):
        folder = WORK / "review-sample"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(template, folder)
        t0 = time.time()
        result = await submit_review_async(concern, settings, out_dir=folder, tables=tables)
        t_return = time.time()
        assert len(result.hl7_rows) == 1, result
        with Outbox(folder / "outbox.sqlite") as outbox:
            row = outbox.get(result.hl7_rows[0])
            if row.state is not State.DELIVERED or (row.result or {}).get("ack") != "AA":
                raise SystemExit(f"latency sample {i}: order row {row.state}, {row.result}")
            ev = {e: at for at, e, _ in outbox.events(row.id)}
            review_ev = {e: at for at, e, _ in outbox.events(result.row_ids[0])}
        if i < warmup:
            continue
        out["concern -> AA recorded"].append(ev["delivered"] - t0)
        out["concern -> submit_review_async returns"].append(t_return - t0)
        out["a: submit -> order row enqueued (validate, map, prerender, enqueue)"].append(
            ev["enqueued"] - t0
        )
        out["b: -> review Bundle file written (FHIR side)"].append(
            review_ev["delivered"] - ev["enqueued"]
        )
        out["c: -> order row claimed"].append(ev["claimed"] - review_ev["delivered"])
        out["d: claimed -> AA recorded (connect, MLLP, commit)"].append(
            ev["delivered"] - ev["claimed"]
        )
    shutil.rmtree(WORK / "review-sample", ignore_errors=True)
    return out


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, math.ceil(p / 100 * len(ordered)) - 1)  # nearest rank
    return ordered[k]


# ---- main ----
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--orders", type=int, default=5000)
    ap.add_argument("--build-count", type=int, default=300, help="messages per type, build rate")
    ap.add_argument("--samples", type=int, default=200, help="latency samples")
    ap.add_argument("--baseline-rounds", type=int, default=3)
    ap.add_argument("--drain-rounds", type=int, default=3, help="runs of each outbox drain")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--results", type=Path, help="markdown output (default depends on --quick)")
    args = ap.parse_args()
    if args.serve is not None:
        serve(args.serve)
        return
    if args.quick:
        args.orders, args.build_count, args.samples = min(args.orders, 300), 50, 20
    results = args.results or (WORK.parent / "hl7-quick.md" if args.quick else RESULTS)
    WORK.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    load_start = loadavg()
    started_at = datetime.now(UTC)
    say("# HL7 v2 order delivery benchmark\n")
    say(
        f"`.venv/bin/python bench/hl7_bench.py{' --quick' if args.quick else ''}"
        f"{'' if args.orders in (5000, 300) else f' --orders {args.orders}'}`, "
        f"{started_at:%Y-%m-%d %H:%M} UTC. Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, hl7apy {_version('hl7apy')}, python-hl7 "
        f"{_version('hl7')}, SQLite {sqlite3.sqlite_version}. Load average at start: "
        f"{load_start}.\n"
    )

    # 1. build rates
    say("## 1. Message build rate (hl7apy, `build_order`, one process)\n")
    say("| message | profile | bytes | messages/s | ms/message |")
    say("|---|---|---:|---:|---:|")
    for label, name, size, rate in build_rates(args.build_count):
        say(f"| {label} | {name} | {size} | {rate:,.0f} | {1000 / rate:.1f} |")
    say(f"\n{args.build_count} distinct orders per type, after one warm-up build.\n")

    # 2. throughput
    import base64

    from adapter.hl7.profiles import load_profiles

    profile = load_profiles(ROOT / "mappings" / "receivers")["default-ris"]
    orders = [make_order(n) for n in range(1, args.orders + 1)]
    rows, prerender_s = prerendered_rows(orders, profile)
    messages = [base64.b64decode(r.payload["message"]) for r in rows]
    controls = [str(r.payload["control_id"]) for r in rows]
    if len(set(controls)) != len(controls):
        raise SystemExit("prerender gave two orders the same MSH-10")
    port = free_port()
    peer = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)],
        stdout=subprocess.PIPE,
        start_new_session=True,
        cwd=ROOT,
    )
    plan = [("outbox, concurrency 1", 1), ("outbox, concurrency 4", 4)]
    drains: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in plan}
    base: dict[str, list[float]] = {"raw": [], "client": []}
    try:
        assert peer.stdout is not None
        if not peer.stdout.readline().startswith(b"READY"):
            raise SystemExit("python-hl7 peer did not start")
        asyncio.run(raw_loop(port, messages[:200]))  # warm-up

        def baselines() -> None:
            t = time.perf_counter()
            asyncio.run(raw_loop(port, messages))
            base["raw"].append(len(messages) / (time.perf_counter() - t))
            t = time.perf_counter()
            asyncio.run(client_loop(port, messages, controls))
            base["client"].append(len(messages) / (time.perf_counter() - t))

        def drain(name: str, conc: int) -> None:
            d = asyncio.run(outbox_drain(port, rows, conc, peer_pid=peer.pid))
            drains[name].append(d)
            print(f"  {name}: {d['seconds']:.2f} s", file=sys.stderr, flush=True)

        rounds = max(args.drain_rounds, args.baseline_rounds)
        for round_no in range(rounds):
            steps: list[Callable[[], None]] = []
            if round_no < args.baseline_rounds:
                steps.append(baselines)
            if round_no < args.drain_rounds:
                steps += [functools.partial(drain, name, conc) for name, conc in plan]
            for step in steps if round_no % 2 == 0 else reversed(steps):
                step()
        enqueue_ms = commit_cost(rows, min(500, len(rows)))
    finally:
        peer.terminate()
        peer.wait(10)

    n = args.orders
    med = {k: statistics.median(v) for k, v in base.items()}
    dmed = {k: statistics.median(n / d["seconds"] for d in v) for k, v in drains.items()}
    enq_many = statistics.median(d["enqueue_s"] for v in drains.values() for d in v)
    say(f"## 2. Throughput: {n:,} ORM^O01 orders to the python-hl7 peer, one in flight\n")
    say(
        f"Baselines: {len(base['raw'])} runs each; outbox drains: {args.drain_rounds} runs "
        "each; all interleaved (order reversed every other round); medians. The baselines "
        "send the very bytes `prerender` stored in the outbox rows.\n"
    )
    say("| configuration | median s | messages/s (min-max) | ratio to client loop "
        "| ratio to raw loop |")  # fmt: skip
    say("|---|---:|---:|---:|---:|")
    for name in ("raw", "client"):
        r = base[name]
        label = {
            "raw": "raw asyncio send/ACK loop, prerendered bytes",
            "client": "MllpClient + judge_ack loop, prerendered bytes",
        }[name]
        say(
            f"| {label} | {n / med[name]:.2f} | {med[name]:,.0f} ({min(r):,.0f}-{max(r):,.0f}) "
            f"| {med[name] / med['client']:.2f}x | {med[name] / med['raw']:.2f}x |"
        )
    for name, v in drains.items():
        r = [n / d["seconds"] for d in v]
        say(
            f"| {name} (drain only) | {n / dmed[name]:.2f} | {dmed[name]:,.0f} "
            f"({min(r):,.0f}-{max(r):,.0f}) | {dmed[name] / med['client']:.3f}x "
            f"| {dmed[name] / med['raw']:.3f}x |"
        )
    say("\n### Enqueue cost (not in the drain time)\n")
    say("| step | total s | ms/order | orders/s |")
    say("|---|---:|---:|---:|")
    say(
        f"| `prerender` (hl7apy build + base64 + random MSH-10), {n:,} orders | "
        f"{prerender_s:.2f} | {prerender_s / n * 1000:.2f} | {n / prerender_s:,.0f} |"
    )
    say(
        f"| `enqueue_many`, {n:,} rows in one transaction (median) | {enq_many:.2f} | "
        f"{enq_many / n * 1000:.3f} | {n / enq_many:,.0f} |"
    )
    say(
        f"| `Outbox.enqueue` per row, one fsync'd commit each (as `submit_review`), "
        f"{min(500, n)} rows | | {enqueue_ms:.2f} | {1000 / enqueue_ms:,.0f} |"
    )
    total_enqueue = prerender_s + enq_many
    say(
        "\nEnqueue + drain, end to end (prerender + `enqueue_many` + median drain): "
        + "; ".join(
            f"{name}: {total_enqueue + n / dmed[name]:.2f} s = "
            f"{n / (total_enqueue + n / dmed[name]):,.0f} orders/s"
            for name in drains
        )
        + ".\n"
    )
    say("### Where the outbox drain time goes (median run; wall seconds summed over calls)\n")
    picked = {
        name: sorted(v, key=lambda d: d["seconds"])[len(v) // 2] for name, v in drains.items()
    }
    keys = sorted({k for d in picked.values() for k in d["timed"]})
    say("| | " + " | ".join(picked) + " |")
    say("|---|" + "---:|" * len(picked))
    say("| drain wall s | " + " | ".join(f"{d['seconds']:.2f}" for d in picked.values()) + " |")
    for k in keys:
        cells = []
        for d in picked.values():
            s, c = d["timed"].get(k, 0.0), d["calls"].get(k, 0)
            cells.append(f"{s:.2f} ({c:,} calls, {s / c * 1000:.2f} ms)" if c else "-")
        say(f"| {k} | " + " | ".join(cells) + " |")
    rest = [d["seconds"] - sum(d["timed"].values()) for d in picked.values()]
    say("| other (worker, tasks, JSON, judge; negative = overlap) | "
        + " | ".join(f"{r:.2f}" for r in rest) + " |")  # fmt: skip
    say("| client process CPU s | " + " | ".join(f"{d['cpu']:.2f}" for d in picked.values()) + " |")
    say("| peer process CPU s | "
        + " | ".join(f"{d['peer_cpu']:.2f}" for d in picked.values()) + " |")  # fmt: skip
    say("| MLLP connects | " + " | ".join(str(d["connects"]) for d in picked.values()) + " |")
    say(
        "\nWith concurrency 4 the send time includes waiting for the client's lock (one message "
        "in flight per connection), and the 4 rows' times overlap, so the parts can add up to "
        "more than the wall time. The deliverer's `build_order` was counted during every drain: "
        "0 calls (the stored bytes were sent).\n"
    )

    # 3. latency
    template = ingest_template()  # the CLI runs its own event loop
    lat = asyncio.run(_latency_with_peer(template, args.samples))
    say(f"## 3. Concern-to-AA latency ({args.samples} samples, after 3 warm-up submissions)\n")
    say(
        "`submit_review_async(fixtures/reviews/concern.json, Settings(hl7.mllp=True, host/port = "
        "python-hl7 peer), out_dir=copy of an ingested planning-ct folder, tables=preloaded)`; "
        "stages from the outbox events of the review row and the order row.\n"
    )
    say("| span | p50 ms | p90 ms | p99 ms | max ms | mean ms |")
    say("|---|---:|---:|---:|---:|---:|")
    for k, v in lat.items():
        ms = [x * 1000 for x in v]
        say(
            f"| {k} | {pct(ms, 50):.1f} | {pct(ms, 90):.1f} | {pct(ms, 99):.1f} | {max(ms):.1f} "
            f"| {statistics.mean(ms):.1f} |"
        )

    # goals
    c1, c4 = dmed["outbox, concurrency 1"], dmed["outbox, concurrency 4"]
    say("\n## Goals\n")
    say("| goal | measured | met |")
    say("|---|---:|---|")
    for label, value in (
        ("outbox c=1 / MllpClient loop >= 0.5", c1 / med["client"]),
        ("outbox c=1 / raw asyncio loop >= 0.5", c1 / med["raw"]),
        ("outbox c=4 / MllpClient loop >= 0.5", c4 / med["client"]),
        ("outbox c=4 / raw asyncio loop >= 0.5", c4 / med["raw"]),
    ):
        say(f"| {label} | {value:.3f} | {'yes' if value >= 0.5 else '**no**'} |")
    say(f"\nLoad average at end: {loadavg()} (start: {load_start}).")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text("\n".join(lines) + "\n")
    print(f"\nwrote {results}", file=sys.stderr)


async def _latency_with_peer(template: Path, samples: int) -> dict[str, list[float]]:
    """The latency part with its own peer process (fresh, nothing stored from part 2)."""
    port = free_port()
    peer = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(port)],
        stdout=subprocess.PIPE,
        start_new_session=True,
        cwd=ROOT,
    )
    try:
        assert peer.stdout is not None
        if not peer.stdout.readline().startswith(b"READY"):
            raise SystemExit("python-hl7 peer did not start")
        return await latency(port, template, samples, warmup=3)
    finally:
        peer.terminate()
        peer.wait(10)


def _version(dist: str) -> str:
    from importlib.metadata import version

    try:
        return version(dist)
    except Exception:
        return "?"


if __name__ == "__main__":
    main()
