"""``rtplan outbox ...``: see, fix and resend what the adapter owes its peers.

    rtplan outbox list [--state STATE]    every row, oldest first
    rtplan outbox show ID [--payload]     one row, its history (and its payload)
    rtplan outbox dead                    dead letters and held keys, with reasons
    rtplan outbox retry ID                send a dead or waiting row again now
    rtplan outbox replay ID [--payload F] a fresh copy of a row (optionally a corrected payload)
    rtplan outbox run [--forever]         deliver everything that is due

Listings show row ids, labels (hashed study keys), states and reasons: no patient data.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from adapter.cli.safety import operator
from adapter.errors import ConfigError
from adapter.jsoninput import read_json

if TYPE_CHECKING:
    from adapter.config import Settings
    from adapter.store.outbox import Row
    from adapter.store.protocol import Store

# ``adapter.store.outbox.State``'s values, spelled out so that building the parser of every
# command does not import the store (start-up time; tests/unit/test_cli_startup.py keeps the
# two equal).
ROW_STATES = ("pending", "in_flight", "retrying", "delivered", "dead")


def add_outbox_parser(commands: Any) -> None:
    parser = commands.add_parser("outbox", help="see, fix and resend queued deliveries")
    parser.add_argument("--db", type=Path, help="outbox file (default: outbox.path setting)")
    actions = parser.add_subparsers(dest="outbox_command", required=True)
    listing = actions.add_parser("list", help="list rows")
    listing.add_argument("--state", choices=ROW_STATES)
    show = actions.add_parser("show", help="show one row and its history")
    show.add_argument("id", type=int)
    show.add_argument("--payload", action="store_true", help="also print the payload (PHI)")
    actions.add_parser("dead", help="dead letters and held keys")
    retry = actions.add_parser("retry", help="send a dead or waiting row again now")
    retry.add_argument("id", type=int)
    replay = actions.add_parser("replay", help="enqueue a fresh copy of a row and send it")
    replay.add_argument("id", type=int)
    replay.add_argument("--payload", type=Path, help="a corrected payload (JSON file)")
    run = actions.add_parser("run", help="deliver everything that is due")
    run.add_argument("--forever", action="store_true", help="keep polling for new rows")


def run_outbox_command(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    import asyncio

    from adapter.jobs import payload_codecs  # noqa: F401  (replay reads every kind)
    from adapter.jobs.deliver import deliver  # lazy for start-up time (the delivery stack)
    from adapter.store import payloads
    from adapter.store.location import open_existing
    from adapter.store.outbox import State

    with open_existing(settings, None, args.db) as outbox:
        command = args.outbox_command
        if command == "list":
            state = State(args.state) if args.state else None
            for row in outbox.rows(state=state):
                print(_line(row), file=out)
            print(_counts(outbox.counts()), file=out)
            return 0
        if command == "show":
            return _show(outbox, args.id, args.payload, out)
        if command == "dead":
            for row in outbox.rows(state=State.DEAD):
                print(_line(row), file=out)
            for hold in outbox.holds():
                print(f"held key {hold.destination} {hold.key}: {hold.reason}", file=out)
            return 0
        ids: list[int] | None = None
        payload = None
        if command in ("retry", "replay"):
            row = _existing(outbox, args.id)
            if command == "replay" and args.payload:
                # Refused (one line naming the kind and field, exit 2) before the audit
                # records the command as done and before any hold is lifted.
                payload = _read_payload(args.payload)
                payloads.encode(row.kind, payload)
            if command == "retry" and row.state in (State.DELIVERED, State.IN_FLIGHT):
                # Refused before the audit records the command as done (issue 8).
                raise ConfigError(
                    "id", f"row {row.id} is {row.state.value}; only dead or waiting rows retry"
                )
            outbox.audit(
                "operator-command",
                outcome="success",
                actor=operator(),
                study_uid=row.key.removeprefix("study:") if row.key.startswith("study:") else "",
                detail=f"outbox {command} {args.id}",
            )
        if command == "retry":
            row = _existing(outbox, args.id)
            ids = [row.id]
            outbox.retry(args.id)
        elif command == "replay":
            row = _existing(outbox, args.id)
            if row.destination == "hl7":  # a new transmission: new MSH-10, same placer number
                from adapter.hl7.replay import replay_hl7  # lazy for start-up time: hl7apy

                ids = [replay_hl7(outbox, row, settings, payload)]
            else:
                ids = [outbox.replay(args.id, payload)]
            print(f"replayed row {args.id} as row {ids[0]}", file=out)
        report = asyncio.run(
            deliver(outbox, settings, ids=ids, forever=args.__dict__.get("forever", False))
        )
        print(f"delivered {report.delivered}, gave up {report.dead}, held {report.held}", file=out)
        if ids is not None:
            for row_id in ids:
                print(_line(outbox.get(row_id)), file=out)
        return 0 if report.dead == 0 and report.held == 0 else 1


def _existing(outbox: Store, row_id: int) -> Row:
    try:
        return outbox.get(row_id)
    except KeyError:
        raise ConfigError("id", f"no outbox row {row_id}") from None


def _read_payload(path: Path) -> dict[str, Any]:
    payload = read_json(str(path), "--payload")
    if not isinstance(payload, dict):
        raise ConfigError("--payload", f"{path}: must hold one JSON object")
    return payload


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def _line(row: Row) -> str:
    error = f"  {row.last_error[:160]}" if row.last_error else ""
    return (
        f"{row.id:>6} {row.state.value:<9} attempts={row.attempts:<2} {row.destination:<5} "
        f"{row.label}{error}"
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in counts.items())


def _show(outbox: Store, row_id: int, with_payload: bool, out: TextIO) -> int:
    from adapter.store.outbox import State

    row = _existing(outbox, row_id)
    print(_line(row), file=out)
    print(f"  destination {row.destination} -> {row.target}", file=out)
    print(
        f"  kind {row.kind}, created {_when(row.created_at)}, updated {_when(row.updated_at)}",
        file=out,
    )
    if row.state in (State.PENDING, State.RETRYING):
        print(f"  next attempt {_when(row.next_attempt_at)}", file=out)
    if row.result is not None:
        print(f"  result {json.dumps(row.result)[:2000]}", file=out)
    for at, event, detail in outbox.events(row.id):
        print(f"  {_when(at)} {event} {detail}".rstrip(), file=out)
    if with_payload:
        json.dump(row.payload, out, ensure_ascii=False, indent=2)
        out.write("\n")
    return 0
