"""The embedded-default sink: Bundles, quarantine and a run report in an output folder.

Layout of ``--out DIR``::

    DIR/fhir/ImagingStudy-<key>.json    one transaction Bundle per mapped study (written by the
                                        outbox's file deliverer, like any other destination)
    DIR/quarantine/<hash>.dcm           a copy of each quarantined file (never the original moved)
    DIR/report.json                     what happened to every study and every rejected file

File names are our own hashes, never UIDs or other values taken from the input, so a hostile
UID cannot write outside ``DIR`` (reliability.md §3.5). Files are written to a temporary name
and renamed, so a crash never leaves half a Bundle behind.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter.dicom.models import RejectionKind
from adapter.errors import ConfigError
from adapter.ingest.pipeline import IngestResult, Status, StudyOutcome
from adapter.private import private_dir, replace_private

if TYPE_CHECKING:  # the KOS builder imports pydicom: loaded only where a label is built
    from adapter.label.service import LabelOutcome

# A quarantined file larger than this is listed but not copied.
MAX_QUARANTINE_COPY = 64 * 1024 * 1024


def shown_path(path: str) -> str:
    """A file name as text that can always be printed and stored: bytes that are not valid
    UTF-8 (kept by Python as surrogates) are shown as ``\\xNN`` escapes."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def bundle_label(outcome: StudyOutcome) -> str:
    """The name of a study's Bundle: in the output folder and in outbox listings."""
    return f"ImagingStudy-{outcome.key}"


def write_report(
    result: IngestResult, out_dir: Path, identity_holds: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """Write quarantine copies and ``report.json`` (all 0600); return the report. ``identity_holds``
    (Study Instance UID -> hold id) names the hold to resolve for each held study."""
    private_dir(out_dir)
    holds = identity_holds or {}
    studies = []
    for outcome in result.studies:
        entry = study_report(outcome)
        if outcome.study_uid in holds:
            entry["identity_hold"] = holds[outcome.study_uid]
        if outcome.bundle is not None and outcome.status is Status.MAPPED:
            entry["output"] = f"fhir/{bundle_label(outcome)}.json"
        studies.append(entry)
    rejected = []
    for rejection in result.rejections:
        item: dict[str, Any] = {
            "path": shown_path(rejection.path),
            "kind": rejection.kind.value,
            "reason": rejection.reason,
        }
        if rejection.kind is RejectionKind.QUARANTINED:
            copy = _quarantine(Path(rejection.path), out_dir / "quarantine")
            if copy is not None:
                item["copy"] = str(copy.relative_to(out_dir))
        rejected.append(item)
    report = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "summary": summary(result),
        "studies": studies,
        "rejected_files": rejected,
    }
    write_json_atomic(out_dir / "report.json", report)
    return report


def summary(result: IngestResult) -> dict[str, Any]:
    return {
        "files": result.files,
        "studies": len(result.studies),
        "mapped": result.count(Status.MAPPED),
        "held_not_planning": result.count(Status.HELD_DIAGNOSTIC),
        "held_incomplete": result.count(Status.HELD_INCOMPLETE),
        "held_identity": result.count(Status.HELD_IDENTITY),
        "failed": result.count(Status.FAILED),
        "not_dicom": sum(1 for r in result.rejections if r.kind is RejectionKind.NOT_DICOM),
        "quarantined": sum(1 for r in result.rejections if r.kind is RejectionKind.QUARANTINED),
        "everything_mapped": result.everything_mapped,
        "read_by_pydicom_path": sum(result.read_by_pydicom_path.values()),
        "pydicom_path_reasons": dict(result.read_by_pydicom_path),
    }


def study_report(outcome: StudyOutcome) -> dict[str, Any]:
    decision = outcome.classification
    entry: dict[str, Any] = {
        "study_instance_uid": outcome.study_uid,
        "key": outcome.key,
        "status": outcome.status.value,
        "planning_scan": decision.is_planning,
        "evidence": [
            {"rule": e.rule, "strength": e.strength.value, "text": e.text}
            for e in decision.evidence
        ],
        "instances": outcome.instances,
        "complete": outcome.completeness.complete,
        "completeness_problems": list(outcome.completeness.problems),
        # null: no (0020,1208), so "complete" is only as far as gaps and references show
        "declared_instances": outcome.completeness.declared,
    }
    if outcome.duplicates:
        # Files dropped as repeated SOP instances are named, with whether their content differs.
        entry["duplicate_files"] = [
            {"path": d.path, "sop_instance_uid": d.sop_instance_uid, "same_content": d.same_content}
            for d in outcome.duplicates
        ]
    if outcome.problem:
        entry["problem"] = outcome.problem
    return entry


def write_json_atomic(target: Path, document: object) -> None:
    """A private (0600) JSON file, written atomically and never through a symlink. One write of
    the whole text: json.dump would issue one write per token (27,000 for a 1,000-instance
    Bundle), several times slower than encoding; the bytes are the same."""
    private_dir(target.parent)
    text = json.dumps(document, ensure_ascii=False, indent=2, sort_keys=False) + "\n"
    replace_private(target, text)


def _quarantine(source: Path, folder: Path) -> Path | None:
    try:
        if source.is_symlink() or not source.is_file():
            return None
        if source.stat().st_size > MAX_QUARANTINE_COPY:
            return None
        private_dir(folder)
        digest = hashlib.sha256(str(source).encode(errors="surrogateescape")).hexdigest()[:16]
        target = folder / f"{digest}.dcm"
        replace_private(target, source.read_bytes())
        return target
    except (OSError, ConfigError):
        return None


def add_to_report(report: dict[str, Any], outcomes: dict[str, LabelOutcome], out_dir: Path) -> None:
    """Add each study's label outcome to ``report.json`` (and rewrite it)."""
    for entry in report.get("studies", []):
        outcome = outcomes.get(entry.get("study_instance_uid", ""))
        if outcome is not None:
            entry["pacs_label"] = outcome.as_json()
    write_json_atomic(out_dir / "report.json", report)
