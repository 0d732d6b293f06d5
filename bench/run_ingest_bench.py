"""Ingest benchmark: ``rtplan ingest`` against a bare pydicom loop and the peer dicom2fhir.

Run in the project venv from the repository root::

    bash bench/setup_peer.sh                 # once: bench/.venv-dicom2fhir (dicom2fhir 0.1.25)
    .venv/bin/python bench/run_ingest_bench.py            # full run (1,000 CT slices)
    .venv/bin/python bench/run_ingest_bench.py --quick    # smoke run (small data, 1 repeat)

Steps, all in one run:

1. Generates the data into ``bench/.work/`` with ``fixtures/synth.py --case bench``:
   ``small`` = one planning study of N CT slices (512x512) + 40 MR slices + 1 RTSTRUCT
   (N=1,000 gives 1,041 files); ``large`` = the same study written ``--copies 5`` times
   as distinct studies (5,205 files) for the memory-scaling check. Reused when the same
   parameters were generated before (``.params.json``).
2. Warms the page cache (reads every file once).
3. Runs, interleaved, ``--repeats`` times (default 3) on ``small``:
   ``bench/bare_pydicom.py`` (``dcmread(stop_before_pixels=True)`` loop, project venv),
   ``bench/peer_dicom2fhir.py`` (dicom2fhir 0.1.25 in ``bench/.venv-dicom2fhir``) and
   ``.venv/bin/rtplan ingest DATA --out OUT --json``. Each is its own subprocess; the
   wall-clock of the whole process (start-up and imports included, the same basis for all
   three) gives instances/s; the median of the repeats is reported. Before the runs,
   ``adapter/`` is byte-compiled (``compileall``), as installing a package does: the peers
   and pydicom run from installed, compiled packages, while the editable install of the
   adapter would otherwise compile every one of its modules in every run whenever
   ``PYTHONDONTWRITEBYTECODE`` is set (as in this project's shared environment), about
   0.1 s that no installed ``rtplan`` pays. ``--source-only`` skips that step (the basis
   of the runs before 2026-11-30 16:00 UTC); the results say which was used.
4. Peak RSS of ``rtplan ingest`` on ``small`` and on ``large``, in separate runs after the
   timed ones (the child's ``ru_maxrss`` via ``os.wait4``: the largest single process; plus
   a sum over its process tree sampled every 50 ms from /proc, in case it uses workers).
5. Prints a Markdown table with instances/s and the ratios ingest/bare (goal >= 1.5),
   ingest/dicom2fhir (goal >= 8) and RSS(large)/RSS(small) (goal <= 1.5), and writes it to
   ``bench/results/ingest.md`` (``--results``; a ``--quick`` run writes
   ``bench/.work/ingest-quick.md`` instead).

A tool that is missing (no ``.venv/bin/rtplan`` or no ``ingest`` sub-command yet, or no peer
venv) or fails is reported as "not available" / "failed", and its ratios as n/a.
"""

from __future__ import annotations

import argparse
import datetime as dt
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
WORK = BENCH / ".work"
SYNTH = ROOT / "fixtures" / "synth.py"
DEFAULT_RTPLAN = ROOT / ".venv" / "bin" / "rtplan"
RTPLAN = DEFAULT_RTPLAN
PEER_PY = BENCH / ".venv-dicom2fhir" / "bin" / "python"
DEFAULT_RESULTS = BENCH / "results" / "ingest.md"
QUICK_RESULTS = WORK / "ingest-quick.md"  # a smoke run must not overwrite the real results
TIMEOUT_S = 1800.0

GOAL_VS_BARE = 1.5  # issue 16 (was 1.0)
GOAL_VS_PEER = 8.0
GOAL_RSS_SCALING = 1.5
LOAD = [0.0]  # 1-minute load average when the run started


# --------------------------------------------------------------------------- measuring


@dataclass
class Run:
    cmd: list[str]
    rc: int
    wall: float
    maxrss_mb: float
    tree_rss_mb: float
    tree_pss_mb: float
    stdout: str
    stderr: str
    cpu: float = 0.0  # user + system CPU seconds of the process and its reaped workers

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def json_line(self) -> dict[str, Any]:
        """The last stdout line that parses as a JSON object ({} if none)."""
        for line in reversed(self.stdout.strip().splitlines()):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return value
        try:  # a pretty-printed document
            value = json.loads(self.stdout)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def failure(self) -> str:
        tail = (self.stderr.strip() or self.stdout.strip()).splitlines()[-3:]
        return f"rc={self.rc}: " + " | ".join(tail)


def _descendants(pid: int) -> list[int]:
    """pid and its descendants, from /proc/*/stat (no /proc/PID/task/*/children here)."""
    parents: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(parents.get(p, []))
    return found


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _pss_kb(pid: int) -> int:
    """Proportional set size: pages shared by the forked workers counted once in total."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class _TreeSampler(threading.Thread):
    """Samples the summed RSS of a process tree every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_kb = 0
        self.peak_pss_kb = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            pids = _descendants(self.pid)
            total = sum(_rss_kb(p) for p in pids)
            self.peak_kb = max(self.peak_kb, total)
            self.peak_pss_kb = max(self.peak_pss_kb, sum(_pss_kb(p) for p in pids))
            self.stop.wait(self.interval)


def run_measured(
    cmd: list[str], *, sample_tree: bool = False, env: dict[str, str] | None = None
) -> Run:
    """Run ``cmd``; return wall time and the child's peak RSS (``os.wait4`` ru_maxrss)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=ROOT, env=env
        )
        sampler = _TreeSampler(proc.pid) if sample_tree else None
        if sampler:
            sampler.start()
        killer = threading.Timer(TIMEOUT_S, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if sampler:
            sampler.stop.set()
            sampler.join()
        out.seek(0)
        err.seek(0)
        return Run(
            cmd=cmd,
            rc=proc.returncode,
            wall=wall,
            maxrss_mb=usage.ru_maxrss / 1024.0,  # KiB on Linux
            tree_rss_mb=(sampler.peak_kb / 1024.0) if sampler else 0.0,
            tree_pss_mb=(sampler.peak_pss_kb / 1024.0) if sampler else 0.0,
            stdout=out.read().decode("utf-8", "replace"),
            stderr=err.read().decode("utf-8", "replace"),
            cpu=usage.ru_utime + usage.ru_stime,
        )


# --------------------------------------------------------------------------- data


def generate(name: str, *, slices: int, mr_slices: int, copies: int, force: bool) -> Path:
    if not SYNTH.is_file():
        raise SystemExit(f"{SYNTH} is missing: the benchmark data comes from fixtures/synth.py")
    target = WORK / name
    params = {"slices": slices, "mr_slices": mr_slices, "copies": copies, "case": "bench"}
    stamp = target / ".params.json"
    if not force and stamp.is_file() and json.loads(stamp.read_text()) == params:
        print(f"reusing {target.relative_to(ROOT)} ({params})", file=sys.stderr)
        return target
    if target.exists():
        shutil.rmtree(target)
    data = target / "dicom"
    cmd = [
        sys.executable,
        str(SYNTH),
        str(data),
        "--case",
        "bench",
        "--slices",
        str(slices),
        "--mr-slices",
        str(mr_slices),
        "--copies",
        str(copies),
    ]
    print(f"generating {data.relative_to(ROOT)}: {' '.join(cmd[2:])}", file=sys.stderr)
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    stamp.write_text(json.dumps(params))
    return target


def files_of(data: Path) -> list[Path]:
    return sorted(p for p in data.rglob("*") if p.is_file())


def warm(files: list[Path]) -> int:
    total = 0
    for path in files:
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                total += len(chunk)
    return total


# --------------------------------------------------------------------------- tools


@dataclass
class Tool:
    name: str
    available: bool
    why: str = ""
    expected: int = 0  # files in the data; checked against a reported "instances"
    runs: list[Run] = field(default_factory=list)

    def good(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    def status(self) -> str:
        if not self.available:
            return f"not available ({self.why})"
        bad = [r for r in self.runs if not r.ok]
        if bad:
            return f"failed {len(bad)}/{len(self.runs)}: {bad[0].failure()}"
        reported = (r.json_line().get("instances") for r in self.runs)
        counts = {n for n in reported if isinstance(n, int)}
        if self.expected and counts and counts != {self.expected}:
            return f"ok, but reported instances {sorted(counts)} != {self.expected} files"
        return "ok"

    def median_wall(self) -> float | None:
        runs = self.good()
        if not runs or len(runs) != len(self.runs):
            return None
        return statistics.median(r.wall for r in runs)

    def median_inproc(self) -> float | None:
        values = [_seconds(r.json_line()) for r in self.good()]
        nums = [v for v in values if v is not None]
        return statistics.median(nums) if nums and len(nums) == len(self.runs) else None

    def median_cpu(self) -> float | None:
        runs = self.good()
        if not runs or len(runs) != len(self.runs):
            return None
        return statistics.median(r.cpu for r in runs)

    def median_rss(self) -> float | None:
        runs = self.good()
        return statistics.median(r.maxrss_mb for r in runs) if runs else None


SECONDS_KEYS = ("seconds", "elapsed_s", "elapsed_seconds", "duration_s", "elapsed")


def _seconds(line: dict[str, Any]) -> float | None:
    """The run time a tool reports in its JSON output (top level or under "timing")."""
    for where in (line, line.get("timing")):
        if isinstance(where, dict):
            for key in SECONDS_KEYS:
                value = where.get(key)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    return float(value)
    return None


def bytecode_basis(source_only: bool) -> str:
    """Byte-compile ``adapter/`` as ``pip install`` does (unless ``source_only``); say which."""
    no_write = os.environ.get("PYTHONDONTWRITEBYTECODE", "")
    env = f"PYTHONDONTWRITEBYTECODE={no_write or '(unset)'}"
    if source_only:
        return f"not compiled first (`--source-only`), {env}"
    import compileall

    if not compileall.compile_dir(ROOT / "adapter", quiet=1):
        raise SystemExit("compileall failed on adapter/")
    return f"compiled first with `compileall`, as an install does ({env})"


def rtplan_available() -> tuple[bool, str]:
    if not RTPLAN.exists():
        return False, f"{RTPLAN} not installed"
    probe = subprocess.run(
        [str(RTPLAN), "ingest", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if probe.returncode != 0:
        last = (probe.stderr.strip() or probe.stdout.strip()).splitlines()[-1:]
        return False, "`rtplan ingest --help` failed: " + " ".join(last)
    return True, ""


def peer_available() -> tuple[bool, str]:
    if not PEER_PY.exists():
        return False, "no bench/.venv-dicom2fhir: run bash bench/setup_peer.sh"
    return True, ""


# ``rtplan ingest`` with the PACS label switched off (docs/pacs-label.md), the same run.
LABEL_OFF_ENV = {**os.environ, "RTPLAN_LABEL__ENABLED": "false"}


def ingest_cmd(data: Path, out: Path) -> list[str]:
    if out.exists():
        shutil.rmtree(out)
    return [str(RTPLAN), "ingest", str(data), "--out", str(out), "--json"]


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _spread(values: list[float]) -> str:
    return f"min {min(values):.2f}, max {max(values):.2f}" if values else "n/a"


def _met(value: float | None, goal: float, *, at_least: bool) -> str:
    if value is None:
        return "n/a"
    return "yes" if (value >= goal if at_least else value <= goal) else "**no**"


def report(
    *,
    args: argparse.Namespace,
    small_n: int,
    small_mb: float,
    large_n: int,
    large_mb: float,
    tools: dict[str, Tool],
    rss_small: Tool,
    rss_large: Tool,
    seconds: float,
) -> str:
    rate: dict[str, float | None] = {}
    rows = []
    for key, tool in tools.items():
        wall = tool.median_wall()
        own = tool.median_inproc()
        rate[key] = _ratio(small_n, wall)
        rows.append(
            f"| {tool.name} | {small_n:,} | {_fmt(wall, 3)} | {_fmt(rate[key], 0)} | "
            f"{_fmt(own, 3)} | {_fmt(_ratio(small_n, own), 0)} | "
            f"{_fmt(tool.median_cpu(), 3)} | {_fmt(_ratio(small_n, tool.median_cpu()), 0)} | "
            f"{_fmt(tool.median_rss(), 0)} | {tool.status()} |"
        )
    vs_bare = _ratio(rate["ingest"], rate["bare"])
    # Same-repeat ratios (bare wall / ingest wall of the same repeat): on a shared machine
    # the load changes between repeats, so these say more than a ratio of medians.
    cpu_bare, cpu_ingest, cpu_peer = (tools[k].median_cpu() for k in ("bare", "ingest", "peer"))
    vs_bare_cpu, vs_peer_cpu = _ratio(cpu_bare, cpu_ingest), _ratio(cpu_peer, cpu_ingest)
    pairs = list(zip(tools["bare"].runs, tools["ingest"].runs, strict=False))
    per_repeat = [b.wall / i.wall for b, i in pairs if b.ok and i.ok and i.wall > 0]
    peer_pairs = list(zip(tools["peer"].runs, tools["ingest"].runs, strict=False))
    per_repeat_peer = [p.wall / i.wall for p, i in peer_pairs if p.ok and i.ok and i.wall > 0]
    vs_peer = _ratio(rate["ingest"], rate["peer"])
    off_bare, off_peer = (
        _ratio(rate["ingest-off"], rate["bare"]),
        _ratio(rate["ingest-off"], rate["peer"]),
    )
    off_pairs = list(zip(tools["bare"].runs, tools["ingest-off"].runs, strict=False))
    per_repeat_off = [b.wall / i.wall for b, i in off_pairs if b.ok and i.ok and i.wall > 0]
    inproc = {key: tool.median_inproc() for key, tool in tools.items()}
    vs_bare_in = _ratio(inproc["bare"], inproc["ingest"])
    vs_peer_in = _ratio(inproc["peer"], inproc["ingest"])
    rss_s, rss_l = rss_small.median_rss(), rss_large.median_rss()
    scaling = _ratio(rss_l, rss_s)
    tree_s = max((r.tree_rss_mb for r in rss_small.good()), default=None)
    tree_l = max((r.tree_rss_mb for r in rss_large.good()), default=None)
    tree_scaling = _ratio(tree_l, tree_s)
    pss_s = max((r.tree_pss_mb for r in rss_small.good()), default=None)
    pss_l = max((r.tree_pss_mb for r in rss_large.good()), default=None)
    lines = [
        "# Ingest benchmark",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by `bench/run_ingest_bench.py"
        f"{' --quick' if args.quick else ''}` on {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, {platform.machine()}; {seconds:.0f} s in all. "
        f"1-minute load average at the start {LOAD[0]:.2f}, at the end {os.getloadavg()[0]:.2f}.",
        "",
        f"Data (`fixtures/synth.py --case bench`): **small** = one study, {args.slices} CT "
        f"slices 512x512 + {args.mr_slices} MR + 1 RTSTRUCT = {small_n:,} files "
        f"({small_mb:,.0f} MB); **large** = the same x{args.large_copies} distinct studies = "
        f"{large_n:,} files ({large_mb:,.0f} MB). Page cache warmed first. "
        f"Median of {args.repeats} interleaved run(s). `rtplan ingest` runs twice a repeat: "
        "with the PACS label on (the default: the planning study gets its KOS, written from "
        "raw bytes without pydicom for a single-byte or UTF-8 character set, `docs/pacs-label.md`) "
        'and off (`RTPLAN_LABEL__ENABLED=false`). The ratios without "label off" '
        "are for the default.",
        "",
        "Wall = the whole subprocess (interpreter start-up and imports included; the same "
        "basis for all three). In-process = the `seconds` the tool itself reports "
        "(bare loop and dicom2fhir exclude imports; for `rtplan ingest` one of "
        f"{', '.join(SECONDS_KEYS)} in its `--json` output, else n/a). dicom2fhir lists "
        "instances in its ImagingStudy (`add_instances`), as the adapter does. "
        f"Adapter bytecode: {args.bytecode}.",
        "",
        "| tool | instances | wall s (median) | instances/s (wall) | in-process s | "
        "instances/s (in-process) | CPU s (user+sys, workers included) | instances per CPU s | "
        "peak RSS MB | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        *rows,
        "",
        "| ratio | value | goal | met |",
        "|---|---:|---:|---|",
        f"| ingest / bare pydicom (instances/s) | {_fmt(vs_bare)} | >= {GOAL_VS_BARE} | "
        f"{_met(vs_bare, GOAL_VS_BARE, at_least=True)} |",
        f"| ingest / dicom2fhir (instances/s) | {_fmt(vs_peer)} | >= {GOAL_VS_PEER:g} | "
        f"{_met(vs_peer, GOAL_VS_PEER, at_least=True)} |",
        f"| ingest / bare pydicom, in-process | {_fmt(vs_bare_in)} | >= {GOAL_VS_BARE} | "
        f"{_met(vs_bare_in, GOAL_VS_BARE, at_least=True)} |",
        f"| ingest / dicom2fhir, in-process | {_fmt(vs_peer_in)} | >= {GOAL_VS_PEER:g} | "
        f"{_met(vs_peer_in, GOAL_VS_PEER, at_least=True)} |",
        f"| ingest / bare pydicom, median of same-repeat ratios "
        f"({_spread(per_repeat)}) | {_fmt(_median(per_repeat))} | >= {GOAL_VS_BARE} | "
        f"{_met(_median(per_repeat), GOAL_VS_BARE, at_least=True)} |",
        f"| ingest / dicom2fhir, median of same-repeat ratios "
        f"({_spread(per_repeat_peer)}) | {_fmt(_median(per_repeat_peer))} | "
        f">= {GOAL_VS_PEER:g} | {_met(_median(per_repeat_peer), GOAL_VS_PEER, at_least=True)} |",
        f"| label off: ingest / bare pydicom (instances/s) | {_fmt(off_bare)} | "
        f">= {GOAL_VS_BARE} | {_met(off_bare, GOAL_VS_BARE, at_least=True)} |",
        f"| label off: ingest / dicom2fhir (instances/s) | {_fmt(off_peer)} | "
        f">= {GOAL_VS_PEER:g} | {_met(off_peer, GOAL_VS_PEER, at_least=True)} |",
        f"| label off: ingest / bare pydicom, median of same-repeat ratios "
        f"({_spread(per_repeat_off)}) | {_fmt(_median(per_repeat_off))} | >= {GOAL_VS_BARE} | "
        f"{_met(_median(per_repeat_off), GOAL_VS_BARE, at_least=True)} |",
        f"| ingest / bare pydicom, instances per CPU second (no credit for 2 workers) | "
        f"{_fmt(vs_bare_cpu)} | >= {GOAL_VS_BARE} | "
        f"{_met(vs_bare_cpu, GOAL_VS_BARE, at_least=True)} |",
        f"| ingest / dicom2fhir, instances per CPU second | {_fmt(vs_peer_cpu)} | "
        f">= {GOAL_VS_PEER:g} | {_met(vs_peer_cpu, GOAL_VS_PEER, at_least=True)} |",
        f"| RSS {large_n:,} / RSS {small_n:,} (`rtplan ingest`) | {_fmt(scaling)} | "
        f"<= {GOAL_RSS_SCALING} | {_met(scaling, GOAL_RSS_SCALING, at_least=False)} |",
        f"| RSS {large_n:,} / RSS {small_n:,}, process tree (parent + workers, sampled) | "
        f"{_fmt(tree_scaling)} | <= {GOAL_RSS_SCALING} | "
        f"{_met(tree_scaling, GOAL_RSS_SCALING, at_least=False)} |",
        "",
        f"`rtplan ingest` peak RSS (ru_maxrss, largest process): {_fmt(rss_s, 0)} MB on "
        f"{small_n:,} instances, {_fmt(rss_l, 0)} MB on {large_n:,} "
        f"({rss_large.status()}); sampled process-tree peak: {_fmt(tree_s, 0)} MB and "
        f"{_fmt(tree_l, 0)} MB (sum of VmRSS: pages the forked workers share with the "
        f"parent count once per process); sampled process-tree PSS peak: {_fmt(pss_s, 0)} MB "
        f"and {_fmt(pss_l, 0)} MB (shared pages split, ratio {_fmt(_ratio(pss_l, pss_s))}).",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, help="CT slices of the study (default 1000)")
    parser.add_argument("--mr-slices", type=int, help="MR slices (default 40)")
    parser.add_argument("--large-copies", type=int, default=5, help="copies for the RSS check")
    parser.add_argument("--repeats", type=int, help="runs per measurement (default 3)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 100 CT + 10 MR slices, 1 repeat"
    )
    parser.add_argument("--no-peer", action="store_true", help="skip dicom2fhir")
    parser.add_argument("--regenerate", action="store_true", help="regenerate the data")
    parser.add_argument(
        "--results",
        type=Path,
        help=f"Markdown output (default {DEFAULT_RESULTS.relative_to(ROOT)}; "
        f"with --quick {QUICK_RESULTS.relative_to(ROOT)})",
    )
    parser.add_argument("--rtplan", type=Path, default=DEFAULT_RTPLAN, help="rtplan executable")
    parser.add_argument(
        "--source-only",
        action="store_true",
        help="do not byte-compile adapter/ first (each run compiles it if bytecode is not "
        "written, as with PYTHONDONTWRITEBYTECODE=1)",
    )
    args = parser.parse_args(argv)
    global RTPLAN
    RTPLAN = args.rtplan.resolve()
    args.slices = args.slices or (100 if args.quick else 1000)
    args.mr_slices = args.mr_slices if args.mr_slices is not None else (10 if args.quick else 40)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.results = args.results or (QUICK_RESULTS if args.quick else DEFAULT_RESULTS)
    started = time.perf_counter()
    LOAD[0] = os.getloadavg()[0]

    WORK.mkdir(parents=True, exist_ok=True)
    args.bytecode = bytecode_basis(args.source_only)
    gen = {"slices": args.slices, "mr_slices": args.mr_slices, "force": args.regenerate}
    small = generate(f"small-{args.slices}", copies=1, **gen) / "dicom"
    large = generate(f"large-{args.slices}x{args.large_copies}", copies=args.large_copies, **gen)
    large = large / "dicom"
    small_files, large_files = files_of(small), files_of(large)
    small_bytes, large_bytes = warm(small_files), warm(large_files)
    print(
        f"warmed {len(small_files)} + {len(large_files)} files "
        f"({(small_bytes + large_bytes) / 1e6:,.0f} MB)",
        file=sys.stderr,
    )

    ok, why = rtplan_available()
    peer_ok, peer_why = peer_available()
    if args.no_peer:
        peer_ok, peer_why = False, "--no-peer"
    tools = {
        "bare": Tool("bare pydicom `dcmread(stop_before_pixels=True)` loop", True),
        "peer": Tool("dicom2fhir 0.1.25 `from_directory`", peer_ok, peer_why),
        "ingest": Tool("`rtplan ingest --out --json` (PACS label on, the default)", ok, why),
        "ingest-off": Tool("`rtplan ingest --out --json`, `RTPLAN_LABEL__ENABLED=false`", ok, why),
    }
    for tool in tools.values():
        tool.expected = len(small_files)
    rss_small = Tool(f"rtplan ingest, {len(small_files)}", ok, why)
    rss_large = Tool(f"rtplan ingest, {len(large_files)}", ok, why)
    out_root = WORK / "out"
    for rep in range(args.repeats):
        print(f"repeat {rep + 1}/{args.repeats}", file=sys.stderr)
        tools["bare"].runs.append(
            run_measured([sys.executable, str(BENCH / "bare_pydicom.py"), str(small)])
        )
        if peer_ok:
            tools["peer"].runs.append(
                run_measured([str(PEER_PY), str(BENCH / "peer_dicom2fhir.py"), str(small)])
            )
        if ok:
            tools["ingest"].runs.append(run_measured(ingest_cmd(small, out_root / "small")))
            off = run_measured(ingest_cmd(small, out_root / "small-off"), env=LABEL_OFF_ENV)
            tools["ingest-off"].runs.append(off)
        for key, tool in tools.items():
            if tool.runs and len(tool.runs) == rep + 1:
                last = tool.runs[-1]
                print(
                    f"  {key:6s} rc={last.rc} wall={last.wall:.3f}s cpu={last.cpu:.3f}s "
                    f"rss={last.maxrss_mb:.0f}MB {last.stdout.strip()[-200:]}",
                    file=sys.stderr,
                )
    if ok:  # memory runs apart from the timed ones: the /proc sampler costs some CPU
        for rep in range(args.repeats):
            for label, data, tool in (("small", small, rss_small), ("large", large, rss_large)):
                run = run_measured(ingest_cmd(data, out_root / label), sample_tree=True)
                tool.runs.append(run)
                print(
                    f"  rss {label} {rep + 1}: rc={run.rc} wall={run.wall:.3f}s "
                    f"maxrss={run.maxrss_mb:.0f}MB tree={run.tree_rss_mb:.0f}MB "
                    f"pss={run.tree_pss_mb:.0f}MB",
                    file=sys.stderr,
                )

    text = report(
        args=args,
        small_n=len(small_files),
        small_mb=small_bytes / 1e6,
        large_n=len(large_files),
        large_mb=large_bytes / 1e6,
        tools=tools,
        rss_small=rss_small,
        rss_large=rss_large,
        seconds=time.perf_counter() - started,
    )
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text, encoding="utf-8")
    print(f"written to {args.results}", file=sys.stderr)
    failed = [t for t in (*tools.values(), rss_large) if t.available and t.status() != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
