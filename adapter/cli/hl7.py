"""``rtplan serve``, ``rtplan escalations`` and ``rtplan hl7 preview``: thin shells."""

from __future__ import annotations

import argparse
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from adapter.config import Settings, validate_settings
from adapter.errors import ConfigError
from adapter.jsoninput import read_json


def add_hl7_parsers(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the listener, the outbox worker and escalations")
    serve.add_argument("--out", type=Path, help="output folder (embedded default sinks)")
    serve.add_argument("--port", type=int, help="MLLP listen port (overrides hl7.listen_port)")
    # ``rtplan serve --config FILE`` as well as ``rtplan --config FILE serve``.
    serve.add_argument("--config", type=Path, default=argparse.SUPPRESS, help="settings file")
    escalations = commands.add_parser("escalations", help="list fired escalations and open timers")
    escalations.add_argument("--db", type=Path, help="outbox file (default: outbox.path setting)")
    hl7 = commands.add_parser("hl7", help="HL7 v2 orders")
    actions = hl7.add_subparsers(dest="hl7_command", required=True)
    preview = actions.add_parser("preview", help="print the order a review would send")
    preview.add_argument("review", help="review JSON file, or - for stdin")
    preview.add_argument("--out", type=Path, help="output folder whose outbox knows the study")
    preview.add_argument("--receiver", help="receiver profile (overrides hl7.receiver)")


def run_hl7_command(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    if args.command == "serve":
        # Lazy (downward) for start-up time only: the service loads hl7apy, httpx, FastAPI.
        import asyncio

        from adapter.service.logs import configure_service_logging
        from adapter.service.parts import any_part_on
        from adapter.service.serve import serve

        if args.port is not None:
            settings = replace(settings, hl7=replace(settings.hl7, listen_port=args.port))
            try:
                validate_settings(settings)
            except ConfigError as exc:
                raise ConfigError("--port", exc.problem) from None
        if not any_part_on(settings):
            raise ConfigError(
                "serve",
                "every part is off (serve.mllp_listener, serve.delivery, dicom.listen_port, "
                "http.listen_port)",
            )
        # Only a service that will run takes over the process's logging: a usage error does not.
        configure_service_logging(settings.log)
        asyncio.run(serve(settings, args.out))
        return 0
    if args.command == "escalations":
        return _escalations(args, settings, out)
    if args.receiver:
        settings = replace(settings, hl7=replace(settings.hl7, receiver=args.receiver))
    return _preview(args, settings, out)


def _escalations(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from adapter.store.location import open_existing  # per command: start-up time

    with open_existing(settings, None, args.db) as outbox:
        timers = outbox.timers()
        for timer in timers.fired():
            when = datetime.fromtimestamp(timer.fired_at or 0, UTC).isoformat(timespec="seconds")
            print(f"FIRED {when} {timer.kind:<8} order {timer.key}: {timer.detail}", file=out)
        for timer in timers.open():
            due = datetime.fromtimestamp(timer.due_at, UTC).isoformat(timespec="seconds")
            print(f"open  due {due} {timer.kind:<8} order {timer.key}: {timer.detail}", file=out)
    return 0


def _preview(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    from adapter.review.service import preview_orders  # lazy for start-up time: hl7apy

    data: Any = read_json(args.review, "review")
    messages = preview_orders(data, settings, out_dir=args.out)
    if not messages:
        print("this review sends no HL7 order (no concern raised or withdrawn)", file=out)
    for message in messages:
        print(message, file=out)
    return 0
