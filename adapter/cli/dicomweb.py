"""The ``--dicomweb`` options of ``rtplan ingest`` and their run.

Importing this module stays light (``adapter.cli`` imports it for every command): httpx and
pydicom are imported only when a back-load runs."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any, TextIO

from adapter.errors import ConfigError

if TYPE_CHECKING:
    from adapter.config import Settings
    from adapter.dicomweb.backload import Backload
    from adapter.fhir.client import FhirClient
    from adapter.tables import Tables

EXIT_OK, EXIT_NOT_DONE = 0, 1


def add_dicomweb_arguments(ingest: Any) -> None:
    group = ingest.add_argument_group("DICOMweb source (instead of PATHS)")
    group.add_argument("--dicomweb", metavar="URL", help="DICOMweb service base URL")
    group.add_argument("--study", metavar="UID", help="only this study (read again if done)")
    group.add_argument("--since", metavar="DATE", help="studies on or after DATE (YYYY-MM-DD)")
    group.add_argument(
        "--rate", type=float, default=0.0, metavar="N", help="at most N requests a second"
    )


def check_dicomweb_arguments(args: argparse.Namespace) -> None:
    """Refuse a bad ``--dicomweb`` combination before anything is read."""
    if not args.dicomweb:
        raise ConfigError("ingest", "give PATHS, or --dicomweb URL")
    if args.paths:
        raise ConfigError("--dicomweb", "give PATHS or --dicomweb URL, not both")
    if not args.dicomweb.startswith(("http://", "https://")):
        raise ConfigError("--dicomweb", "must be an http(s) URL")
    if args.study and args.since:
        raise ConfigError("--study", "give --study or --since, not both")
    if args.rate < 0:
        raise ConfigError("--rate", "must be 0 (no limit) or more")


async def run_dicomweb_ingest(
    args: argparse.Namespace,
    settings: Settings,
    tables: Tables,
    fhir: FhirClient | None,
    out: TextIO,
    err: TextIO,
) -> int:
    """The back-load, in the command's event loop with its FHIR client (see ``_ingest``)."""
    from adapter.dicomweb.backload import qido_date  # httpx, pydicom: a back-load only
    from adapter.jobs.output import add_to_report, summary, write_report

    since = qido_date(args.since) if args.since else ""
    done = await _run(args, settings, tables, since, err, fhir)
    result = done.result()
    report = write_report(result, args.out) if args.out else {"summary": summary(result)}
    if args.out and done.labels:
        add_to_report(report, done.labels, args.out)
    document = {
        **report["summary"],
        "studies_found": done.found,
        "studies_already_done": done.skipped,
        "studies_incomplete_at_archive": done.incomplete,
        "delivery": {"delivered": done.delivered, "dead": done.dead, "held": done.held},
    }
    if args.json:
        json.dump(document, out, indent=2)
        out.write("\n")
    else:
        print(
            f"{done.found} studies found, {done.skipped} already done, "
            f"{done.incomplete} incomplete at the archive (not read), "
            f"{len(done.studies)} read: {document['mapped']} mapped, "
            f"{document['held_not_planning']} not planning (held), "
            f"{document['held_incomplete']} incomplete (held), {document['failed']} failed. "
            f"Delivery: {done.delivered} delivered, {done.dead} gave up, {done.held} held.",
            file=out,
        )
    ok = result.everything_mapped and done.dead == 0 and done.held == 0 and not done.incomplete
    return EXIT_OK if ok else EXIT_NOT_DONE


async def _run(
    args: argparse.Namespace,
    settings: Settings,
    tables: Tables,
    since: str,
    err: TextIO,
    fhir: FhirClient | None,
) -> Backload:
    from adapter.dicomweb.backload import backload  # httpx, pydicom: a back-load only
    from adapter.dicomweb.client import DicomWebSource
    from adapter.store.location import open_outbox

    async with DicomWebSource(args.dicomweb, rate=args.rate) as source:
        with open_outbox(settings, args.out) as outbox:
            return await backload(
                source,
                settings,
                tables,
                outbox,
                args.out,
                since=since,
                study=args.study or "",
                progress=err,
                fhir=fhir,
            )
