"""Exit benchmark: how long an ``rtplan ingest`` process takes to end after its work is done.

Run in the project venv from the repository root::

    .venv/bin/python bench/exit_bench.py bench/.work/small-1000/dicom --repeats 5

Two ways to end the same command, alternating: ``main()`` then ``sys.exit`` (what the
executable did before issue 16), and ``run()`` (the executable now: ``main()``, then the heap
frozen with ``gc.freeze`` so that the interpreter's final collections skip it). Each run prints
a timestamp when ``main`` has returned; the figure is the time from it to the end of the
process as ``os.wait4`` sees it (atexit handlers, module teardown, freeing). Writes Markdown to
stdout.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAMP = "import os, time; os.write(2, f'RETURNED {time.time():.6f}\\n'.encode())\n"
ENDINGS = {
    "`main()`, then exit (before)": (
        "import sys\nfrom adapter.cli.main import main\ncode = main(sys.argv[1:])\n"
        + STAMP
        + "sys.exit(code)\n"
    ),
    "`run()`: `main()`, `gc.freeze()`, exit (the executable now)": (
        "import gc, sys\nfrom adapter.cli.main import main\ncode = main(sys.argv[1:])\n"
        + STAMP
        + "gc.freeze()\nsys.exit(code)\n"
    ),
}


def after_main(code: str, data: Path, out: Path) -> float:
    """Seconds from ``main``'s return to the end of the process."""
    shutil.rmtree(out, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RTPLAN_")}
    with tempfile.TemporaryFile() as stdout, tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "ingest", str(data), "--out", str(out), "--json"],
            stdout=stdout,
            stderr=stderr,
            cwd=ROOT,
            env=env,
        )
        _, status, _ = os.wait4(proc.pid, 0)
        ended = time.time()
        stderr.seek(0)
        text = stderr.read().decode("utf-8", "replace")
    if os.waitstatus_to_exitcode(status) != 0 or "RETURNED " not in text:
        raise SystemExit(f"rtplan ingest failed: {text[-500:]}")
    return ended - float(text.split("RETURNED ")[1].split()[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="DICOM folder to ingest")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    samples: dict[str, list[float]] = {name: [] for name in ENDINGS}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.repeats):
            order = list(ENDINGS.items())
            for name, code in order if round_ % 2 == 0 else reversed(order):
                samples[name].append(after_main(code, args.data, Path(folder) / "out"))
    print("# Exit benchmark\n")
    print(
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by `bench/exit_bench.py {args.data} "
        f"--repeats {args.repeats}`; 1-minute load average {load:.2f} at the start, "
        f"{os.getloadavg()[0]:.2f} at the end. Seconds from `main`'s return to the end of "
        "the process.\n"
    )
    print("| ending | median s | min s | max s |")
    print("|---|---:|---:|---:|")
    for name, values in samples.items():
        print(
            f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} | "
            f"{max(values):.3f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
