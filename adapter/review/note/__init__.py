"""The planning-scan review note (issue 15): one rendered document per review version, as
plain text and PDF, for EHRs that take notes (FHIR DocumentReference, HL7 v2 MDM or ORU)."""

from adapter.review.note.facts import (
    ReviewNote,
    StudyRecord,
    build_note,
    document_number,
    study_record,
)
from adapter.review.note.render import render_pdf, render_text

__all__ = [
    "ReviewNote",
    "StudyRecord",
    "build_note",
    "document_number",
    "render_pdf",
    "render_text",
    "study_record",
]
