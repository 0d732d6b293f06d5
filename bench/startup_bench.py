"""Start-up benchmark: what ``import adapter.cli`` costs, now and at another git ref.

Run in the project venv from the repository root::

    .venv/bin/python bench/startup_bench.py                 # this tree against main
    .venv/bin/python bench/startup_bench.py --ref HEAD~3 --repeats 9

The other ref's ``adapter/`` is exported with ``git archive`` into ``bench/.work/`` and put
first on ``PYTHONPATH``; both trees use this venv. Interleaved runs of
``python -X importtime -c "import adapter.cli"`` give the cumulative import time
(microseconds, as ``-X importtime`` reports it) and the subprocess wall time; medians are
reported with min-max, and whether pydicom and numpy were imported. Writes
``bench/results/startup.md`` (``--results``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / ".work"
PROBE = (
    "import sys, adapter.cli; "
    "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & {'pydicom', 'numpy'})))"
)


def export(ref: str) -> Path:
    target = WORK / f"startup-{ref.replace('/', '_').replace('~', '-')}"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", ref, "adapter"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def measure(tree: Path) -> tuple[float, float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=WORK,
    )
    wall = time.perf_counter() - start
    last = [line for line in done.stderr.splitlines() if line.rstrip().endswith("adapter.cli")]
    cumulative_us = float(last[-1].split("|")[1])
    return cumulative_us / 1e6, wall, done.stdout.strip() or "neither"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="main", help="git ref to compare with (default main)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "startup.md")
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    trees = {args.ref: export(args.ref), "this tree": ROOT}
    load = os.getloadavg()[0]
    samples: dict[str, list[tuple[float, float, str]]] = {name: [] for name in trees}
    for rep in range(args.repeats):
        order = list(trees.items()) if rep % 2 == 0 else list(reversed(trees.items()))
        for name, tree in order:
            samples[name].append(measure(tree))
    lines = [
        "# Start-up benchmark",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by `bench/startup_bench.py "
        f"--ref {args.ref} --repeats {args.repeats}`; {args.repeats} interleaved runs each "
        f"(order alternating); 1-minute load average {load:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end.",
        "",
        "| tree | `import adapter.cli`, -X importtime cumulative s (median, min-max) | "
        "subprocess wall s (median, min-max) | pydicom / numpy imported |",
        "|---|---:|---:|---|",
    ]
    medians = {}
    for name, runs in samples.items():
        imports = [r[0] for r in runs]
        walls = [r[1] for r in runs]
        medians[name] = statistics.median(imports)
        lines.append(
            f"| {name} | {statistics.median(imports):.3f} ({min(imports):.3f}-{max(imports):.3f})"
            f" | {statistics.median(walls):.3f} ({min(walls):.3f}-{max(walls):.3f}) | "
            f"{', '.join(sorted({r[2] for r in runs}))} |"
        )
    ratio = medians[args.ref] / medians["this tree"] if medians["this tree"] else float("nan")
    lines += ["", f"Import time {args.ref} / this tree: {ratio:.2f}x.", ""]
    text = "\n".join(lines)
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
