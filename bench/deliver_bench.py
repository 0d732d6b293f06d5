"""Delivery benchmark: the durable outbox against direct httpx posts, outage recovery, memory.

Run in the project venv from the repository root::

    npm ci --prefix tests/peers/medplum                   # once, if node_modules is missing
    .venv/bin/python bench/deliver_bench.py               # full run: 200 studies x 300 instances
    .venv/bin/python bench/deliver_bench.py --quick       # smoke run (20 x 30, 5 s outage)

Peer: Medplum 4.5.2 in memory (``tests/peers/medplum/server.js``), started and stopped by this
script through ``tests/peers/launch.py`` (its own process group, stopped by PID only).

Data: one planning CT study (``fixtures/synth.py planning_ct``: N-2 CT slices + RTSTRUCT +
RTPLAN = N instances, 16x16 pixels) is ingested once with ``create_patient`` on; its Bundle is
then copied with every ``2.25.x`` UID suffixed by ``.<k>`` and the patient id / accession
numbered, so each copy has its own Study Instance UID, series/SOP UIDs and Patient. Each Bundle
is a transaction: Patient (POST ifNoneExist), ImagingStudy (PUT conditional on the UID) and the
review Task (POST ifNoneExist), as the adapter maps it.

Part 1, throughput (``--repeats`` rounds, configurations interleaved in each round, the server
emptied with ``POST /$reset`` before every trial, every trial checked afterwards: each study
has exactly one ImagingStudy):

* ``direct``: the same Bundles POSTed with a bare ``httpx.AsyncClient`` (JSON encoded per request,
  response parsed), at concurrency 1 (sequential) and ``--concurrency``;
* ``direct+reconcile``: the same, plus the reconciliation the outbox makes after each write:
  ONE ``batch`` Bundle per transaction holding a ``_summary=count`` GET by identifier for each
  conditional entry (as ``FhirClient.counts`` sends it): what reconcile costs without the
  outbox;
* ``outbox``: a fresh SQLite outbox (WAL, ``synchronous=FULL`` as ``Outbox`` sets it),
  ``adapter.jobs.deliver.enqueue`` of all Bundles (``Outbox.enqueue_many``: one
  transaction), then ``deliver(outbox, settings)``
  (a ``Worker`` draining with ``fhir.concurrency`` rows in flight), reconcile on and off.
  The timed span is enqueue + drain; both parts are also reported.

Throughput = studies / wall seconds. Ratios are taken between medians of the same run.

Part 2, where the time goes: one extra instrumented outbox trial (reconcile on): time spent
inside each ``Outbox`` call (synchronous: it blocks the event loop), inside HTTP calls
(``transaction``, the reconcile batch ``counts`` and any per-search fallback
``search_count``, which must stay at 0 calls when the server accepts the batch), and in JSON
encoding/decoding.

Part 3, outage: a fresh server and outbox; a separate delivering process
(``deliver(..., forever=True)``, started once the first row is in, because ``deliver`` builds its
deliverers from the outbox's open targets when it starts) drains while this process enqueues
one study every 1/rate s (rate = studies / outage s, about the ingest speed of 1,000
instances/s). After ``--pre`` s the Medplum process is stopped by its PID; enqueueing goes on for
``--outage`` s; then the server is restarted on the same port and enqueueing stops. The retry
policy is ``initial_wait 0.5 s, max_wait 5 s, max_attempts 1000``.
The peer keeps its data in memory only, so a restart would also wipe what was delivered before
the outage; to behave like a durable server, the delivering process is frozen (SIGSTOP) for a
moment at the stop and at the restart, every Patient and ImagingStudy is exported before the
stop and restored with its id after the restart, then the process is resumed (SIGCONT).
Afterwards every enqueued study must have exactly one ImagingStudy (one search per study).
The drain rate is (rows open at the restart) / (seconds from the restart until the last one is
delivered). RSS of the delivering process is sampled every 0.2 s (psutil) throughout.

Output: a Markdown report on stdout, also written to ``bench/results/delivery.md``
(``--results``; a ``--quick`` run writes ``bench/.work/delivery-quick.md`` instead).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from adapter.config import FhirSettings, IngestSettings, OutboxSettings, Settings  # noqa: E402
from adapter.fhir.delivery import conditionals  # noqa: E402
from adapter.ingest.pipeline import IngestResult, StudyOutcome  # noqa: E402
from adapter.jobs.deliver import FHIR, deliver, enqueue  # noqa: E402
from adapter.store.outbox import Outbox  # noqa: E402
from tests.peers.launch import PeerProcess, free_port, start_peer  # noqa: E402

JSON = dict[str, Any]
FHIR_JSON = "application/fhir+json"
MEDPLUM = ROOT / "tests" / "peers" / "medplum"
UID = re.compile(r"\b(2\.25\.\d+)\b")
STUDY_SYSTEM = "urn:dicom:uid"
MRN_SYSTEM = "https://hospital.example.org/fhir/sid/mrn"
TEMPLATE_PATIENT = "BENCH0000"
TEMPLATE_ACCESSION = "ACC0001"


# --------------------------------------------------------------------------- data


def template_study(work: Path, instances: int) -> StudyOutcome:
    """Ingest one synthetic planning CT of ``instances`` files (cached under ``work``)."""
    from adapter.ingest.pipeline import run_ingest
    from adapter.tables import load_tables
    from fixtures.synth import planning_ct

    folder = work / f"template-{instances}"
    if not folder.exists() or len(list(folder.rglob("*.dcm"))) != instances:
        shutil.rmtree(folder, ignore_errors=True)
        planning_ct(folder, seed="deliver-bench", slices=instances - 2, patient_id=TEMPLATE_PATIENT)
    settings = Settings(fhir=FhirSettings(create_patient=True), ingest=IngestSettings(workers=1))
    result = run_ingest([folder], settings, load_tables(settings.mappings_dir))
    mapped = [s for s in result.studies if s.bundle is not None]
    if len(mapped) != 1 or mapped[0].instances != instances:
        raise SystemExit(f"template study not mapped as expected: {result.studies}")
    return mapped[0]


class Studies:
    """Distinct copies of the template study: copy ``k`` has UIDs ``<uid>.<k+1>``."""

    def __init__(self, template: StudyOutcome) -> None:
        self.template = template
        self.text = json.dumps(template.bundle, ensure_ascii=False)

    def make(self, k: int) -> StudyOutcome:
        text = UID.sub(lambda m: f"{m.group(1)}.{k + 1}", self.text)
        text = text.replace(TEMPLATE_PATIENT, f"BENCH{k:05d}")
        text = text.replace(TEMPLATE_ACCESSION, f"ACC{k:06d}")
        return replace(
            self.template, study_uid=f"{self.template.study_uid}.{k + 1}", bundle=json.loads(text)
        )

    def patient_id(self, k: int) -> str:
        return f"BENCH{k:05d}"


def as_result(studies: list[StudyOutcome]) -> IngestResult:
    return IngestResult(tuple(studies), (), sum(s.instances for s in studies))


# --------------------------------------------------------------------------- peer


class Peer:
    """The Medplum peer on a fixed port, restartable."""

    def __init__(self, work: Path, port: int) -> None:
        self.work = work
        self.port = port
        self.proc: PeerProcess | None = None
        self.root = f"http://127.0.0.1:{port}"
        self.base = f"{self.root}/fhir/R4"

    def start(self) -> float:
        self.proc = start_peer(
            "medplum",
            ["node", str(MEDPLUM / "server.js"), str(self.port)],
            port=self.port,
            ready_url=f"{self.root}/$health",
            log_dir=self.work / "logs",
            timeout=120.0,
        )
        return self.proc.ready_seconds

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc else 0

    def reset(self) -> None:
        with httpx.Client(timeout=60.0, trust_env=False) as client:
            client.post(f"{self.root}/$reset").raise_for_status()

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base + "/",
            timeout=120.0,
            trust_env=False,
            headers={"Accept": FHIR_JSON, "Content-Type": FHIR_JSON},
        )

    def rss_mb(self) -> float:
        try:
            return psutil.Process(self.pid).memory_info().rss / 2**20
        except (psutil.Error, ValueError):
            return float("nan")


def count(client: httpx.Client, resource_type: str, params: dict[str, str]) -> int:
    response = client.get(resource_type, params={**params, "_summary": "count"})
    response.raise_for_status()
    return int(response.json()["total"])


def verify(peer: Peer, studies: list[StudyOutcome], patients: list[str]) -> dict[str, int]:
    """How many studies have 0, 1 or more ImagingStudy; same for patients; and totals."""
    tally = {"studies_missing": 0, "studies_one": 0, "studies_duplicated": 0}
    with peer.client() as client:
        for study in studies:
            n = count(
                client, "ImagingStudy", {"identifier": f"{STUDY_SYSTEM}|urn:oid:{study.study_uid}"}
            )
            tally[
                "studies_missing" if n == 0 else "studies_one" if n == 1 else "studies_duplicated"
            ] += 1
        tally["patients_not_one"] = sum(
            1
            for p in patients
            if count(client, "Patient", {"identifier": f"{MRN_SYSTEM}|{p}"}) != 1
        )
        tally["imagingstudy_total"] = count(client, "ImagingStudy", {})
        tally["patient_total"] = count(client, "Patient", {})
        tally["task_total"] = count(client, "Task", {})
    return tally


def verified_ok(tally: dict[str, int], n: int) -> bool:
    return (
        tally["studies_one"] == n
        and tally["patients_not_one"] == 0
        and tally["imagingstudy_total"] == n
        and tally["patient_total"] == n
        and tally["task_total"] == n
    )


# --------------------------------------------------------------------------- part 1: throughput


def encode(document: JSON) -> bytes:
    # The same encoding as adapter.fhir.client.httpx_json.
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def reconcile_batch(bundle: JSON) -> JSON:
    """The reconcile request ``FhirClient.counts`` sends for one transaction Bundle."""
    return {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {
                "request": {
                    "method": "GET",
                    "url": f"{c.resource_type}?"
                    + urlencode({**dict(c.params), "_summary": "count"}),
                }
            }
            for c in conditionals(bundle)
        ],
    }


async def post_direct(
    base: str, bundles: list[JSON], concurrency: int, *, search: bool
) -> dict[str, float]:
    limits = httpx.Limits(max_connections=concurrency)
    failures = 0
    started = time.perf_counter()
    async with httpx.AsyncClient(
        base_url=base + "/",
        timeout=120.0,
        limits=limits,
        trust_env=False,
        headers={"Accept": FHIR_JSON},
    ) as client:
        gate = asyncio.Semaphore(concurrency)

        async def one(bundle: JSON) -> None:
            nonlocal failures
            async with gate:
                response = await client.post(
                    "", content=encode(bundle), headers={"Content-Type": FHIR_JSON}
                )
                response.json()
                if not response.is_success:
                    failures += 1
                if search:
                    # As FhirClient.counts: one batch of _summary=count GETs per Bundle.
                    batch = reconcile_batch(bundle)
                    found = await client.post(
                        "", content=encode(batch), headers={"Content-Type": FHIR_JSON}
                    )
                    answer = found.json()
                    if (
                        not found.is_success
                        or answer.get("type") != "batch-response"
                        or len(answer.get("entry", [])) != len(batch["entry"])
                    ):
                        failures += 1

        await asyncio.gather(*(one(b) for b in bundles))
    return {"seconds": time.perf_counter() - started, "failures": failures}


def fresh_outbox(path: Path) -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def via_outbox(
    peer: Peer, path: Path, studies: list[StudyOutcome], concurrency: int, *, reconcile: bool
) -> dict[str, float]:
    fresh_outbox(path)
    settings = Settings(
        fhir=FhirSettings(base_url=peer.base, concurrency=concurrency, reconcile=reconcile),
        outbox=OutboxSettings(path=str(path)),
    )
    started = time.perf_counter()
    with Outbox(path) as outbox:
        ids = enqueue(outbox, as_result(studies), [(FHIR, peer.base)])
        enqueued = time.perf_counter()
        report = asyncio.run(deliver(outbox, settings))
        done = time.perf_counter()
    if len(ids) != len(studies):
        raise SystemExit(f"enqueued {len(ids)} rows for {len(studies)} studies")
    return {
        "seconds": done - started,
        "enqueue_s": enqueued - started,
        "drain_s": done - enqueued,
        "failures": len(studies) - report.delivered,
        "retries": report.retries,
        "alerts": len(report.alerts),
    }


@dataclass
class Trial:
    name: str
    run: Callable[[], dict[str, float]]
    results: list[dict[str, float]] = field(default_factory=list)


def throughput(
    peer: Peer,
    work: Path,
    studies: list[StudyOutcome],
    concurrency: int,
    repeats: int,
    log: Callable[[str], None],
) -> list[Trial]:
    bundles = [s.bundle for s in studies if s.bundle is not None]
    patients = [b["entry"][0]["resource"]["identifier"][0]["value"] for b in bundles]
    box = work / "throughput.sqlite"
    c = concurrency
    trials = [
        Trial(
            "direct, sequential",
            lambda: asyncio.run(post_direct(peer.base, bundles, 1, search=False)),
        ),
        Trial(
            f"direct, {c} concurrent",
            lambda: asyncio.run(post_direct(peer.base, bundles, c, search=False)),
        ),
        Trial(
            f"direct + reconcile batch, {c} concurrent",
            lambda: asyncio.run(post_direct(peer.base, bundles, c, search=True)),
        ),
        Trial(
            "outbox, sequential, reconcile on",
            lambda: via_outbox(peer, box, studies, 1, reconcile=True),
        ),
        Trial(
            "outbox, sequential, reconcile off",
            lambda: via_outbox(peer, box, studies, 1, reconcile=False),
        ),
        Trial(
            f"outbox, {c} concurrent, reconcile on",
            lambda: via_outbox(peer, box, studies, c, reconcile=True),
        ),
        Trial(
            f"outbox, {c} concurrent, reconcile off",
            lambda: via_outbox(peer, box, studies, c, reconcile=False),
        ),
    ]
    # Warm-up (not recorded): the peer's JIT and caches, the page cache, imports.
    peer.reset()
    asyncio.run(post_direct(peer.base, bundles, c, search=True))
    peer.reset()
    via_outbox(peer, box, studies[: max(1, len(studies) // 4)], c, reconcile=True)
    for round_no in range(repeats):
        order = trials if round_no % 2 == 0 else list(reversed(trials))
        for trial in order:
            peer.reset()
            result = trial.run()
            tally = verify(peer, studies, patients)
            result["verified"] = float(verified_ok(tally, len(studies)))
            if not verified_ok(tally, len(studies)):
                log(f"  !! {trial.name}: server state after the trial: {tally}")
            trial.results.append(result)
            log(
                f"  round {round_no + 1}/{repeats} {trial.name}: {result['seconds']:.2f} s, "
                f"{len(studies) / result['seconds']:.1f} studies/s, peer RSS {peer.rss_mb():.0f} MB"
            )
    return trials


# --------------------------------------------------------------------------- part 2: profile


@contextlib.contextmanager
def instrumented(totals: dict[str, list[float]]) -> Iterator[None]:
    """Wrap Outbox methods, FhirClient calls and JSON encode/decode to sum their wall time."""
    import adapter.fhir.client as client_mod
    import adapter.store.outbox as store_mod

    patches: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)
        bucket = totals.setdefault(label, [0.0, 0])
        if asyncio.iscoroutinefunction(original):

            async def timed_async(*a: Any, **k: Any) -> Any:
                t = time.perf_counter()
                try:
                    return await original(*a, **k)
                finally:
                    bucket[0] += time.perf_counter() - t
                    bucket[1] += 1

            setattr(owner, name, timed_async)
        else:

            def timed(*a: Any, **k: Any) -> Any:
                t = time.perf_counter()
                try:
                    return original(*a, **k)
                finally:
                    bucket[0] += time.perf_counter() - t
                    bucket[1] += 1

            setattr(owner, name, timed)
        patches.append((owner, name, original))

    for method in (
        "enqueue",
        "enqueue_many",
        "claim",
        "mark_delivered",
        "open_rows",
        "seconds_until_due",
    ):
        wrap(store_mod.Outbox, method, f"sqlite: Outbox.{method}")
    wrap(store_mod, "_row", "json: decode payload (Outbox._row)")
    wrap(client_mod, "httpx_json", "json: encode request (httpx_json)")
    wrap(client_mod, "_json", "json: decode response (_json)")
    wrap(client_mod.FhirClient, "transaction", "http: FhirClient.transaction (await)")
    wrap(client_mod.FhirClient, "counts", "http: FhirClient.counts, reconcile batch (await)")
    wrap(
        client_mod.FhirClient,
        "search_count",
        "http: FhirClient.search_count, per-search fallback (await)",
    )
    try:
        yield
    finally:
        for owner, name, original in reversed(patches):
            setattr(owner, name, original)


def profile_outbox(
    peer: Peer, work: Path, studies: list[StudyOutcome], concurrency: int
) -> tuple[dict[str, float], dict[str, list[float]], dict[str, float]]:
    totals: dict[str, list[float]] = {}
    peer.reset()
    cpu0 = time.process_time()
    with instrumented(totals):
        result = via_outbox(peer, work / "profile.sqlite", studies, concurrency, reconcile=True)
    cpu = {"python_cpu_s": time.process_time() - cpu0}
    # The cost of one committed write on this disk (WAL + synchronous=FULL vs OFF).
    for sync in ("FULL", "OFF"):
        path = work / f"fsync-{sync}.sqlite"
        fresh_outbox(path)
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={sync}")
        db.execute("CREATE TABLE t (x TEXT)")
        text = json.dumps(studies[0].bundle)
        t = time.perf_counter()
        for _ in range(200):
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO t VALUES (?)", (text,))
            db.execute("COMMIT")
        cpu[f"commit_ms_{sync}"] = (time.perf_counter() - t) / 200 * 1000
        db.close()
        fresh_outbox(path)
    return result, totals, cpu


# --------------------------------------------------------------------------- part 3: outage


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.every = every
        self.samples: list[tuple[float, float]] = []  # (time.time(), MB)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.samples.append((time.time(), self.process.memory_info().rss / 2**20))
            except psutil.Error:
                return
            self._stop_event.wait(self.every)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def window(self, start: float, end: float) -> list[tuple[float, float]]:
        return [(t, mb) for t, mb in self.samples if start <= t <= end]


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    if len(samples) < 3:
        return float("nan")
    xs = [t for t, _ in samples]
    ys = [mb for _, mb in samples]
    return statistics.linear_regression(xs, ys).slope * 60


def export_server(peer: Peer) -> list[JSON]:
    resources: list[JSON] = []
    with peer.client() as client:
        for kind in ("Patient", "ImagingStudy", "Task"):
            total = count(client, kind, {})
            response = client.get(kind, params={"_count": str(max(total, 1))})
            response.raise_for_status()
            found = [e["resource"] for e in response.json().get("entry", [])]
            if len(found) != total:
                raise SystemExit(f"export: {len(found)} of {total} {kind} returned")
            resources += found
    return resources


def restore_server(peer: Peer, resources: list[JSON]) -> None:
    """PUT each resource back with its id (Patients first, so references resolve)."""
    entries = []
    for resource in resources:
        body = {k: v for k, v in resource.items() if k != "meta"}
        if "tag" in resource.get("meta", {}):
            body["meta"] = {"tag": resource["meta"]["tag"]}
        entries.append(
            {
                "resource": body,
                "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"},
            }
        )
    with peer.client() as client:
        for start in range(0, len(entries), 50):
            bundle = {
                "resourceType": "Bundle",
                "type": "batch",
                "entry": entries[start : start + 50],
            }
            response = client.post("", content=encode(bundle))
            response.raise_for_status()
            statuses = [e["response"]["status"] for e in response.json()["entry"]]
            bad = [s for s in statuses if not s.startswith(("200", "201"))]
            if bad:
                raise SystemExit(f"restore failed: {bad[:3]}")


def outbox_events(path: Path) -> list[tuple[int, float, str]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(db.execute("SELECT row_id, at, event FROM events ORDER BY id"))
    finally:
        db.close()


def open_count(path: Path) -> dict[str, int]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
    try:
        counts = dict(db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetchall())
    finally:
        db.close()
    return {
        s: int(counts.get(s, 0)) for s in ("pending", "in_flight", "retrying", "delivered", "dead")
    }


def outage(
    peer: Peer,
    work: Path,
    maker: Studies,
    first: int,
    *,
    rate: float,
    pre: float,
    outage_s: float,
    concurrency: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    path = work / "outage.sqlite"
    fresh_outbox(path)
    worker_log = work / "logs" / "outage-worker.log"
    peer.reset()
    enqueued: list[StudyOutcome] = []
    marks: dict[str, float] = {}
    worker: subprocess.Popen[bytes] | None = None
    sampler: RssSampler | None = None
    k = first
    with Outbox(path) as outbox:

        def enqueue_until(deadline: float) -> None:
            nonlocal k
            while True:
                due = marks["t0"] + len(enqueued) / rate
                if due >= deadline:
                    break
                time.sleep(max(0.0, due - time.time()))
                study = maker.make(k)
                k += 1
                enqueue(outbox, as_result([study]), [(FHIR, peer.base)])
                enqueued.append(study)

        marks["t0"] = time.time()
        enqueue_until(marks["t0"] + 0.001)  # the first row, so the worker sees the target
        with worker_log.open("wb") as log_file:
            worker = subprocess.Popen(
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--worker",
                    str(path),
                    "--worker-base",
                    peer.base,
                    "--concurrency",
                    str(concurrency),
                ],
                cwd=ROOT,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            sampler = RssSampler(worker.pid)
            sampler.start()
            enqueue_until(marks["t0"] + pre)
            # Stop the server, after a snapshot of what it holds (see the module docstring).
            os.kill(worker.pid, signal.SIGSTOP)
            time.sleep(1.0)  # let a request already received by the peer finish
            snapshot = export_server(peer)
            marks["down"] = time.time()
            down_pid = peer.pid
            peer.stop()
            os.kill(worker.pid, signal.SIGCONT)
            before = open_count(path)
            log(
                f"  peer (PID {down_pid}) stopped after {len(enqueued)} studies enqueued; "
                f"{len(snapshot)} resources exported; outbox {before}"
            )
            enqueue_until(marks["down"] + outage_s)
            # Restart on the same port, restore the snapshot, resume.
            os.kill(worker.pid, signal.SIGSTOP)
            marks["enqueue_end"] = time.time()
            ready = peer.start()
            restore_server(peer, snapshot)
            marks["back"] = time.time()
            backlog = open_count(path)
            os.kill(worker.pid, signal.SIGCONT)
            log(
                f"  peer restarted (PID {peer.pid}, ready in {ready:.1f} s) after "
                f"{marks['back'] - marks['down']:.1f} s down; {len(enqueued)} studies enqueued; "
                f"outbox at restart {backlog}"
            )
            deadline = time.time() + 900
            while time.time() < deadline:
                now = open_count(path)
                if now["pending"] + now["in_flight"] + now["retrying"] == 0:
                    break
                time.sleep(0.2)
            marks["drained_seen"] = time.time()
            time.sleep(1.0)  # one more second of RSS at rest
        finally:
            if sampler is not None:
                sampler.stop()
            if worker is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, signal.SIGCONT)
                worker.send_signal(signal.SIGTERM)
                try:
                    worker.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    worker.kill()
                    worker.wait()
    final = open_count(path)
    events = outbox_events(path)
    delivered_at = {row: at for row, at, event in events if event == "delivered"}
    after = sorted(at for at in delivered_at.values() if at >= marks["back"])
    retries = sum(1 for _, _, event in events if event == "retry")
    patients = [maker.patient_id(i) for i in range(first, k)]
    tally = verify(peer, enqueued, patients)
    assert sampler is not None
    drain_end = after[-1] if after else marks["back"]
    drain_window = sampler.window(marks["back"], drain_end)
    # The whole run from the worker's first delivery (before it, the process is importing).
    first_delivery = min(delivered_at.values(), default=marks["t0"])
    rss_all = sampler.window(first_delivery, float("inf"))
    return {
        "enqueued": len(enqueued),
        "rate": rate,
        "pre_s": pre,
        "down_s": marks["back"] - marks["down"],
        "backlog": backlog["pending"] + backlog["retrying"] + backlog["in_flight"],
        "backlog_detail": backlog,
        "before_down": before,
        "final": final,
        "retries": retries,
        "first_after_s": (after[0] - marks["back"]) if after else float("nan"),
        "drain_s": drain_end - marks["back"],
        "delivered_after": len(after),
        "drain_rate": len(after) / (drain_end - marks["back"]) if after else float("nan"),
        "drain_rate_from_first": (
            (len(after) - 1) / (after[-1] - after[0]) if len(after) > 1 else float("nan")
        ),
        "tally": tally,
        "ok": verified_ok(tally, len(enqueued)) and final["delivered"] == len(enqueued),
        "rss_drain": [mb for _, mb in drain_window],
        "rss_drain_slope": slope_mb_per_min(drain_window),
        "rss_all": [mb for _, mb in rss_all],
        "rss_all_slope": slope_mb_per_min(rss_all),
        "rss_outage": [mb for _, mb in sampler.window(marks["down"], marks["back"])],
        "worker_exit": worker.returncode if worker else None,
        "samples": len(rss_all),
    }


def run_worker(path: Path, base: str, concurrency: int) -> int:
    """The delivering process of part 3: drain forever until SIGTERM."""
    settings = Settings(
        fhir=FhirSettings(
            base_url=base,
            concurrency=concurrency,
            initial_wait=0.5,
            max_wait=5.0,
            max_attempts=1000,
        ),
        outbox=OutboxSettings(path=str(path)),
    )

    async def main() -> None:
        with Outbox(path) as outbox:
            task = asyncio.ensure_future(deliver(outbox, settings, forever=True))
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
            with contextlib.suppress(asyncio.CancelledError):
                await task

    asyncio.run(main())
    return 0


# --------------------------------------------------------------------------- report


def machine() -> list[str]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    return [
        f"- CPUs: {os.cpu_count()} ({model})",
        f"- memory: {psutil.virtual_memory().total / 2**30:.1f} GB",
        f"- Python {platform.python_version()}, httpx {httpx.__version__}, "
        f"SQLite {sqlite3.sqlite_version}, node {node}, Medplum 4.5.2 (in memory)",
        f"- kernel {platform.release()}",
    ]


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def part12(
    trials: list[Trial],
    profile: tuple[dict[str, float], dict[str, list[float]], dict[str, float]],
    args: argparse.Namespace,
    payload_kb: float,
) -> list[str]:
    """The report of parts 1 and 2."""
    out: list[str] = []
    out += [
        "",
        "## 1. Throughput (server emptied before each trial; every trial verified)",
        "",
        "| configuration | median s | studies/s | instances/s | min-max s | enqueue s | drain s "
        "| verified |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    medians: dict[str, float] = {}
    for trial in trials:
        secs = [r["seconds"] for r in trial.results]
        medians[trial.name] = med(secs)
        enq = med([r["enqueue_s"] for r in trial.results if "enqueue_s" in r])
        drn = med([r["drain_s"] for r in trial.results if "drain_s" in r])
        ok = all(r["verified"] == 1.0 and r["failures"] == 0 for r in trial.results)
        out.append(
            f"| {trial.name} | {med(secs):.2f} | {args.studies / med(secs):.1f} | "
            f"{args.studies * args.instances / med(secs):,.0f} | {min(secs):.2f}-{max(secs):.2f} | "
            + (f"{enq:.2f} | {drn:.2f}" if enq == enq else "- | -")
            + f" | {'yes' if ok else '**NO**'} |"
        )

    def tput(name: str) -> float:
        return args.studies / medians[name]

    c = args.concurrency

    def per_round(a: str, b: str) -> str:
        """Throughput of ``a`` / throughput of ``b`` in each round: min-max."""
        ta = next(t for t in trials if t.name == a).results
        tb = next(t for t in trials if t.name == b).results
        ratios = [rb["seconds"] / ra["seconds"] for ra, rb in zip(ta, tb, strict=True)]
        return f"{min(ratios):.2f}-{max(ratios):.2f}"

    goal_rows = [
        (f"outbox, {c} concurrent, reconcile on", f"direct, {c} concurrent"),
        (f"outbox, {c} concurrent, reconcile off", f"direct, {c} concurrent"),
        (f"outbox, {c} concurrent, reconcile on", f"direct + reconcile batch, {c} concurrent"),
        ("outbox, sequential, reconcile on", "direct, sequential"),
        ("outbox, sequential, reconcile off", "direct, sequential"),
    ]
    out += [
        "",
        "| ratio (throughput) | median | per round | goal | met |",
        "|---|---:|---:|---:|---|",
    ]
    for a, b in goal_rows:
        ratio = tput(a) / tput(b)
        out.append(
            f"| {a} / {b} | {ratio:.2f} | {per_round(a, b)} | >= 0.75 | "
            f"{'yes' if ratio >= 0.75 else '**no**'} |"
        )
    out += [
        f"| direct {c} concurrent / direct sequential | "
        f"{tput(f'direct, {c} concurrent') / tput('direct, sequential'):.2f} | | | |",
    ]

    result, totals, extra = profile
    out += [
        "",
        f"## 2. Where the time goes (one instrumented outbox trial, {c} concurrent, reconcile on)",
        "",
        f"wall {result['seconds']:.2f} s (enqueue {result['enqueue_s']:.2f} s, drain "
        f"{result['drain_s']:.2f} s); CPU time of this Python process "
        f"{extra['python_cpu_s']:.2f} s. "
        "SQLite and JSON calls are synchronous: their time blocks the event loop. "
        "HTTP times are awaited (they overlap across the rows in flight).",
        "",
        "| where | calls | total s | ms/call |",
        "|---|---:|---:|---:|",
    ]
    for label, (secs, calls) in sorted(totals.items()):
        if calls:
            out.append(f"| {label} | {int(calls)} | {secs:.3f} | {secs / calls * 1000:.2f} |")
    fallback = next((int(v[1]) for k, v in totals.items() if "per-search fallback" in k), 0)
    out += [
        "",
        f"Reconcile requests: {int(next((v[1] for k, v in totals.items() if 'counts' in k), 0))} "
        f"batch requests for {args.studies} Bundles; per-search fallback requests: {fallback} "
        f"({'the server accepted every batch' if fallback == 0 else 'the batch was REFUSED'}).",
    ]
    out += [
        "",
        f"One committed 1-row write of a {payload_kb:.0f} KB Bundle (WAL): "
        f"synchronous=FULL {extra['commit_ms_FULL']:.2f} ms, synchronous=OFF "
        f"{extra['commit_ms_OFF']:.2f} ms.",
    ]

    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the server is down")
    parser.add_argument("--pre", type=float, default=10.0, help="seconds of delivery before it")
    parser.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="studies/s enqueued in part 3 (default: studies / outage)",
    )
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="20 x 30 instances, 5 s outage")
    parser.add_argument("--skip-outage", action="store_true")
    parser.add_argument(
        "--skip-throughput", action="store_true", help="part 3 only (the outage and memory)"
    )
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-base", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return run_worker(args.worker, args.worker_base, args.concurrency)
    if args.quick:
        args.studies, args.instances, args.outage, args.pre, args.repeats = 20, 30, 5.0, 3.0, 1
    rate = args.rate or args.studies / args.outage
    results = args.results or (
        ROOT / "bench" / ".work" / "delivery-quick.md"
        if args.quick
        else ROOT / "bench" / "results" / "delivery.md"
    )
    work = ROOT / "bench" / ".work" / "deliver"
    work.mkdir(parents=True, exist_ok=True)
    if not (MEDPLUM / "node_modules").exists():
        subprocess.run(["npm", "ci", "--prefix", str(MEDPLUM)], check=True)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    started = time.time()
    load_start = os.getloadavg()[0]
    t = time.perf_counter()
    maker = Studies(template_study(work, args.instances))
    studies = [maker.make(k) for k in range(args.studies)]
    payload_kb = len(encode(studies[0].bundle or {})) / 1024
    log(
        f"data: {args.studies} studies x {args.instances} instances, "
        f"{payload_kb:.0f} KB per Bundle, ready in {time.perf_counter() - t:.1f} s"
    )

    peer = Peer(work, free_port())
    log(f"peer: ready in {peer.start():.1f} s on port {peer.port}")
    try:
        trials: list[Trial] = []
        profile = None
        if not args.skip_throughput:
            trials = throughput(peer, work, studies, args.concurrency, args.repeats, log)
            profile = profile_outbox(peer, work, studies, args.concurrency)
            log("profile trial done")
        recovery = None
        if not args.skip_outage:
            recovery = outage(
                peer,
                work,
                maker,
                args.studies,
                rate=rate,
                pre=args.pre,
                outage_s=args.outage,
                concurrency=args.concurrency,
                log=log,
            )
    finally:
        peer.stop()

    entries = ", ".join(
        f"{e['request']['method']} {e['request']['url'].split('?')[0]}"
        + (" conditional" if "?" in e["request"]["url"] or "ifNoneExist" in e["request"] else "")
        for e in (studies[0].bundle or {}).get("entry", [])
    )
    out: list[str] = []
    out += [
        "# Delivery benchmark: raw output",
        "",
        f"`{' '.join(['bench/deliver_bench.py', *(argv if argv is not None else sys.argv[1:])])}` "
        f"on {dt.datetime.fromtimestamp(started).isoformat(timespec='seconds')}, "
        f"{time.time() - started:.0f} s in all.",
        "",
        *machine(),
        f"- data: {args.studies} studies x {args.instances} instances; one transaction Bundle "
        f"per study ({payload_kb:.0f} KB; entries: {entries}), distinct UIDs and patients",
        f"- concurrency {args.concurrency}; {args.repeats} rounds, configurations interleaved; "
        "medians",
        f"- load average (1 min) at the start {load_start:.2f}, at the end {os.getloadavg()[0]:.2f}"
        " (other processes on the machine show here)",
    ]
    if trials and profile is not None:
        out += part12(trials, profile, args, payload_kb)
    if recovery is not None:
        r = recovery
        drain = r["rss_drain"] or [float("nan")]
        every = r["rss_all"] or [float("nan")]
        out += [
            "",
            f"## 3. Outage: {args.outage:.0f} s server stop with enqueueing going on",
            "",
            f"- enqueue rate {r['rate']:.2f} studies/s ({r['rate'] * args.instances:,.0f} "
            f"instances/s); {args.pre:.0f} s of normal delivery first",
            f"- outbox when the peer was stopped: {r['before_down']}",
            f"- server down (stop to restart + restore) {r['down_s']:.1f} s",
            f"- studies enqueued in all: {r['enqueued']}",
            f"- backlog when the server came back: {r['backlog']} rows ({r['backlog_detail']})",
            f"- retries recorded (all rows, whole run): {r['retries']}",
            f"- first delivery {r['first_after_s']:.2f} s after the server came back "
            "(retry back-off: initial_wait 0.5 s, max_wait 5 s)",
            f"- drain: {r['delivered_after']} rows delivered in {r['drain_s']:.1f} s after the "
            f"restart = **{r['drain_rate']:.1f} rows/s** "
            f"({r['drain_rate_from_first']:.1f} rows/s from the first to the last delivery)",
            f"- outbox at the end: {r['final']}",
            f"- server check, one search per study: {r['tally']}",
            f"- **no loss, no duplicate: {'yes' if r['ok'] else 'NO'}**",
            "",
            "RSS of the delivering process (MB):",
            "",
            "| window | samples | start | peak | end | slope MB/min |",
            "|---|---:|---:|---:|---:|---:|",
            f"| drain (restart to last delivery) | {len(r['rss_drain'])} | {drain[0]:.1f} | "
            f"{max(drain):.1f} | {drain[-1]:.1f} | {r['rss_drain_slope']:+.2f} |",
            f"| whole run (first delivery to 1 s after the drain) | {len(r['rss_all'])} | "
            f"{every[0]:.1f} | {max(every):.1f} | {every[-1]:.1f} | {r['rss_all_slope']:+.2f} |",
        ]
        if r["rss_outage"]:
            out.append(
                f"| outage only | {len(r['rss_outage'])} | {r['rss_outage'][0]:.1f} | "
                f"{max(r['rss_outage']):.1f} | {r['rss_outage'][-1]:.1f} | |"
            )

    text = "\n".join(out) + "\n"
    print(text)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(text, encoding="utf-8")
    log(f"written to {results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
