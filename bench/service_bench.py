"""Service mode (issue 11): C-STORE receive against dcmtk's storescp, DICOMweb back-load
against file ingest, and the HTTP API's accepted reviews/s with p99 latency.

Run in the project venv from the repository root::

    .venv/bin/python bench/service_bench.py              # 1,000-slice study, 3 rounds, 300 POSTs
    .venv/bin/python bench/service_bench.py --quick      # 100 slices, 1 round, 50 POSTs

1. **C-STORE receive**: one synthetic planning CT of ``--slices`` slices (256 x 256, 16-bit;
   ``fixtures/synth.py``) sent by ``storescu`` (one association, the files in order) to
   (a) ``storescp -od DIR`` (dcmtk, writes each instance to disk) and (b) our receiver
   (``adapter.receive.scp.Receiver`` writing to an ``adapter.receive.spool.Spool``: raw bytes,
   fsync per instance and per folder; its processor does not run, so only receiving is timed).
   Wall time of the ``storescu`` process; rounds interleaved (order reversed every other round);
   instances/s of the median round.
2. **DICOMweb back-load**: the four bundled fixture studies uploaded to a real Orthanc
   (``tests/peers/orthanc_fixture.py``, loopback), then ``rtplan ingest --dicomweb URL --out``
   against ``rtplan ingest FILES --out`` of the same files (fresh output folders): studies/s.
3. **API**: ``--posts`` review POSTs (valid reviews of one ingested study, distinct review ids)
   one at a time over one keep-alive connection to a real ``rtplan serve --config FILE --out``
   process (as deployed; the client never shares that process's interpreter); latency of each
   202; reviews/s and p50/p99, for each ``--api-stores`` entry (``sqlite``: the file in the
   output folder; ``postgresql``:
   a durable local cluster, fsync on, as ``bench/store_bench.py`` starts it) and each
   ``--api-layouts`` entry: ``thread`` (delivery, note jobs included, in the API's process) and
   ``process`` (``serve.delivery: false``; a second ``rtplan serve`` delivers); then the time
   until every row (the review notes' rows included) is delivered. The 1-minute load average
   is recorded before and after each run (the machine may be shared).

Results go to stdout as Markdown (``bench/results/service.md``).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adapter.config import DicomSettings  # noqa: E402
from adapter.receive.scp import Receiver  # noqa: E402
from adapter.receive.spool import Spool  # noqa: E402
from tests.peers.launch import free_port  # noqa: E402
from tests.support import FIXTURES, synth  # noqa: E402

# dcmtk 3.6.7 leaves Nagle's algorithm on unless TCP_NODELAY=1 is in its environment: each
# C-STORE then waits out a delayed ACK (about 90 ms an instance on loopback, storescp at 16/s).
# Both dcmtk tools get it, so the reference is dcmtk at its speed (our receiver sets the
# option on each connection).
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def storescu(port: int, files: list[Path], called: str) -> float:
    cmd = ["storescu", "-aet", "CTSIM1", "-aec", called, "127.0.0.1", str(port), *map(str, files)]
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, timeout=3600, env=DCMTK_ENV)
    return time.perf_counter() - started


def cstore(slices: int, rounds: int, work: Path) -> dict[str, object]:
    study = work / "study"
    synth.planning_ct(study, seed="bench", slices=slices, rows=256, cols=256)
    files = sorted(study.glob("*.dcm"))
    timings: dict[str, list[float]] = {"storescp": [], "rtplan": []}
    for number in range(rounds):
        order = ["storescp", "rtplan"] if number % 2 == 0 else ["rtplan", "storescp"]
        for name in order:
            target = work / f"{name}-{number}"
            target.mkdir()
            port = free_port()
            if name == "storescp":
                proc = subprocess.Popen(
                    ["storescp", "-aet", "STORESCP", "-od", str(target), str(port)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=DCMTK_ENV,
                )  # fmt: skip
                time.sleep(0.5)
                try:
                    timings[name].append(storescu(port, files, "STORESCP"))
                finally:
                    proc.terminate()
                    proc.wait(10)
            else:
                receiver = Receiver(DicomSettings(listen_port=port), Spool(target))
                receiver.start()
                try:
                    timings[name].append(storescu(port, files, "RTPLAN"))
                finally:
                    receiver.stop()
            shutil.rmtree(target)
    medians = {k: statistics.median(v) for k, v in timings.items()}
    rates = {k: len(files) / v for k, v in medians.items()}
    return {
        "instances": len(files),
        "bytes": sum(f.stat().st_size for f in files),
        "seconds": timings,
        "instances_per_s": rates,
        "ratio": rates["rtplan"] / rates["storescp"],
    }


def backload(work: Path) -> dict[str, object]:
    from tests.peers.orthanc_fixture import OrthancPeer, build_shim

    cases = ["planning-ct", "planning-mr", "diagnostic-ct", "pet-ct"]
    peer = OrthancPeer(work / "orthanc", build_shim(work))
    peer.start()
    try:
        peer.upload([p for c in cases for p in sorted((FIXTURES / "dicom" / c).glob("*.dcm"))])
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        base = [sys.executable, "-m", "adapter.cli", "ingest"]
        runs = {
            "dicomweb": [*base, "--dicomweb", peer.dicomweb_url, "--out", str(work / "web")],
            "files": [*base, *[str(FIXTURES / "dicom" / c) for c in cases],
                      "--out", str(work / "files")],
        }  # fmt: skip
        seconds = {}
        for name, cmd in runs.items():
            started = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, env=env, check=False, capture_output=True, timeout=600)
            seconds[name] = time.perf_counter() - started
    finally:
        peer.stop()
    return {"studies": len(cases), "seconds": seconds,
            "studies_per_s": {k: len(cases) / v for k, v in seconds.items()}}  # fmt: skip


def api(posts: int, work: Path, layouts: list[str], stores: list[str]) -> dict[str, object]:
    """Each store and layout in turn, on a fresh output folder (and a fresh database):
    ``thread`` (the API hands accepted rows to a delivery thread in its own process,
    ``serve.delivery: true``) and ``process`` (the API only stores, ``serve.delivery: false``,
    and a second ``rtplan serve`` with only delivery on delivers from the same store, as
    docs/operations.md recommends)."""
    results: dict[str, object] = {}
    cluster = None
    try:
        for store in stores:
            url = ""
            if store == "postgresql":
                from tests.peers.postgres_fixture import start_cluster

                if cluster is None:
                    cluster = start_cluster(durable=True)
                url = cluster.new_database()
            for layout in layouts:
                name = f"{store}-{layout}"
                if store == "postgresql" and layout != layouts[0]:
                    assert cluster is not None
                    url = cluster.new_database()
                results[name] = _api_layout(posts, work / f"api-{name}", layout, url)
                print(name, json.dumps(results[name]), file=sys.stderr, flush=True)  # progress
    finally:
        if cluster is not None:
            from tests.peers.postgres_fixture import stop_cluster

            stop_cluster(cluster)
    return results


def _api_layout(posts: int, work: Path, layout: str, store_url: str) -> dict[str, object]:
    """One API run: the API is a real ``rtplan serve`` process (as deployed), the client here.

    ``thread``: one ``serve`` with the API and delivery (note jobs included); ``process``: one
    ``serve`` with the API only (``serve.delivery: false``) and a second with delivery only.
    """
    import httpx

    from adapter.cli import main

    work.mkdir(parents=True)
    out = work / "out"
    env_store = {"RTPLAN_STORE__URL": store_url} if store_url else {}
    os.environ.pop("RTPLAN_STORE__URL", None)
    os.environ.update(env_store)  # the in-process ingest below reads it
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            main(["ingest", str(FIXTURES / "dicom" / "planning-ct"), "--out", str(out)])
    finally:
        for name in env_store:
            os.environ.pop(name, None)
    review = json.loads((FIXTURES / "reviews" / "no-finding.json").read_text())
    from pydicom import dcmread

    first = sorted((FIXTURES / "dicom" / "planning-ct").glob("*_CT_0001.dcm"))[0]
    review["study_instance_uid"] = str(dcmread(first, stop_before_pixels=True).StudyInstanceUID)
    latencies: list[float] = []
    tokens = work / "tokens.txt"
    tokens.write_text(f"{API_TOKEN}\n")
    tokens.chmod(0o600)
    port = free_port()
    api_config = work / "api.yaml"
    api_config.write_text(
        f"http:\n  listen_port: {port}\n  tokens_file: {tokens}\n"
        f"serve:\n  mllp_listener: false\n  delivery: {str(layout == 'thread').lower()}\n"
        "log:\n  level: WARNING\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), **env_store}
    command = [sys.executable, "-m", "adapter.cli", "serve"]
    processes = [
        subprocess.Popen(
            [*command, "--config", str(api_config), "--out", str(out)],
            cwd=ROOT, env=env, stderr=subprocess.DEVNULL,
        )
    ]  # fmt: skip
    if layout == "process":
        worker_config = work / "worker.yaml"
        worker_config.write_text("serve:\n  mllp_listener: false\nlog:\n  level: WARNING\n")
        processes.append(subprocess.Popen(
            [*command, "--config", str(worker_config), "--out", str(out)],
            cwd=ROOT, env=env, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    probes: list[float] = []
    posting = threading.Event()
    load_before = os.getloadavg()[0]
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, trust_env=False)
        with client:
            _wait_ready(client, processes)
            # GET /healthz on a second connection while the POSTs run: the serving loop's
            # responsiveness (a POST built on the loop would hold it up).
            prober = threading.Thread(target=_probe, args=(client, posting, probes))
            posting.set()
            prober.start()
            started = time.perf_counter()
            for number in range(posts):
                body = {**review, "review_id": f"BENCH-{number}"}
                sent = time.perf_counter()
                answer = client.post("/reviews", json=body, headers=headers)
                latencies.append(time.perf_counter() - sent)
                assert answer.status_code == 202, answer.text
            total = time.perf_counter() - started
            posting.clear()
            prober.join()
            load_during = os.getloadavg()[0]
            # Every accepted review delivered, its note built and delivered too (by the same
            # process or by the other one): no open row left in the store.
            deadline = time.monotonic() + 1800
            while True:
                metrics = client.get("/metrics", headers=headers).text
                if _queue_depth(metrics) == 0:
                    break
                assert all(p.poll() is None for p in processes), "a serve process stopped"
                assert time.monotonic() < deadline, "not all delivered after 30 minutes"
                time.sleep(0.5)
            drained = time.perf_counter() - started
    finally:
        for process in processes:  # only the processes this run started, by handle
            process.terminate()
        for process in processes:
            process.wait(60)
    latencies.sort()
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return {
        "posts": posts,
        "reviews_per_s": posts / total,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p90_ms": 1000 * latencies[int(len(latencies) * 0.9)],
        "p99_ms": 1000 * p99,
        "max_ms": 1000 * latencies[-1],
        "all_delivered_after_s": drained,
        "healthz_during_posts": _percentiles(probes),
        "load_1min": {"before": load_before, "after_posts": load_during,
                      "after_delivery": os.getloadavg()[0]},
    }  # fmt: skip


API_TOKEN = "bench-token-0123456789abcdef"


def _wait_ready(client: object, processes: list[subprocess.Popen[bytes]]) -> None:
    import httpx

    assert isinstance(client, httpx.Client)
    deadline = time.monotonic() + 60
    while True:
        assert all(p.poll() is None for p in processes), "rtplan serve did not start"
        assert time.monotonic() < deadline, "rtplan serve did not answer /healthz in 60 s"
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)


def _queue_depth(metrics: str) -> float:
    """``rtplan_queue_depth`` from a /metrics answer (open rows: pending, retrying, in flight)."""
    for line in metrics.splitlines():
        if line.startswith("rtplan_queue_depth "):
            return float(line.split()[1])
    raise AssertionError("no rtplan_queue_depth in /metrics")


def _probe(client: object, posting: threading.Event, probes: list[float]) -> None:
    import httpx

    assert isinstance(client, httpx.Client)
    with httpx.Client(base_url=client.base_url, timeout=30, trust_env=False) as own:
        while posting.is_set():
            sent = time.perf_counter()
            assert own.get("/healthz").status_code == 200
            probes.append(time.perf_counter() - sent)
            time.sleep(0.05)


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)
    at = lambda q: 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q))]  # noqa: E731
    return {"n": len(ordered), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": 1000 * ordered[-1]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--slices", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--posts", type=int, default=300)
    parser.add_argument("--parts", default="cstore,backload,api", help="comma-separated")
    parser.add_argument(
        "--api-layouts", default="thread,process", help="comma-separated: thread, process"
    )
    parser.add_argument(
        "--api-stores", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql"
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if args.quick:
        args.slices, args.rounds, args.posts = 100, 1, 50
    with tempfile.TemporaryDirectory(prefix="rtplan-bench-") as tmp:
        work = Path(tmp)
        results = {
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "load_before": os.getloadavg(),
            },
            "cstore": cstore(args.slices, args.rounds, work) if "cstore" in parts else None,
            "backload": backload(work) if "backload" in parts else None,
            "api": (
                api(args.posts, work, args.api_layouts.split(","), args.api_stores.split(","))
                if "api" in parts
                else None
            ),
            "load_after": os.getloadavg(),
        }
    print("```json")
    print(json.dumps(results, indent=2))
    print("```")


if __name__ == "__main__":
    main()
