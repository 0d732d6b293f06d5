"""Peer converter for the ingest benchmark: dicom2fhir 0.1.25 on a folder of DICOM files.

Run INSIDE bench/.venv-dicom2fhir (created by bench/setup_peer.sh)::

    bench/.venv-dicom2fhir/bin/python bench/peer_dicom2fhir.py DATA_DIR [--out OUT_DIR]
                                      [--series-only]

It calls dicom2fhir's public API ``dicom2fhir.dicom2fhir.from_directory(folder, config)``
(async; returns a fhir.resources R4B transaction ``Bundle`` with ImagingStudy, Patient,
Device and optional Observations). ``from_directory`` walks the folder recursively, skips
files without the ``DICM`` preamble, reads each with ``dcmread(stop_before_pixels=True,
force=True)`` + ``to_json_dict()`` and builds ONE ImagingStudy from all of them (it takes
the study attributes of the first file). So a folder of several studies (``synth.py
--copies K`` writes ``OUT/<seed>-NNN/``) is converted one immediate sub-folder at a time;
a folder that holds files directly is converted as one study.

Config: ``dicom_timezone`` is required by dicom2fhir when StudyDate/StudyTime exist.
``generator.imaging_study.add_instances`` is True by default here (the adapter's
ImagingStudy lists instances too); ``--series-only`` turns it off (dicom2fhir's default).

Writes ``OUT_DIR/ImagingStudy-<id>.json`` (the ImagingStudy) per study and prints one
JSON line: {"instances": n, "seconds": s, "peak_rss_mb": m, "studies": k}. ``instances``
is the sum of numberOfInstances of the produced ImagingStudy resources; ``seconds`` is
the conversion + serialisation time inside this process (imports excluded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def study_folders(data: Path) -> list[Path]:
    """The folder itself if it holds files directly, else its immediate sub-folders."""
    if any(p.is_file() for p in data.iterdir()):
        return [data]
    return sorted(p for p in data.iterdir() if p.is_dir())


def convert(data: Path, out: Path, *, add_instances: bool) -> tuple[int, int]:
    from dicom2fhir.dicom2fhir import from_directory

    out.mkdir(parents=True, exist_ok=True)
    instances = studies = 0
    for folder in study_folders(data):
        config: dict[str, Any] = {
            "dicom_timezone": "UTC",
            "generator": {
                "imaging_study": {"add_instances": add_instances},
                "observation": {"add_vital_signs": True},
            },
        }
        bundle = asyncio.run(from_directory(str(folder), config=config))
        entries = bundle.entry or []
        study = next(
            e.resource for e in entries if e.resource.get_resource_type() == "ImagingStudy"
        )
        target = out / f"ImagingStudy-{study.id}.json"
        target.write_text(study.model_dump_json(indent=2), encoding="utf-8")
        instances += int(study.numberOfInstances or 0)
        studies += 1
    return instances, studies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="folder of DICOM files (or of study folders)")
    parser.add_argument("--out", type=Path, help="output folder (default: a temporary one)")
    parser.add_argument(
        "--series-only",
        action="store_true",
        help="do not list instances in the ImagingStudy (dicom2fhir's own default)",
    )
    args = parser.parse_args(argv)
    if not args.data.is_dir():
        parser.error(f"not a folder: {args.data}")

    import dicom2fhir.dicom2fhir  # noqa: F401  (import cost outside the timed section)

    with tempfile.TemporaryDirectory(prefix="d2f-out-") as tmp:
        out = args.out or Path(tmp)
        start = time.perf_counter()
        instances, studies = convert(args.data, out, add_instances=not args.series_only)
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    line = {
        "instances": instances,
        "seconds": round(seconds, 4),
        "peak_rss_mb": round(peak, 1),
        "studies": studies,
    }
    print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
