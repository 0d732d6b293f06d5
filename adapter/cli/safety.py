"""Patient-safety commands: identity holds, the audit trail and reconciliation.

    rtplan identity list [--all]                      open identity holds (ids, reasons)
    rtplan identity show ID                           one hold: recorded vs incoming patient (PHI)
    rtplan identity resolve ID --keep|--replace --by NAME --reason TEXT
    rtplan audit --study UID [--json|--fhir]          one study's story, oldest first
    rtplan audit --verify                             check the audit trail's hash chain
    rtplan reconcile [--since DATE] [--json]          everything still open; exit 1 if overdue

Each reads the store named by the settings (``outbox.path``), or the one embedded in an
``--out`` folder, as the other store-reading commands do.
"""

from __future__ import annotations

import argparse
import getpass
import json
import time
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from adapter.errors import ConfigError

if TYPE_CHECKING:
    from adapter.config import Settings
    from adapter.store.audit import AuditRecord
    from adapter.store.protocol import Store

EXIT_OK, EXIT_OPEN, EXIT_USAGE = 0, 1, 2
JSON = dict[str, Any]


def operator() -> str:
    """Who runs a command, for the audit trail (the login name of the process)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown-operator"


def _store_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, help="output folder whose embedded store to read")


def add_safety_parsers(commands: Any) -> None:
    identity = commands.add_parser("identity", help="studies held because the patient disagrees")
    actions = identity.add_subparsers(dest="identity_command", required=True)
    listing = actions.add_parser("list", help="open identity holds")
    listing.add_argument("--all", action="store_true", help="resolved holds too")
    _store_arg(listing)
    show = actions.add_parser("show", help="one hold: recorded and incoming patient (PHI)")
    show.add_argument("id", type=int)
    _store_arg(show)
    resolve = actions.add_parser("resolve", help="close a hold (audited)")
    resolve.add_argument("id", type=int)
    choice = resolve.add_mutually_exclusive_group(required=True)
    choice.add_argument("--keep", action="store_true", help="the recorded patient stands")
    choice.add_argument(
        "--replace", action="store_true", help="the incoming patient is right: send the held data"
    )
    resolve.add_argument("--by", required=True, help="who decided (name or staff id)")
    resolve.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    _store_arg(resolve)

    audit = commands.add_parser("audit", help="the audit trail of one study")
    what = audit.add_mutually_exclusive_group(required=True)
    what.add_argument("--study", metavar="UID", help="Study Instance UID")
    what.add_argument("--verify", action="store_true", help="check the hash chain")
    audit.add_argument("--json", action="store_true", help="JSON lines instead of text")
    audit.add_argument(
        "--fhir", action="store_true", help="a Bundle of FHIR AuditEvents (IHE BALP) instead"
    )
    _store_arg(audit)

    reconcile = commands.add_parser("reconcile", help="everything open; exit 1 if overdue")
    reconcile.add_argument("--since", type=_date, help="only items since DATE (YYYY-MM-DD)")
    reconcile.add_argument("--json", action="store_true", help="print JSON")
    _store_arg(reconcile)


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def run_safety_command(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from adapter.store.location import open_existing  # per command: start-up time

    with open_existing(settings, args.out) as outbox:
        if args.command == "audit":
            return _audit(outbox, args, settings, out)
        if args.command == "reconcile":
            return _reconcile(outbox, args, out)
        return _identity(outbox, args, settings, out)


def _identity(outbox: Store, args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from adapter.store.identity import IDENTITY_KEYWORDS, Resolution, ResolveError

    command = args.identity_command
    if command == "list":
        holds = outbox.identity_holds(open_only=not args.all)
        for hold in holds:
            state = "OPEN" if hold.open else f"resolved ({hold.resolution} by {hold.resolved_by})"
            line = (
                f"hold {hold.id} study {hold.study_uid} since {hold.since} {state}: {hold.reason}"
            )
            print(line, file=out)
        print(f"{sum(1 for h in holds if h.open)} open identity hold(s)", file=out)
        return EXIT_OK
    found = [h for h in outbox.identity_holds() if h.id == args.id]
    if not found:
        raise ConfigError("id", f"no identity hold {args.id}")
    hold = found[0]
    if command == "show":
        recorded = outbox.study(hold.study_uid)
        print(f"hold {hold.id} study {hold.study_uid}: {hold.reason}", file=out)
        print(f"{'':<18} {'recorded':<30} incoming", file=out)
        for index, keyword in enumerate(IDENTITY_KEYWORDS):
            old = recorded.identity[index] if recorded else "(none recorded)"
            print(f"{keyword:<18} {old:<30} {hold.incoming.identity[index]}", file=out)
        print(f"{len(hold.rows)} held row(s) would be sent by --replace", file=out)
        return EXIT_OK
    resolution = Resolution.REPLACE if args.replace else Resolution.KEEP
    try:
        released = outbox.resolve_identity(hold.id, resolution, by=args.by, note=args.reason)
    except ResolveError as exc:
        raise ConfigError("identity resolve", str(exc)) from None
    outbox.audit(
        "operator-command",
        outcome="success",
        actor=operator(),
        study_uid=hold.study_uid,
        detail=f"identity resolve {hold.id} --{resolution.value} --by given",
    )
    print(f"hold {hold.id} resolved ({resolution.value}) by {args.by}", file=out)
    if not released:
        return EXIT_OK
    import asyncio

    from adapter.jobs.deliver import deliver  # lazy for start-up time (the delivery stack)

    report = asyncio.run(deliver(outbox, settings, ids=released))
    print(f"delivered {report.delivered}, gave up {report.dead}, held {report.held}", file=out)
    return EXIT_OK if report.dead == 0 and report.held == 0 else EXIT_OPEN


def _audit_events(outbox: Store, records: list[AuditRecord], settings: Settings) -> JSON:
    from adapter.safety.audit_event import audit_bundle, audit_event
    from adapter.tables import load_tables

    tables = load_tables(settings.mappings_dir)
    systems = tables.conceptmap("identifier-systems")
    events = []
    for record in records:
        study = outbox.study(record.study_uid) if record.study_uid else None
        coding = systems.first(study.patient_issuer) if study is not None else None
        event = audit_event(record, study, tables, coding.code if coding else "")
        events.append((record, event))
    return audit_bundle(events)


def _audit(outbox: Store, args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    if args.verify:
        broken = outbox.verify_audit()
        count = len(outbox.audit_records())
        if broken is None:
            print(f"audit trail intact: {count} records", file=out)
            return EXIT_OK
        print(f"audit trail BROKEN at record {broken} (of {count})", file=out)
        return EXIT_OPEN
    records = outbox.audit_records(args.study)
    if args.fhir and records:
        json.dump(_audit_events(outbox, records, settings), out, indent=2, ensure_ascii=False)
        out.write("\n")
        return EXIT_OK
    for record in records:
        if args.json:
            print(json.dumps(record.to_json(), ensure_ascii=False), file=out)
            continue
        row = f" row {record.row_id}" if record.row_id is not None else ""
        print(
            f"{record.when} {record.event:<18} {record.outcome:<14} by {record.actor}{row}: "
            f"{record.detail}",
            file=out,
        )
    if not records:
        print(f"no audit records for study {args.study}", file=out)
        return EXIT_OPEN
    return EXIT_OK


def _reconcile(outbox: Store, args: argparse.Namespace, out: TextIO) -> int:
    from adapter.safety.reconcile import lines, reconcile

    items = reconcile(outbox, now=time.time(), since=args.since)
    overdue = sum(1 for item in items if item.overdue)
    if args.json:
        document = {
            "open": len(items),
            "overdue": overdue,
            "identity_holds_open": sum(1 for i in items if i.kind == "identity"),
            "items": [item.to_json() for item in items],
        }
        json.dump(document, out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        for line in lines(items):
            print(line, file=out)
        print(f"{len(items)} open item(s), {overdue} overdue", file=out)
    return EXIT_OPEN if overdue else EXIT_OK
