"""``rtplan review ...``: thin commands over :mod:`adapter.review.service`.

    rtplan review submit FILE|- [--out DIR] [--fhir-url URL] [--json]
    rtplan review preview FILE|- [--out DIR] [--fhir-url URL]

Exit status: 0 written and delivered (or this version was already accepted with the same
content: nothing sent); 1 written but some delivery gave up or is held (``rtplan outbox
dead``); 2 invalid review, unknown study, a version not newer than the accepted one, bad usage
or settings. Error messages name fields, never their values.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any, TextIO

from adapter.config import Settings, validate_settings
from adapter.errors import ConfigError
from adapter.jsoninput import read_json

EXIT_OK, EXIT_NOT_DONE, EXIT_USAGE = 0, 1, 2


def add_review_parser(commands: Any) -> None:
    parser = commands.add_parser("review", help="submit or preview an oncologist review")
    actions = parser.add_subparsers(dest="review_command", required=True)
    submit = actions.add_parser("submit", help="validate, write and deliver a review (JSON)")
    preview = actions.add_parser("preview", help="print the FHIR resources; sends nothing")
    for action in (submit, preview):
        action.add_argument("file", help="review JSON file, or - for stdin")
        action.add_argument("--out", type=Path, help="output folder (the embedded default sink)")
        action.add_argument("--fhir-url", help="FHIR server base URL (overrides fhir.base_url)")
    submit.add_argument("--json", action="store_true", help="print a JSON summary to stdout")


def _read(name: str) -> object:
    return read_json(name, "file")


def run_review_command(
    args: argparse.Namespace, settings: Settings, out: TextIO | None = None
) -> int:
    """Run ``rtplan review``; AdapterError propagates to the CLI (exit 2)."""
    # Lazy (downward) for start-up time only: the review stack loads hl7apy and httpx.
    from adapter.jobs.review import submit_review
    from adapter.mapping.review_input import ReviewError
    from adapter.review.service import preview_review

    out = out or sys.stdout
    if args.fhir_url:
        settings = replace(settings, fhir=replace(settings.fhir, base_url=args.fhir_url))
        validate_settings(settings)  # https only, as for the settings file
    data = _read(args.file)
    if not isinstance(data, dict):
        raise ReviewError([("", "a review must be a JSON object")])
    if args.review_command == "preview":
        output = preview_review(data, settings, out_dir=args.out)
        document: dict[str, Any] = {"bundle": output.bundle}
        if output.hl7_cancels:
            document["hl7_cancel"] = list(output.hl7_cancels)
        json.dump(document, out, ensure_ascii=False, indent=2)
        out.write("\n")
        return EXIT_OK
    if args.out is None and not settings.fhir.base_url:
        raise ConfigError(
            "--out", "give an output folder (--out DIR) or a FHIR server (--fhir-url)"
        )
    result = submit_review(data, settings, out_dir=args.out)
    if result.unchanged:
        if args.json:
            json.dump({"version": result.version, "unchanged": True, "rows": []}, out, indent=2)
            out.write("\n")
        else:
            print(
                f"review version {result.version} was already accepted with the same content: "
                "nothing sent.",
                file=out,
            )
        return EXIT_OK
    delivery = result.delivery
    ok = delivery is not None and delivery.dead == 0 and delivery.held == 0
    summary = {
        "review_id_hash": result.bundle["entry"][0]["fullUrl"],
        "version": result.version,
        "resources": [e["resource"]["resourceType"] for e in result.bundle["entry"]],
        "radiology_request": bool(result.placer_order_number),
        "rows": list(result.row_ids),
        "hl7_rows": list(result.hl7_rows),
        "delivered": delivery.delivered if delivery else 0,
        "dead": delivery.dead if delivery else 0,
        "held": delivery.held if delivery else 0,
    }
    if args.json:
        json.dump(summary, out, indent=2)
        out.write("\n")
    else:
        print(f"review version {result.version}: {', '.join(summary['resources'])}", file=out)
        print(
            f"delivery: {summary['delivered']} delivered, {summary['dead']} gave up, "
            f"{summary['held']} held (see 'rtplan outbox dead').",
            file=out,
        )
        if result.hl7_rows:
            print(
                f"{len(result.hl7_rows)} HL7 order message(s) for radiology (rows "
                f"{', '.join(map(str, result.hl7_rows))}; 'rtplan outbox show ID').",
                file=out,
            )
        if args.out is not None:
            print(f"Bundles: {args.out / 'fhir'}", file=out)
        for alert in delivery.alerts if delivery else []:
            print(f"ALERT {alert}", file=out)
    return EXIT_OK if ok else EXIT_NOT_DONE
