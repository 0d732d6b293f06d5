"""Reader benchmark, in one process: the fast path, the pydicom path and a bare dcmread loop.

Run in the project venv from the repository root, after ``run_ingest_bench.py`` generated
the data::

    .venv/bin/python bench/reader_paths_bench.py bench/.work/small-1000/dicom
    .venv/bin/python bench/reader_paths_bench.py DATA --dicomsdl-python /path/to/venv/bin/python

Per round, in alternating order, over the same files (page cache warm; one process, one
core; imports excluded): ``read_header`` (fast path; every file must take it),
``read_header(fast=False)`` (the pydicom path) and ``dcmread(stop_before_pixels=True)`` +
SOPInstanceUID, timed in CPU seconds of this process (``time.process_time``: other load on
a shared machine slows it far less than wall time). With ``--dicomsdl-python`` (a venv
holding dicomsdl, which the project does not depend on) each round also times a dicomsdl
loop reading 8 of the values in a subprocess (its own CPU seconds). Prints a Markdown
table of medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

DICOMSDL_LOOP = """
import sys, time, glob, dicomsdl
files = sorted(p for p in glob.glob(sys.argv[1] + '/**/*', recursive=True) if '.' in p[-5:])
tags = (0x0020000D, 0x0020000E, 0x00080018, 0x00080016, 0x00080060, 0x00100020, 0x00100010,
        0x00200013)
start = time.process_time()
for f in files:
    ds = dicomsdl.open_file(f)
    values = [ds.getValue(t) if hasattr(ds, 'getValue') else ds[t] for t in tags]
print(time.process_time() - start)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dicomsdl-python", type=Path)
    args = parser.parse_args(argv)
    import pydicom

    from adapter.dicom.header import read_header
    from adapter.dicom.models import InstanceHeader

    files = sorted(p for p in args.data.rglob("*") if p.is_file())
    zone = ZoneInfo("UTC")

    def fast() -> None:
        for path in files:
            result = read_header(path, default_tz=zone)
            assert isinstance(result, InstanceHeader) and not result.deferred

    def slow() -> None:
        for path in files:
            assert isinstance(read_header(path, default_tz=zone, fast=False), InstanceHeader)

    def bare() -> None:
        for path in files:
            _ = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID

    def timed(run: object) -> float:
        start = time.process_time()  # CPU seconds: robust to other load on a shared machine
        run()  # type: ignore[operator]
        return time.process_time() - start

    def dicomsdl() -> float:
        done = subprocess.run(
            [str(args.dicomsdl_python), "-c", DICOMSDL_LOOP, str(args.data)],
            capture_output=True,
            text=True,
            check=True,
        )
        return float(done.stdout.strip())

    tools: dict[str, object] = {
        "rtplan fast path (`read_header`)": fast,
        "rtplan pydicom path (`read_header(fast=False)`)": slow,
        "bare `dcmread(stop_before_pixels=True)`": bare,
    }
    seconds: dict[str, list[float]] = {name: [] for name in tools}
    if args.dicomsdl_python:
        seconds["dicomsdl 0.109.4 `open_file` + 8 values (subprocess)"] = []
    load = os.getloadavg()[0]
    for rnd in range(args.rounds):
        names = list(seconds) if rnd % 2 == 0 else list(reversed(seconds))
        for name in names:
            run = tools.get(name)
            seconds[name].append(timed(run) if run is not None else dicomsdl())
    base = statistics.median(seconds["bare `dcmread(stop_before_pixels=True)`"])
    print(
        f"{len(files)} files, {args.rounds} rounds (alternating order), one process; "
        f"load average {load:.2f} -> {os.getloadavg()[0]:.2f}\n"
    )
    print("| reader | median CPU s | files per CPU s | min-max CPU s | / bare dcmread |")
    print("|---|---:|---:|---:|---:|")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(
            f"| {name} | {median:.3f} | {len(files) / median:,.0f} | "
            f"{min(values):.3f}-{max(values):.3f} | {base / median:.2f} |"
        )
    print(json.dumps({k: [round(v, 4) for v in vals] for k, vals in seconds.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
