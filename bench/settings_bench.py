"""Settings on pydantic-settings (issue 8): what loading the settings costs each command.

Run in the project venv from the repository root::

    .venv/bin/python bench/settings_bench.py                # this tree against main, 9 rounds
    .venv/bin/python bench/settings_bench.py --ref HEAD~5 --repeats 15

The other ref's ``adapter/`` is exported with ``git archive`` into ``bench/.work/`` and put
first on ``PYTHONPATH``; both trees use this venv. Each round runs, in fresh interpreters and
alternating the order of the trees, (1) ``import adapter.cli`` (what every command imports) and
(2) that plus ``load_settings`` of a settings file with every section, (3) what
``rtplan --config FILE ingest`` imports before reading, plus that load. Both trees'
``adapter/`` are byte-compiled first, as an install does. The figure is the CPU
time (user + system) of the child process, median and minimum over the rounds: on a shared
machine CPU time moves far less with the load than wall time does. Writes Markdown to stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

# The same export of a git ref's adapter/ and byte-compiling (bench/ is on sys.path).
from startup_bench import compiled, export, present

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = """\
ingest: {timezone: Europe/Paris, workers: 1}
fhir: {base_url: "https://ehr.example.org/fhir", max_attempts: 12}
outbox: {lease_seconds: 120}
hl7: {mllp: true, host: ris.example.org, port: 2575}
label: {enabled: true, timeout: 10}
review: {due_days: 7}
dicom: {listen_port: 11112, allowed_callers: [CTSIM1]}
http: {listen_port: 8080}
log: {level: INFO}
"""
PROBES = {
    "every command (`import adapter.cli`)": "import adapter.cli",
    "`import adapter.cli` + `load_settings(FILE)`": (
        "import sys, pathlib, adapter.cli; from adapter.config import load_settings; "
        "load_settings(pathlib.Path(sys.argv[1]), env={})"
    ),
    # What ``rtplan --config FILE ingest`` imports and loads before it reads a file: since
    # issue 16 the CLI imports the ingest job's modules only when the command runs, so the
    # two probes above no longer include them. {ingest} etc.: the first module of each
    # ``a|b`` that the tree has (older trees: ``adapter.service.deliver``, ``adapter.cli``).
    "`rtplan --config FILE ingest`'s imports + `load_settings(FILE)`": (
        "import sys, pathlib, adapter.cli, {ingest}, {fhir}, {titles}; "
        "from adapter.config import load_settings; "
        "load_settings(pathlib.Path(sys.argv[1]), env={{}})"
    ),
}
INGEST_MODULES = {
    "ingest": "adapter.jobs.ingest|adapter.service.deliver",
    "fhir": "adapter.jobs.fhir|adapter.cli",
    "titles": "adapter.label.titles|adapter.cli",
}


def cpu_seconds(tree: Path, code: str, settings: Path) -> float:
    if "{ingest}" in code:
        code = code.format(**{k: present(tree, v) for k, v in INGEST_MODULES.items()})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(
        [sys.executable, "-c", code, str(settings)],
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="main", help="git ref to compare with (default main)")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    trees = {args.ref: compiled(export(args.ref, prefix="settings")), "this tree": compiled(ROOT)}
    load_before = os.getloadavg()[0]
    samples: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        settings = Path(folder) / "rtplan.yaml"
        settings.write_text(SETTINGS, encoding="utf-8")
        for round_ in range(args.repeats):
            order = list(trees.items())
            for name, tree in order if round_ % 2 == 0 else reversed(order):
                for probe, code in PROBES.items():
                    samples.setdefault((probe, name), []).append(
                        cpu_seconds(tree, code, settings)
                    )
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print("# Settings load cost\n")
    print(
        f"Run {now} by `bench/settings_bench.py --ref {args.ref} --repeats {args.repeats}`; "
        f"1-minute load average {load_before:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end. CPU seconds (user + system) of the child. "
        "Both trees byte-compiled first (`compileall`), as an install does.\n"
    )
    print("| what | tree | CPU s, median | CPU s, min |")
    print("|---|---|---:|---:|")
    for probe in PROBES:
        for name in trees:
            values = samples[(probe, name)]
            print(f"| {probe} | {name} | {statistics.median(values):.3f} | {min(values):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
