"""``rtplan``: a thin command line over the library.

Exit status: 0 everything was mapped (a study that is not a planning scan and is held by
policy counts as handled); 1 some input was not mapped (see the report); 2 bad usage,
settings or mapping tables.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from adapter.config import Settings, load_settings
from adapter.errors import AdapterError
from adapter.mapping.tables import Tables, load_tables
from adapter.service.ingest import IngestResult, Status, run_ingest
from adapter.service.output import write_output

EXIT_OK, EXIT_NOT_MAPPED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtplan",
        description="Radiotherapy planning-scan adapter: DICOM planning scans to labelled FHIR.",
    )
    parser.add_argument("--config", type=Path, help="settings file (YAML); env RTPLAN_* overrides")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser("ingest", help="map DICOM folders/files into an output folder")
    ingest.add_argument("paths", nargs="+", type=Path, help="files, folders, .zip or .tar")
    ingest.add_argument("--out", type=Path, required=True, help="output folder")
    ingest.add_argument("--json", action="store_true", help="print a JSON summary to stdout")

    mapping = commands.add_parser("map", help="print the Bundle(s) for PATH; writes nothing")
    mapping.add_argument("paths", nargs="+", type=Path)

    tables = commands.add_parser("mappings", help="work with the mapping tables")
    table_commands = tables.add_subparsers(dest="mappings_command", required=True)
    check = table_commands.add_parser("check", help="validate tables; list codes to verify")
    check.add_argument("folder", nargs="?", type=Path, help="default: the configured folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Libraries that can print values they parse (pydicom) or URLs that carry identifiers
    # (httpx logs each request at INFO) stay quiet whatever our own level is.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    try:
        settings = load_settings(args.config)
        if args.command == "mappings":
            return _mappings_check(args.folder or settings.mappings_dir, sys.stdout)
        tables = load_tables(settings.mappings_dir)
        if args.command == "ingest":
            return _ingest(args, settings, tables)
        return _map(args, settings, tables)
    except AdapterError as exc:
        print(f"rtplan: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _progress_printer(stream: TextIO) -> Any:
    if not stream.isatty():
        return None

    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // total if total else width
        stream.write(f"\rreading [{'#' * filled}{'.' * (width - filled)}] {done}/{total} files")
        if done >= total:
            stream.write("\n")
        stream.flush()

    return show


def _ingest(args: argparse.Namespace, settings: Settings, tables: Tables) -> int:
    started = time.perf_counter()
    result = run_ingest(args.paths, settings, tables, progress=_progress_printer(sys.stderr))
    report = write_output(result, args.out)
    seconds = round(time.perf_counter() - started, 3)
    if args.json:
        document = {"out": str(args.out), **report["summary"], "seconds": seconds}
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_human(result, args.out, report)
    return EXIT_OK if result.everything_mapped else EXIT_NOT_MAPPED


def _print_human(result: IngestResult, out: Path, report: dict[str, Any]) -> None:
    for study, entry in zip(result.studies, report["studies"], strict=True):
        print(f"study {study.study_uid}")
        print(f"  {study.status.value}, {study.instances} instances")
        label = "planning scan" if study.classification.is_planning else "NOT a planning scan"
        print(f"  {label}: {study.classification.summary}")
        for problem in study.completeness.problems:
            print(f"  incomplete: {problem}")
        if study.problem and study.status is Status.FAILED:
            print(f"  failed: {study.problem}")
        if "output" in entry:
            print(f"  -> {out / entry['output']}")
    for rejection in result.rejections:
        print(f"{rejection.kind.value}: {rejection.path}: {rejection.reason}")
    counts = report["summary"]
    print(
        f"{counts['files']} files, {counts['studies']} studies: {counts['mapped']} mapped, "
        f"{counts['held_not_planning']} not planning (held), "
        f"{counts['held_incomplete']} incomplete (held), {counts['failed']} failed, "
        f"{counts['quarantined']} quarantined, {counts['not_dicom']} not DICOM. "
        f"Report: {out / 'report.json'}"
    )


def _map(args: argparse.Namespace, settings: Settings, tables: Tables) -> int:
    result = run_ingest(args.paths, settings, tables)
    bundles = [s.bundle for s in result.studies if s.bundle is not None]
    document: object = bundles[0] if len(bundles) == 1 else bundles
    json.dump(document, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    for study in result.studies:
        print(
            f"study {study.key}: {study.status.value}: {study.classification.summary}",
            file=sys.stderr,
        )
    for rejection in result.rejections:
        print(f"{rejection.kind.value}: {rejection.path}: {rejection.reason}", file=sys.stderr)
    return EXIT_OK if result.everything_mapped else EXIT_NOT_MAPPED


def _mappings_check(folder: Path, out: TextIO) -> int:
    tables = load_tables(folder)
    names = sorted([*tables.conceptmaps, *tables.labels, *tables.rules])
    print(f"{folder}: {len(names)} tables valid ({', '.join(names)})", file=out)
    if tables.verify_flags:
        print(f"{len(tables.verify_flags)} codes are flagged verify: true:", file=out)
        for flag in tables.verify_flags:
            c = flag.coding
            print(f"  {flag.file} {flag.row}: {c.system}|{c.code} {c.display!r}", file=out)
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
