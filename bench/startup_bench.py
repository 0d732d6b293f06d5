"""Start-up benchmark: what ``import adapter.cli`` costs, now and at another git ref.

Run in the project venv from the repository root::

    .venv/bin/python bench/startup_bench.py                 # this tree against main
    .venv/bin/python bench/startup_bench.py --ref HEAD~3 --repeats 9

The other ref's ``adapter/`` is exported with ``git archive`` into ``bench/.work/`` and put
first on ``PYTHONPATH``; both trees use this venv. Interleaved runs of
``python -X importtime -c "import ..."`` give the cumulative import time (as ``-X importtime``
reports it) and the subprocess wall time, for what every command imports
(``adapter.cli``) and for what ``rtplan ingest`` imports before reading (plus
the ingest job's module and what the command imports when it runs); medians with min-max,
and which heavy packages were loaded. Both trees' ``adapter/`` are byte-compiled first, as an
install does (otherwise, with ``PYTHONDONTWRITEBYTECODE`` set, each run compiles them). Writes
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
# What every command imports, and what ``rtplan ingest --out`` imports before it reads a
# file (the CLI, then the ingest, output and delivery services, which pull in the reader,
# the classifier, the mapping and the outbox).
PROBES = {
    "every command (`import adapter.cli`)": ("adapter.cli",),
    # The ingest job's module: ``adapter.jobs.ingest`` since issue 8, ``adapter.service.deliver``
    # in older trees (the first that exists in the tree measured).
    "`rtplan ingest` (+ the ingest job)": (
        "adapter.cli",
        "adapter.jobs.ingest|adapter.service.deliver",
        # Since issue 16 the CLI imports these when ``rtplan ingest`` runs rather than with
        # ``adapter.cli``; older trees load them with ``adapter.cli`` (then listed again: free).
        "adapter.jobs.fhir|adapter.cli",
        "adapter.label.titles|adapter.cli",
        "adapter.private|adapter.cli",
    ),
}
HEAVY = "{'pydicom', 'numpy', 'httpx', 'jwt', 'hl7apy'}"


def compiled(tree: Path) -> Path:
    """Byte-compile ``tree``'s ``adapter/`` as an install does, so that neither tree pays for
    compiling its modules in each run (``PYTHONDONTWRITEBYTECODE`` may be set)."""
    import compileall

    if not compileall.compile_dir(tree / "adapter", quiet=1):
        raise SystemExit(f"compileall failed in {tree}")
    return tree


def export(ref: str, prefix: str = "startup") -> Path:
    """``adapter/`` of git ``ref``, extracted under ``bench/.work/<prefix>-<ref>``."""
    target = WORK / f"{prefix}-{ref.replace('/', '_').replace('~', '-')}"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", ref, "adapter"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def present(tree: Path, choices: str) -> str:
    """The first of ``a|b|...`` that is a module or package in ``tree``."""
    for name in choices.split("|"):
        path = tree.joinpath(*name.split("."))
        if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file():
            return name
    raise SystemExit(f"none of {choices} in {tree}")


def measure(tree: Path, probe: tuple[str, ...]) -> tuple[float, float, str]:
    """(seconds of imports by ``-X importtime``, subprocess wall, heavy packages loaded)."""
    modules = tuple(present(tree, m) for m in probe)
    env = {**os.environ, "PYTHONPATH": str(tree)}
    code = (
        f"import sys, {', '.join(modules)}; "
        f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & {HEAVY})))"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=WORK,
    )
    wall = time.perf_counter() - start
    cumulative_us = 0.0
    for line in done.stderr.splitlines():
        _, cumulative, name = line.split("|")
        if name.startswith(" ") and not name.startswith("  ") and name.strip() in modules:
            cumulative_us += float(cumulative)  # top-level entries only (no double count)
    return cumulative_us / 1e6, wall, done.stdout.strip() or "none"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="main", help="git ref to compare with (default main)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "startup.md")
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    trees = {args.ref: compiled(export(args.ref)), "this tree": compiled(ROOT)}
    load = os.getloadavg()[0]
    cases = [(probe, tree_name) for probe in PROBES for tree_name in trees]
    samples: dict[tuple[str, str], list[tuple[float, float, str]]] = {c: [] for c in cases}
    for rep in range(args.repeats):
        for probe, tree_name in cases if rep % 2 == 0 else list(reversed(cases)):
            samples[(probe, tree_name)].append(measure(trees[tree_name], PROBES[probe]))
    lines = [
        "# Start-up benchmark",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by `bench/startup_bench.py "
        f"--ref {args.ref} --repeats {args.repeats}`; {args.repeats} interleaved runs each "
        f"(order alternating); 1-minute load average {load:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end. Both trees byte-compiled first (`compileall`), "
        "as an install does.",
        "",
        "| imports of | tree | -X importtime cumulative s (median, min-max) | "
        "subprocess wall s (median, min-max) | of pydicom, numpy, httpx, jwt, hl7apy loaded |",
        "|---|---|---:|---:|---|",
    ]
    medians = {}
    for (probe, name), runs in samples.items():
        imports = [r[0] for r in runs]
        walls = [r[1] for r in runs]
        medians[(probe, name)] = statistics.median(imports)
        lines.append(
            f"| {probe} | {name} | {statistics.median(imports):.3f} "
            f"({min(imports):.3f}-{max(imports):.3f}) | {statistics.median(walls):.3f} "
            f"({min(walls):.3f}-{max(walls):.3f}) | {', '.join(sorted({r[2] for r in runs}))} |"
        )
    lines.append("")
    for probe in PROBES:
        before, after = medians[(probe, args.ref)], medians[(probe, "this tree")]
        lines.append(f"- {probe}: {args.ref} / this tree = {before / after:.2f}x.")
    lines.append("")
    text = "\n".join(lines)
    print(text)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
