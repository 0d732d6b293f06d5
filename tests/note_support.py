"""Shared helpers for the review-note tests: run the bundled review fixtures through the same
steps as ``rtplan review submit`` (without an outbox) and collect what each version produces.

The note reads the store's records (issue 8): here the study record is the one the ingest made
(``StudyOutcome.record``, what the store would hold) and the previous version is the newest
earlier :func:`note_version` record with a DocumentReference, as
``adapter.store.notes.NoteStore.previous_document`` answers."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from adapter.config import FhirSettings, IngestSettings, NoteSettings, Settings
from adapter.ingest.pipeline import run_ingest
from adapter.jobs.deliver import KIND_TRANSACTION
from adapter.mapping.review_bundle import ReviewOutput
from adapter.mapping.review_input import ReviewInput, parse_review
from adapter.review.note.service import (
    KIND_NOTE,
    NotePlan,
    NoteRecords,
    apply_note,
    note_bundle,
    note_version,
    plan_note,
)
from adapter.review.service import KIND_REVIEW, build_review
from adapter.store.notes import NoteVersion
from adapter.store.studies import StudyRecord
from adapter.tables import load_tables
from tests.study_context import context_from_payloads

ROOT = Path(__file__).resolve().parents[1]
REVIEWS = ROOT / "fixtures" / "reviews"
DICOM = ROOT / "fixtures" / "dicom"
NOTES = ROOT / "fixtures" / "expected" / "notes"
SETTINGS = Settings(ingest=IngestSettings(workers=1), fhir=FhirSettings(create_patient=True))
TABLES = load_tables(SETTINGS.mappings_dir)
# Every review fixture, with the reviews submitted before it (as in tests/golden).
NOTE_CASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "no-finding": ("no-finding", ()),
    "incomplete": ("incomplete", ()),
    "concern": ("concern", ()),
    "concern-amended": ("concern-amended", ("concern",)),
    "concern-new-finding": ("concern-new-finding", ("concern",)),
    "concern-withdrawn": ("concern-withdrawn", ("concern", "concern-new-finding")),
}


@dataclass
class Step:
    review: ReviewInput
    plan: NotePlan
    output: ReviewOutput
    note_bundle: dict[str, Any] | None


def ingest_study(folder: str = "planning-ct") -> tuple[dict[str, Any], StudyRecord]:
    """The study's ingest Bundle and the record the store would keep of it."""
    result = run_ingest([DICOM / folder], SETTINGS, TABLES)
    bundle, record = result.studies[0].bundle, result.studies[0].record
    assert bundle is not None and record is not None
    return bundle, record


def ingest_bundle(folder: str = "planning-ct") -> dict[str, Any]:
    return ingest_study(folder)[0]


def previous_document(versions: list[NoteVersion], version: int) -> NoteVersion | None:
    earlier = [v for v in versions if v.version < version and v.document_reference is not None]
    return max(earlier, key=lambda v: v.version, default=None)


def load_review(name: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REVIEWS / f"{name}.json").read_text(encoding="utf-8"))
    data.update(changes)
    return data


def study_uid(bundle: dict[str, Any]) -> str:
    study = next(
        e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "ImagingStudy"
    )
    return str(study["identifier"][0]["value"]).removeprefix("urn:oid:")


def run_reviews(
    reviews: list[dict[str, Any]],
    *,
    folder: str = "planning-ct",
    outputs: str = "auto",
    out_dir: Path | None = Path("out"),
) -> list[Step]:
    """Submit ``reviews`` in order (the study from ``folder``); each step's note and Bundles."""
    settings = replace(SETTINGS, note=NoteSettings(outputs=outputs))
    ingest, record = ingest_study(folder)
    uid = study_uid(ingest)
    payloads: list[tuple[str, dict[str, Any]]] = [(KIND_TRANSACTION, ingest)]
    versions: list[NoteVersion] = []
    steps = []
    for data in reviews:
        review = parse_review({**data, "study_instance_uid": uid}, TABLES)
        ctx = context_from_payloads(uid, review.review_id, payloads)
        assert ctx is not None
        records = NoteRecords(record, previous_document(versions, review.version))
        plan = plan_note(review, ctx, settings, TABLES, records, out_dir=out_dir)
        versions.append(note_version(plan, TABLES))
        output = apply_note(build_review(review, ctx, settings, TABLES), plan, TABLES)
        bundle = note_bundle(plan, TABLES)
        payloads.append((KIND_REVIEW, output.bundle))
        if bundle is not None:
            payloads.append((KIND_NOTE, bundle))
        steps.append(Step(review, plan, output, bundle))
    return steps


def case_steps(case: str, **kwargs: Any) -> list[Step]:
    name, earlier = NOTE_CASES[case]
    return run_reviews([load_review(n) for n in (*earlier, name)], **kwargs)


def tool(name: str) -> str:
    """A poppler-utils program (Debian); a missing one FAILS the test, never skips it."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} (Debian poppler-utils) is not installed", pytrace=False)
    return found


def pdf_text(pdf: bytes, tmp: Path) -> str:
    """``pdftotext`` of a PDF, as UTF-8 text."""
    path = tmp / "note.pdf"
    path.write_bytes(pdf)
    proc = subprocess.run(
        [tool("pdftotext"), "-enc", "UTF-8", str(path), "-"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    return proc.stdout.decode("utf-8")


def lines(text: str) -> list[str]:
    """Non-empty lines without surrounding spaces (pdftotext drops indentation and blank
    lines; the words and their line breaks must be the same)."""
    return [line.strip() for line in text.replace("\f", "\n").splitlines() if line.strip()]
