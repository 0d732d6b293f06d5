"""``rtplan``: a thin command line over the library.

Exit status: 0 everything was mapped and delivered (a study that is not a planning scan and is
held by policy counts as handled); 1 some input was not mapped, or some delivery gave up (see
the report and ``rtplan outbox dead``); 2 bad usage, settings or mapping tables.

Start-up: importing this module builds the parser of every command and no more; each command
imports what it runs when it runs (docs/ingest.md "Start-up", tests/unit/test_cli_startup.py).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from adapter.cli.dicomweb import add_dicomweb_arguments, check_dicomweb_arguments
from adapter.cli.hl7 import add_hl7_parsers, run_hl7_command
from adapter.cli.label import add_label_parser, run_label_command
from adapter.cli.outbox import add_outbox_parser, run_outbox_command
from adapter.cli.review import add_review_parser, run_review_command
from adapter.cli.safety import add_safety_parsers, run_safety_command
from adapter.config import Settings, load_settings, validate_settings
from adapter.errors import AdapterError, ConfigError

if TYPE_CHECKING:
    from adapter.ingest.pipeline import IngestResult
    from adapter.outbox.worker import DrainReport
    from adapter.tables import Tables

EXIT_OK, EXIT_NOT_DONE, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtplan",
        description="Radiotherapy planning-scan adapter: DICOM planning scans to labelled FHIR.",
    )
    parser.add_argument("--config", type=Path, help="settings file (YAML); env RTPLAN_* overrides")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    commands = parser.add_subparsers(dest="command", required=True)

    ingest = commands.add_parser("ingest", help="map DICOM and deliver through the outbox")
    ingest.add_argument("paths", nargs="*", type=Path, help="files, folders, .zip or .tar")
    ingest.add_argument("--out", type=Path, help="output folder (the embedded default sink)")
    ingest.add_argument("--fhir-url", help="FHIR server base URL (overrides fhir.base_url)")
    ingest.add_argument("--json", action="store_true", help="print a JSON summary to stdout")
    add_dicomweb_arguments(ingest)

    mapping = commands.add_parser("map", help="print the Bundle(s) for PATH; writes nothing")
    mapping.add_argument("paths", nargs="+", type=Path)

    tables = commands.add_parser("mappings", help="work with the mapping tables")
    table_commands = tables.add_subparsers(dest="mappings_command", required=True)
    check = table_commands.add_parser("check", help="validate tables; list codes to verify")
    check.add_argument("folder", nargs="?", type=Path, help="default: the configured folder")

    add_outbox_parser(commands)
    add_review_parser(commands)
    add_hl7_parsers(commands)
    add_label_parser(commands)
    add_safety_parsers(commands)
    return parser


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Libraries that can print values they parse (pydicom) or URLs that carry identifiers
    # (httpx logs each request at INFO) stay quiet whatever our own level is.
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    # Everything this process creates may hold patient data: owner-only, whatever the caller's
    # umask (SQLite's -wal/-shm files and temporary files included). docs/security.md.
    os.umask(0o077)
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        settings = load_settings(args.config)
        if args.command == "mappings":
            return _mappings_check(args.folder or settings.mappings_dir, sys.stdout)
        if args.command == "outbox":
            return run_outbox_command(args, settings, sys.stdout)
        if args.command == "review":
            return run_review_command(args, settings, sys.stdout)
        if args.command in ("serve", "escalations", "hl7"):
            return run_hl7_command(args, settings, sys.stdout)
        if args.command == "label":
            return run_label_command(args, settings, sys.stdout)
        if args.command in ("identity", "audit", "reconcile"):
            return run_safety_command(args, settings, sys.stdout)
        from adapter.label.titles import load_vocabulary
        from adapter.tables import load_tables

        tables = load_tables(settings.mappings_dir)
        if settings.label.enabled:
            load_vocabulary(tables)  # a rejection title is refused before anything is read
        if args.command == "ingest":
            return _ingest(args, settings, tables)
        return _map(args, settings, tables)
    except AdapterError as exc:
        print(f"rtplan: {exc}", file=sys.stderr)
        return EXIT_USAGE


def run() -> int:
    """The ``rtplan`` executable (and ``python -m adapter.cli``): :func:`main`, then a quick exit.

    The heap is frozen (``gc.freeze``) before the interpreter shuts down, so that its final
    garbage collections skip every object the command made (headers, Bundles, tables): about
    0.1-0.2 s of a 1,000-file ingest otherwise spent after the work is done (docs/ingest.md
    "Start-up"). Objects are still freed as their references go, and atexit handlers,
    finalizers and buffered output run as usual. Tests call :func:`main`, which freezes
    nothing, so a test process keeps collecting its garbage.
    """
    try:
        return main()
    finally:
        gc.freeze()


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
    import asyncio  # per command: start-up time (docs/ingest.md "Start-up")

    from adapter.private import private_dir, write_private

    if args.fhir_url:
        settings = replace(settings, fhir=replace(settings.fhir, base_url=args.fhir_url))
        validate_settings(settings)
    if args.out is None and not settings.fhir.base_url:
        raise ConfigError(
            "--out", "give an output folder (--out DIR) or a FHIR server (--fhir-url)"
        )
    if args.out is not None:  # a file, a symlink or an unwritable place: say so before reading
        private_dir(args.out)
        probe = args.out / ".rtplan-write-check"
        write_private(probe, b"")
        probe.unlink()
    if args.dicomweb or not args.paths:
        check_dicomweb_arguments(args)
    # One event loop and one FHIR client for the whole command: capabilities, the prior-imaging
    # check and delivery all go through it.
    try:
        return asyncio.run(_ingest_job(args, settings, tables))
    except KeyboardInterrupt:
        if not args.dicomweb:
            raise
        # Every study finished so far is in the store; the next run skips it.
        print("rtplan: interrupted; run the same command again to resume", file=sys.stderr)
        return EXIT_NOT_DONE


async def _ingest_job(args: argparse.Namespace, settings: Settings, tables: Tables) -> int:
    from adapter.cli.dicomweb import run_dicomweb_ingest
    from adapter.jobs.fhir import fhir_session, resolve_version
    from adapter.jobs.ingest import ingest_files
    from adapter.private import log_key

    async with fhir_session(settings) as fhir:
        settings = await resolve_version(settings, fhir)
        if args.dicomweb or not args.paths:
            return await run_dicomweb_ingest(args, settings, tables, fhir, sys.stdout, sys.stderr)
        started = time.perf_counter()
        run = await ingest_files(
            args.paths,
            settings,
            tables,
            out_dir=args.out,
            fhir=fhir,
            progress=_progress_printer(sys.stderr),
        )
    result, report, labels, delivery = run.result, run.report, run.labels, run.delivery
    labels_built = all(not outcome.problem for outcome in labels.values())
    seconds = round(time.perf_counter() - started, 3)
    delivered_all = delivery.dead == 0 and delivery.held == 0 and labels_built
    if args.json:
        document = {
            "out": str(args.out) if args.out else None,
            **report["summary"],
            "delivery": _delivery_summary(delivery),
            "pacs_labels": {
                "new": sum(1 for o in labels.values() if o.new),
                "reused": sum(1 for o in labels.values() if not o.new and not o.problem),
                "not_built": sum(1 for o in labels.values() if o.problem),
            },
            "seconds": seconds,
        }
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_human(result, args.out, report, delivery)
        for uid, outcome in labels.items():
            state = outcome.problem or f"KOS #{outcome.instance_number}" + (
                " (new)" if outcome.new else " (already built)"
            )
            print(f"PACS label {log_key(uid)}: {state}")
    return EXIT_OK if result.everything_mapped and delivered_all else EXIT_NOT_DONE


def _delivery_summary(report: DrainReport) -> dict[str, Any]:
    return {
        "delivered": report.delivered,
        "dead": report.dead,
        "held": report.held,
        "retries": report.retries,
        "alerts": report.alerts,
    }


def _print_human(
    result: IngestResult, out: Path | None, report: dict[str, Any], delivery: DrainReport
) -> None:
    from adapter.ingest.pipeline import Status
    from adapter.jobs.output import shown_path

    for study in result.studies:
        print(f"study {study.study_uid}")
        print(f"  {study.status.value}, {study.instances} instances")
        label = "planning scan" if study.classification.is_planning else "NOT a planning scan"
        print(f"  {label}: {study.classification.summary}")
        for problem in study.completeness.problems:
            print(f"  incomplete: {problem}")
        if study.problem and study.status is Status.FAILED:
            print(f"  failed: {study.problem}")
        if study.status is Status.HELD_IDENTITY:
            print(f"  HELD (patient identity): {study.problem}; see 'rtplan identity list'")
    for rejection in result.rejections:
        print(f"{rejection.kind.value}: {shown_path(rejection.path)}: {rejection.reason}")
    counts = report["summary"]
    print(
        f"{counts['files']} files, {counts['studies']} studies: {counts['mapped']} mapped, "
        f"{counts['held_not_planning']} not planning (held), "
        f"{counts['held_incomplete']} incomplete (held), "
        f"{counts['held_identity']} patient identity (held), {counts['failed']} failed, "
        f"{counts['quarantined']} quarantined, {counts['not_dicom']} not DICOM."
    )
    print(
        f"Delivery: {delivery.delivered} delivered, {delivery.dead} gave up, "
        f"{delivery.held} held (see 'rtplan outbox dead')."
    )
    for alert in delivery.alerts:
        print(f"ALERT {alert}")
    if out is not None:
        print(f"Bundles: {out / 'fhir'}  Report: {out / 'report.json'}")


def _map(args: argparse.Namespace, settings: Settings, tables: Tables) -> int:
    from adapter.ingest.pipeline import run_ingest
    from adapter.jobs.output import shown_path

    result = run_ingest(args.paths, settings, tables)
    bundles = [s.bundle for s in result.studies if s.bundle is not None]
    document: object = bundles[0] if len(bundles) == 1 else bundles
    json.dump(document, sys.stdout, ensure_ascii=False, indent=2)
    sys.stdout.write("\n")
    for study in result.studies:
        line = f"study {study.key}: {study.status.value}: {study.classification.summary}"
        print(line, file=sys.stderr)
    for rejection in result.rejections:
        shown = shown_path(rejection.path)
        print(f"{rejection.kind.value}: {shown}: {rejection.reason}", file=sys.stderr)
    return EXIT_OK if result.everything_mapped else EXIT_NOT_DONE


def _mappings_check(folder: Path, out: TextIO) -> int:
    from adapter.label.titles import LABEL_TABLE, TITLES_TABLE, load_vocabulary
    from adapter.tables import load_tables

    tables = load_tables(folder)
    if LABEL_TABLE in tables.labels or TITLES_TABLE in tables.rules:
        load_vocabulary(tables)  # the KOS title allow-list (no rejection titles)
    names = sorted([*tables.conceptmaps, *tables.labels, *tables.rules])
    print(f"{folder}: {len(names)} tables valid ({', '.join(names)})", file=out)
    if tables.verify_flags:
        print(f"{len(tables.verify_flags)} codes are flagged verify: true:", file=out)
        for flag in tables.verify_flags:
            c = flag.coding
            state = "OFF (not emitted until confirmed)" if flag.withheld else "used (identifier)"
            print(f"  {flag.file} {flag.row}: {c.system}|{c.code} {c.display!r}: {state}", file=out)
        print(
            "Confirm a code in a terminology browser, then remove its 'verify: true' to emit it.",
            file=out,
        )
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
