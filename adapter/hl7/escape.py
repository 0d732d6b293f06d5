"""HL7 v2 escaping of free text, and a small tolerant ER7 reader.

Why our own escaping: hl7apy 1.3.5 gets free text wrong (``standards.md`` §5e, ``peers.md`` §5).
A plain ``str`` assigned to a field is *parsed* as ER7, so ``^`` and ``&`` become component
separators; its datatype escaper passes through anything that looks like an escape sequence, so
the file path ``C:\\F\\x`` would reach the RIS as ``C:|x``; and it leaves CR, LF and the MLLP
framing bytes 0x0B / 0x1C raw, which split a segment or end the MLLP frame early.

Rules (ER7 with the default delimiters ``|^~\\&``):

* ``\\`` → ``\\E\\`` first, so text that already looks escaped is escaped again, never trusted;
* ``|`` → ``\\F\\``, ``^`` → ``\\S\\``, ``&`` → ``\\T\\``, ``~`` → ``\\R\\``;
* in FT (formatted text, NTE-3): LF → ``\\.br\\`` (a line break the RIS shows), CR → ``\\X0D\\``;
  elsewhere LF → ``\\X0A\\`` and CR → ``\\X0D\\``, so :func:`unescape` gives back the exact text;
* every other C0 control byte (0x0B VT and 0x1C FS included) and DEL → ``\\Xhh\\``.

``\\Xhh\\`` names a byte of the message charset; for the ASCII controls above the byte is the same
in UTF-8 and ISO 8859-1, so :func:`unescape` is exact for the text we produce.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

FIELD, COMPONENT, REPETITION, ESCAPE, SUBCOMPONENT = "|", "^", "~", "\\", "&"
ENCODING_CHARACTERS = "^~\\&"

_BASIC = {
    "\\": "\\E\\",
    "|": "\\F\\",
    "^": "\\S\\",
    "&": "\\T\\",
    "~": "\\R\\",
}
_NEEDS_ESCAPE = re.compile(r"[\\|^&~\x00-\x08\x0a-\x1f\x7f]")
_SEQUENCE = re.compile(r"\\([^\\]*)\\")
_UNESCAPE_SIMPLE = {"F": "|", "S": "^", "T": "&", "R": "~", "E": "\\"}


def _hex(ch: str) -> str:
    return f"\\X{ord(ch):02X}\\"


def escape(text: str, *, formatted: bool = False) -> str:
    """Escape ``text`` for one ER7 component (or subcomponent) value.

    Parameters:
        text: any text; nothing in it is trusted, including what looks like escape sequences.
        formatted: ``True`` for FT fields (NTE-3): LF becomes ``\\.br\\``.

    Returns:
        the escaped value; it contains no delimiter, CR, LF, 0x0B or 0x1C.
    """
    if not _NEEDS_ESCAPE.search(text):
        return text
    out: list[str] = []
    for ch in text:
        if ch in _BASIC:
            out.append(_BASIC[ch])
        elif ch == "\n" and formatted:
            out.append("\\.br\\")
        elif ch == "\t" or (ord(ch) >= 0x20 and ch != "\x7f"):
            out.append(ch)
        else:
            out.append(_hex(ch))
    return "".join(out)


def unescape(value: str, *, charset: str = "utf-8") -> str:
    """Undo HL7 escape sequences in one component value (the inverse of :func:`escape`).

    ``\\.br\\`` becomes LF; ``\\Xhh…\\`` is decoded as bytes of ``charset`` (an invalid byte run
    becomes U+FFFD rather than an exception, because inbound text is the peer's to get wrong);
    highlighting (``\\H\\``/``\\N\\``) and other formatting commands are dropped; an unknown
    sequence is kept as written.
    """
    if "\\" not in value:
        return value

    def repl(match: re.Match[str]) -> str:
        body = match.group(1)
        if body in _UNESCAPE_SIMPLE:
            return _UNESCAPE_SIMPLE[body]
        if body == ".br":
            return "\n"
        if body in ("H", "N") or body.startswith((".sp", ".in", ".ti", ".sk", ".ce", ".fi", ".nf")):
            return ""
        if body[:1] == "X" and len(body) > 1 and len(body) % 2 == 1:
            try:
                return bytes.fromhex(body[1:]).decode(charset, errors="replace")
            except ValueError:
                return match.group(0)
        return match.group(0)

    return _SEQUENCE.sub(repl, value)


def join_components(parts: Sequence[str]) -> str:
    """Join already-escaped component values with ``^``, dropping empty trailing ones."""
    items = list(parts)
    while items and items[-1] == "":
        items.pop()
    return COMPONENT.join(items)


# --- a tolerant ER7 reader (for ACKs and inbound messages; never raises on bad input) ----------

CHARSETS = {
    "": "ascii",
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "8859/1": "iso-8859-1",
    "8859/15": "iso-8859-15",
}


def decode_message(raw: bytes) -> tuple[str, str]:
    """Decode raw ER7 bytes in the charset its MSH-18 declares.

    Returns ``(text, python_codec)``. An undeclared or unknown charset, or bytes that are not
    valid in the declared one, fall back to UTF-8 then ISO 8859-1 (which decodes any byte), so a
    reader always gets text; deciding whether that is acceptable is the caller's business.
    """
    head = raw.split(b"\r", 1)[0].split(b"\n", 1)[0]
    declared = ""
    if head[:3] == b"MSH" and len(head) > 3:
        fields = head.split(head[3:4])
        if len(fields) > 17:
            declared = fields[17].split(b"^")[0].decode("ascii", errors="replace").strip()
    codec = CHARSETS.get(declared, "utf-8")
    for candidate in (codec, "utf-8", "iso-8859-1"):
        try:
            return raw.decode(candidate), candidate
        except UnicodeDecodeError:
            continue
    return raw.decode("iso-8859-1"), "iso-8859-1"  # pragma: no cover - latin-1 decodes anything


def split_segments(text: str) -> list[list[str]]:
    """Split ER7 text into segments of raw (still escaped) fields.

    Segments end in CR; LF and CRLF are accepted too. For MSH, index 1 is MSH-1 (the field
    separator) and index n is MSH-n, as for every other segment; elsewhere index 0 is the name.
    """
    segments: list[list[str]] = []
    sep = FIELD
    for line in re.split(r"\r\n|\r|\n", text):
        if not line.strip():
            continue
        if line.startswith("MSH") and len(line) > 3:
            sep = line[3]
            segments.append(["MSH", sep, *line[4:].split(sep)])
        else:
            segments.append(line.split(sep))
    return segments
