"""Render the review note: plain text and PDF from ONE Jinja2 template.

The template (``templates/review-note.j2``) produces the note line by line; the text note is
those lines, and the PDF is the same lines laid out by WeasyPrint (HTML/CSS to PDF, PDF/A-3b),
one paragraph per line in a monospaced face, so the PDF's text (``pdftotext``) is the text note.
Lines are wrapped at :data:`COLUMNS` display columns (an East Asian wide character counts two),
which fits an A4 page at 9 pt, so WeasyPrint never wraps a line differently.

Fonts (Debian packages, installed by ``.ci/run``): DejaVu Sans Mono carries Latin-1 and the rest
of Latin; IPAGothic carries Japanese (Pango falls back to it per character).
"""

from __future__ import annotations

import gc
import threading
import unicodedata
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import escape

from adapter.errors import ConfigError
from adapter.review.note.facts import ReviewNote

COLUMNS = 78
_RENDER_LOCK = threading.Lock()
HEADING = "## "
TEMPLATES = Path(__file__).resolve().parent / "templates"
FONT_FAMILY = "'DejaVu Sans Mono', 'IPAGothic', monospace"
_STATUS = {
    "final": "final",
    "amended": "amended",
    "incomplete": "INCOMPLETE review (not all images were reviewed)",
    "concern-withdrawn": "amended: concern withdrawn",
}


def _width(ch: str) -> int:
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _printable(text: str) -> str:
    """Tabs become spaces; other control characters (never meaningful in a note, and not
    representable in a PDF or XML) become U+FFFD, so nothing is dropped silently."""
    out = []
    for ch in text.replace("\r\n", "\n").replace("\r", "\n"):
        if ch == "\t":
            out.append(" ")
        elif ch != "\n" and (unicodedata.category(ch) == "Cc"):
            out.append("\ufffd")
        else:
            out.append(ch)
    return "".join(out)


def _tokens(paragraph: str) -> list[str]:
    """Words (runs without spaces) split further after each wide character, so CJK text, which
    has no spaces, can break between characters."""
    tokens: list[str] = []
    for word in paragraph.split(" "):
        current = ""
        for ch in word:
            if _width(ch) == 2 and current:
                tokens.append(current)
                current = ""
            current += ch
            if _width(ch) == 2:
                tokens.append(current)
                current = ""
        tokens.append(current)
        tokens.append(" ")
    return tokens[:-1]


def wrap(text: object, indent: int = 4, first: int = 0, width: int = COLUMNS) -> str:
    """Wrap ``text`` at ``width`` display columns; continuation lines are indented by
    ``indent`` spaces, the first line by ``first``. Line breaks in the text are kept."""
    lines: list[str] = []
    for number, paragraph in enumerate(_printable(str(text)).split("\n")):
        pad = " " * (first if number == 0 else indent)
        line, used = pad, len(pad)
        for token in _tokens(paragraph.strip(" ")):
            size = sum(_width(c) for c in token)
            if token == " ":
                if used > len(pad):
                    line, used = line + " ", used + 1
                continue
            if used + size > width and line.strip():
                lines.append(line.rstrip())
                line, used = " " * indent, indent
            while size > width - used:  # a single token longer than a line: hard break
                room = width - used
                cut, taken = 0, 0
                while cut < len(token) and taken + _width(token[cut]) <= room:
                    taken += _width(token[cut])
                    cut += 1
                lines.append((line + token[:cut]).rstrip())
                token = token[cut:]
                size = sum(_width(c) for c in token)
                line, used = " " * indent, indent
            line, used = line + token, used + size
        lines.append(line.rstrip())
    return "\n".join(lines)


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=False,  # the template renders text; the PDF escapes each line itself
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["wrap"] = wrap
    return env


def note_lines(note: ReviewNote) -> list[str]:
    """The template's lines, headings still marked with ``## ``."""
    status = _STATUS[note.state]
    if note.replaces_version is not None:
        status += f"; version {note.version} replaces version {note.replaces_version}"
    else:
        status += f"; version {note.version}"
    text = _environment().get_template("review-note.j2").render(note=note, status_text=status)
    lines = text.rstrip("\n").split("\n")
    # Collapse runs of blank lines the optional sections leave behind.
    out: list[str] = []
    for line in lines:
        if line.strip() or (out and out[-1].strip()):
            out.append(line.rstrip())
    return out


def render_text(note: ReviewNote) -> str:
    """The plain-text note (UTF-8 when stored), lines at most 78 columns, ending in a newline."""
    return "\n".join(line.removeprefix(HEADING) for line in note_lines(note)).rstrip("\n") + "\n"


def note_html(note: ReviewNote) -> str:
    """The HTML page WeasyPrint lays out: one paragraph per template line, escaped."""
    paragraphs = []
    for line in note_lines(note):
        if line.startswith(HEADING):
            paragraphs.append(f'<p class="h">{escape(line.removeprefix(HEADING))}</p>')
        elif line.strip():
            paragraphs.append(f"<p>{escape(line)}</p>")
        else:
            paragraphs.append('<p class="gap"></p>')
    css = (
        "@page { size: A4; margin: 16mm }"
        f" body {{ font-family: {FONT_FAMILY}; font-size: 9pt; line-height: 1.3 }}"
        " p { margin: 0; white-space: pre }"
        " p.h { font-weight: bold; margin-top: 0.2em }"
        " p.gap { height: 0.9em }"
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(note.title)}</title>"
        f'<meta name="author" content="{escape(note.reviewer_name)}">'
        '<meta name="generator" content="rtplan">'
        f'<meta name="dcterms.created" content="{escape(note.reviewed_at)}">'
        f'<meta name="dcterms.modified" content="{escape(note.reviewed_at)}">'
        f"<style>{css}</style></head><body>{''.join(paragraphs)}</body></html>"
    )


def render_pdf(note: ReviewNote) -> bytes:
    """The PDF/A-3b note: the lines of :func:`render_text`, nothing else (no page furniture,
    so the PDF's extracted text is the text note).

    Raises:
        ConfigError: WeasyPrint's system libraries are missing (one line, no traceback).
    """
    try:
        from weasyprint import HTML  # imported here: ~0.7 s, needed only when a note is rendered
    except (ImportError, OSError) as exc:  # the Pango/HarfBuzz system libraries are missing
        raise ConfigError(
            "note",
            "cannot render the PDF note: WeasyPrint needs Pango and HarfBuzz (Debian "
            f"libpango-1.0-0, libpangoft2-1.0-0, libharfbuzz-subset0): {type(exc).__name__}",
        ) from None
    # WeasyPrint 70 leaves its sRGB ICC profile file open when it embeds it for PDF/A; the file
    # is released when write_pdf returns. The warning filters are process-wide and
    # catch_warnings is not thread-safe, so one render at a time (the GIL gives no parallelism
    # here anyway); gc.collect() releases the file while the filter is in force.
    with _RENDER_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        pdf: Any = HTML(string=note_html(note)).write_pdf(pdf_variant="pdf/a-3b")
        gc.collect()
    return bytes(pdf)
