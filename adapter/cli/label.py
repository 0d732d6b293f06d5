"""``rtplan label ...``: see the PACS label before and after it is sent.

    rtplan label preview PATH... [--db FILE]   dump the KOS each planning study would get
    rtplan label status [--db FILE] [--study UID]   each study's label state

``preview`` writes nothing. With a store (``--db``, or the one ``store.url`` or ``outbox.path``
names) it says whether the stored KOS would be re-used or superseded; without one it shows the
first KOS of each study.
``status`` lists studies by their hashed key (as the outbox does), never patient data.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from adapter.errors import AdapterError

if TYPE_CHECKING:  # the KOS builder imports pydicom: loaded by the commands that build one
    from adapter.config import Settings
    from adapter.store.protocol import Store


def add_label_parser(commands: Any) -> None:
    parser = commands.add_parser("label", help="the planning label on the PACS (KOS)")
    actions = parser.add_subparsers(dest="label_command", required=True)
    preview = actions.add_parser("preview", help="dump the KOS each planning study would get")
    preview.add_argument("paths", nargs="+", type=Path)
    preview.add_argument("--db", type=Path, help="outbox file to compare with (optional)")
    status = actions.add_parser("status", help="each study's label state")
    status.add_argument("--db", type=Path, help="outbox file (default: outbox.path setting)")
    status.add_argument("--study", help="one Study Instance UID (shows 'none' if unlabelled)")


def run_label_command(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    # Per command, for start-up time (docs/ingest.md "Start-up"): the store, the pipeline.
    from adapter.private import log_key
    from adapter.store.labels import LabelState
    from adapter.store.location import open_existing

    if args.label_command == "preview":
        return _preview(args, settings, out)
    with open_existing(settings, None, args.db) as outbox:
        store = outbox.labels()
        studies = [args.study] if args.study else store.studies()
        counts = dict.fromkeys([s.value for s in LabelState], 0)
        for uid in studies:
            status = store.status(uid)
            counts[status.state.value] += 1
            line = f"{log_key(uid)} {status.state.value}"
            if status.current is not None:
                line += f" KOS #{status.current.instance_number}"
                if status.superseded:
                    line += f" (supersedes {status.superseded} earlier)"
            for destination, _target, row_state in status.destinations:
                line += f" {destination}:{row_state}"
            print(line, file=out)
        print(", ".join(f"{n} {state}" for state, n in counts.items()), file=out)
    return 0


def _compared_store(db: Path | None, settings: Settings) -> Store | None:
    """The store a preview compares with: ``--db``, else the one ``store.url`` or
    ``outbox.path`` names (never the per-user default), if it is there."""
    from adapter.store.location import store_exists, store_location
    from adapter.store.outbox import Outbox

    if db is None and not (settings.store.url or settings.outbox.path):
        return None
    location = store_location(settings, None, db)
    return Outbox(location) if store_exists(location) else None


def _preview(args: argparse.Namespace, settings: Settings, out: TextIO) -> int:
    # Lazy (downward) for start-up time only: the KOS builder loads pydicom.
    from pydicom import dcmread

    from adapter.ingest.pipeline import run_ingest
    from adapter.label.service import build_for, labelled
    from adapter.label.titles import load_vocabulary
    from adapter.tables import load_tables

    if not settings.label.enabled:
        print("labelling is switched off (label.enabled: false): nothing would be sent", file=out)
        return 0
    tables = load_tables(settings.mappings_dir)
    vocabulary = load_vocabulary(tables)
    result = run_ingest(args.paths, settings, tables)
    outbox = _compared_store(args.db, settings)
    now = datetime.now(UTC)
    problems = 0
    try:
        for outcome in result.studies:
            head = f"study {outcome.key}: {outcome.status.value}"
            if not labelled(outcome):
                print(f"{head}: no KOS (only mapped planning scans are labelled)", file=out)
                continue
            latest = outbox.labels().latest(outcome.study_uid) if outbox is not None else None
            number = 1 if latest is None else latest.instance_number + 1
            try:
                ds, digest = build_for(outcome, settings, vocabulary, now, instance_number=number)
            except AdapterError as exc:
                print(f"{head}: no KOS: {exc}", file=out)
                problems += 1
                continue
            if latest is not None and latest.digest == digest:
                print(f"{head}: KOS #{latest.instance_number} already stored; re-used", file=out)
                ds = dcmread(BytesIO(latest.document))
            elif latest is not None:
                print(f"{head}: new KOS #{number}, supersedes #{latest.instance_number}", file=out)
            else:
                print(f"{head}: new KOS #{number}", file=out)
            print(ds, file=out)
    finally:
        if outbox is not None:
            outbox.close()
    return 1 if problems else 0


