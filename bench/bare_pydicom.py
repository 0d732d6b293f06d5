"""Baseline for the ingest benchmark: a bare ``pydicom.dcmread(stop_before_pixels=True)`` loop.

Run in the project venv::

    .venv/bin/python bench/bare_pydicom.py DATA_DIR

Reads every regular file under DATA_DIR (recursively, sorted) and touches nothing else:
no grouping, no mapping, no output. This is the floor that ``rtplan ingest`` is measured
against. Prints one JSON line: {"instances": n, "seconds": s, "peak_rss_mb": m}
(``seconds`` = the loop inside this process, imports excluded).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import pydicom


def read_all(data: Path) -> int:
    count = 0
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        _ = ds.SOPInstanceUID  # make sure the header really was parsed
        count += 1
    return count


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder of DICOM files")
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"not a folder: {args.data}")
    start = time.perf_counter()
    instances = read_all(args.data)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(
        json.dumps(
            {"instances": instances, "seconds": round(seconds, 4), "peak_rss_mb": round(peak, 1)}
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
