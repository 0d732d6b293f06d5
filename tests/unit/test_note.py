"""The rendered planning-scan review note: golden text for every review fixture, the PDF's text
equal to the text note (Latin-1 and Japanese patients), and what the note may and may not say.

Regenerate the golden notes after an intended change with
``UPDATE_GOLDEN=1 pytest tests/unit/test_note.py`` and review the diff."""

from __future__ import annotations

import gc
import os
import subprocess
import unicodedata
from pathlib import Path

import pytest

from adapter.review.note.render import COLUMNS, render_text, wrap
from tests.note_support import (
    NOTE_CASES,
    NOTES,
    case_steps,
    lines,
    load_review,
    pdf_text,
    run_reviews,
    tool,
)


def _width(line: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in ("W", "F") else 1 for c in line)


@pytest.mark.parametrize("case", sorted(NOTE_CASES))
def test_note_matches_golden(case: str) -> None:
    text = case_steps(case)[-1].plan.rendered.text
    path = NOTES / f"{case}.txt"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.is_file(), f"no golden note {path.name}: run with UPDATE_GOLDEN=1 and review it"
    assert text == path.read_text(encoding="utf-8")
    assert all(_width(line) <= COLUMNS for line in text.splitlines())


def test_golden_notes_have_no_orphans() -> None:
    assert {p.stem for p in NOTES.glob("*.txt")} == set(NOTE_CASES)


@pytest.mark.parametrize(
    ("folder", "expected_name"),
    [("charset-latin1", "JÜRGEN MÜLLER"), ("charset-jp", "山田 太郎"), ("planning-ct", "")],
)
def test_pdf_text_is_the_text_note(folder: str, expected_name: str, tmp_path: Path) -> None:
    notes = (
        "Ünïcödé Ø ß é \u2013 \u201cquotes\u201d; 日本語の所見: 肝臓に低吸収域。\n"
        "Second line | ^ & ~ \\F\\"
    )
    step = run_reviews([load_review("concern", notes=notes)], folder=folder)[0]
    rendered = step.plan.rendered
    assert rendered.pdf.startswith(b"%PDF-")
    extracted = pdf_text(rendered.pdf, tmp_path)
    assert lines(extracted) == lines(rendered.text)
    assert expected_name in rendered.text
    assert "日本語の所見" in extracted and "Ünïcödé" in extracted


def test_pdf_is_pdf_a_and_deterministic(tmp_path: Path) -> None:
    step = run_reviews([load_review("concern")])[0]
    pdf = step.plan.rendered.pdf
    (tmp_path / "note.pdf").write_bytes(pdf)
    meta = subprocess.run(
        [tool("pdfinfo"), "-meta", str(tmp_path / "note.pdf")],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    assert "pdfaid:part" in meta and "pdfaid:conformance" in meta  # PDF/A-3b in the XMP
    again = run_reviews([load_review("concern")])[0].plan.rendered.pdf
    assert again == pdf  # a resubmission stores the same bytes (the outbox de-duplicates)


def test_incomplete_review_never_reads_as_nothing_found() -> None:
    text = case_steps("incomplete")[-1].plan.rendered.text
    first = text.splitlines()
    assert any(line.startswith("INCOMPLETE REVIEW: NOT ALL IMAGES WERE REVIEWED") for line in first)
    assert "All images reviewed: NO" in text
    assert "in the images reviewed so far" in text
    assert "The oncologist recorded no significant finding.\n" not in text
    # and the complete one does say it, plainly
    assert (
        "The oncologist recorded no significant finding."
        in case_steps("no-finding")[-1].plan.rendered.text
    )


def test_findings_are_the_oncologists_suspicions_not_diagnoses() -> None:
    text = case_steps("concern")[-1].plan.rendered.text
    assert "1. Suspected metastasis - Liver - urgency: urgent" in text
    assert "2. Other unexpected pathology - Chest - urgency: routine" in text
    assert "Secondary malignant neoplastic disease" not in text  # the SNOMED display: a diagnosis
    assert "Requested: the oncologist asked a clinical radiologist" in text
    assert "The patient was informed that the scan is for radiotherapy planning" in text


def test_amendment_and_withdrawal_say_so() -> None:
    amended = case_steps("concern-amended")[-1].plan.rendered.text
    assert "Status: amended; version 2 replaces version 1" in amended
    withdrawn = case_steps("concern-withdrawn")[-1].plan.rendered.text
    assert withdrawn.startswith("RADIOTHERAPY PLANNING SCAN REVIEW NOTE\n")
    assert "CONCERN WITHDRAWN: the oncologist withdrew the concern" in withdrawn
    assert "Withdrawn: the concern raised earlier is withdrawn" in withdrawn
    assert "Requested: the oncologist asked" not in withdrawn


def test_patient_not_informed_is_stated() -> None:
    step = run_reviews([load_review("no-finding", patient_informed_planning_only=False)])[0]
    assert "It was NOT recorded that the patient was informed" in step.plan.rendered.text


def test_hostile_text_is_kept_visible_and_printable() -> None:
    notes = "a\x00b\x0bc\x1cd\te\r\nf <b>&amp;</b> 🙂"
    text = run_reviews([load_review("concern", notes=notes)])[0].plan.rendered.text
    assert "a\ufffdb\ufffdc\ufffdd e\nf <b>&amp;</b> 🙂" in text
    assert not any(unicodedata.category(c) == "Cc" and c != "\n" for c in text)


def test_wrap_breaks_cjk_and_long_words_within_the_width() -> None:
    assert wrap("a " * 50, indent=2).splitlines()[1].startswith("  a")
    cjk = wrap("所見" * 60, indent=0)
    assert all(_width(line) <= COLUMNS for line in cjk.splitlines())
    assert cjk.replace("\n", "") == "所見" * 60
    long = wrap("x" * 200, indent=0)
    assert long.replace("\n", "") == "x" * 200 and max(map(len, long.splitlines())) == COLUMNS


def test_render_text_without_patient_demographics() -> None:
    # A study mapped without a Patient (fhir.create_patient false): the note says so.
    from dataclasses import replace

    step = case_steps("concern")[-1]
    note = replace(
        step.plan.rendered.note, study=replace(step.plan.rendered.note.study, patient_names=())
    )
    assert "Name: not held by the adapter" in render_text(note)


def test_missing_pdf_libraries_are_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from adapter.errors import ConfigError
    from adapter.review.note.render import render_pdf

    real_import = builtins.__import__

    def no_weasyprint(name: str, *args: object, **kwargs: object) -> object:
        if name == "weasyprint":
            raise OSError("cannot load library 'libpango-1.0-0'")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    note = case_steps("concern")[-1].plan.rendered.note
    monkeypatch.setattr(builtins, "__import__", no_weasyprint)
    with pytest.raises(ConfigError, match=r"^config note: cannot render the PDF note"):
        render_pdf(note)


def test_concurrent_renders_leak_nothing() -> None:
    """Submissions can render in threads (the CLI's concurrent submits, the service): no
    ResourceWarning may escape WeasyPrint's PDF/A colour profile (pytest turns it into an
    error), and every thread gets the same bytes."""
    from concurrent.futures import ThreadPoolExecutor

    from adapter.review.note.render import render_pdf

    note = case_steps("concern")[-1].plan.rendered.note
    with ThreadPoolExecutor(4) as pool:
        pdfs = list(pool.map(lambda _: render_pdf(note), range(8)))
    assert len(set(pdfs)) == 1
    gc.collect()  # anything left in a reference cycle would warn now, failing the test
