"""A generated, escaped XHTML narrative (``text``) for every resource we write. Pure.

FHIR says a resource *should* carry a human-readable narrative (dom-6; HAPI's validator warns
on every resource without one), and an EHR or viewer that shows narrative shows nothing
otherwise. This module is a post-processing step applied where Bundles are assembled: it reads
the resource's own elements and writes ``text`` = ``{"status": "generated", "div": ...}``,
replacing any narrative it generated before (so it is idempotent and never drifts from the data).

Safety of the XHTML: every value is escaped (``& < > " '``); characters XML 1.0 cannot carry
(C0 controls other than tab/LF/CR, U+FFFE/U+FFFF, lone surrogates) become U+FFFD; only ``div``,
``p``, ``b``, ``table``, ``tr``, ``td`` and ``br`` are emitted, without attributes other than the
XHTML namespace (FHIR txt-1, txt-2). The narrative states nothing the resource does not.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from html import escape
from typing import Any

JSON = dict[str, Any]
XHTML = "http://www.w3.org/1999/xhtml"
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")
#: Resources that are not DomainResources: they have no ``text`` element (a Binary carries a
#: JSON Patch in a transaction, for example).
NOT_DOMAIN = frozenset({"Binary", "Bundle", "Parameters"})
MAX_VALUE = 4000  # characters of one value shown; the element itself is never shortened

#: Elements shown, in this order, with their label. Anything else is left to the data.
FIELDS: tuple[tuple[str, str], ...] = (
    ("identifier", "Identifier"),
    ("masterIdentifier", "Document identifier"),
    ("status", "Status"),
    ("docStatus", "Document status"),
    ("businessStatus", "Business status"),
    ("intent", "Intent"),
    ("priority", "Priority"),
    ("category", "Category"),
    ("type", "Type"),
    ("code", "Code"),
    ("name", "Name"),
    ("gender", "Gender"),
    ("birthDate", "Birth date"),
    ("subject", "Subject"),
    ("for", "For"),
    ("focus", "Focus"),
    ("basedOn", "Based on"),
    ("modality", "Modality"),
    ("started", "Started"),
    ("numberOfSeries", "Series"),
    ("numberOfInstances", "Instances"),
    ("description", "Description"),
    ("effectiveDateTime", "Effective"),
    ("issued", "Issued"),
    ("date", "Date"),
    ("authoredOn", "Authored"),
    ("lastModified", "Last modified"),
    ("author", "Author"),
    ("performer", "Performer"),
    ("resultsInterpreter", "Interpreted by"),
    ("requester", "Requester"),
    ("owner", "Owner"),
    ("bodySite", "Body site"),
    ("reasonCode", "Reason"),
    ("conclusion", "Conclusion"),
    ("conclusionCode", "Coded conclusion"),
    ("relatesTo", "Relates to"),
    ("restriction", "Due"),
    ("address", "Address"),
    ("connectionType", "Connection type"),
    ("note", "Note"),
)


def _clean(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def _short(text: str) -> str:
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE] + " …"


def _coding(c: JSON) -> str:
    display = c.get("display") or c.get("code") or ""
    code = c.get("code")
    return f"{display} ({code})" if code and display != code else str(display)


def _reference(ref: str, names: dict[str, str]) -> str:
    """A reader's name for a reference: what an in-Bundle ``urn:uuid`` stands for, or
    ``Type identifier`` for a conditional reference."""
    if ref in names:
        return names[ref]
    kind, sep, query = ref.partition("?identifier=")
    if sep:
        return f"{kind} {query.rpartition('|')[2]}"
    return ref


def _summary(value: Any, names: dict[str, str] | None = None) -> str:
    """One line of plain text for an element value (before escaping)."""
    names = names or {}
    if isinstance(value, list):
        return "; ".join(s for s in (_summary(v, names) for v in value) if s)
    if not isinstance(value, dict):
        return "" if value is None else str(value)
    if "coding" in value or ("text" in value and len(value) == 1):
        return str(value.get("text") or _summary([_coding(c) for c in value.get("coding", [])]))
    if "reference" in value or "display" in value or "identifier" in value:
        if value.get("display"):
            return str(value["display"])
        if value.get("reference"):
            return _reference(str(value["reference"]), names)
        return _summary(value["identifier"])
    if "value" in value and ("system" in value or "type" in value):
        return str(value["value"])
    if "code" in value and "target" in value:  # DocumentReference.relatesTo
        return f"{value['code']}: {_summary(value['target'], names)}"
    if "family" in value or "given" in value or ("text" in value and "use" in value):
        return str(
            value.get("text") or " ".join([*value.get("given", []), value.get("family", "")])
        ).strip()
    if "period" in value:  # Task.restriction
        return _summary(value["period"].get("end", ""))
    if "text" in value:  # Annotation
        return str(value["text"])
    if "code" in value:
        return _coding(value)
    return ""


def _cell(text: str) -> str:
    lines = _clean(_short(text)).split("\n")
    return "<br/>".join(escape(line, quote=True) for line in lines)


def narrative_div(resource: JSON, names: dict[str, str] | None = None) -> str:
    """The XHTML ``div`` for ``resource`` (its ``text`` element itself is ignored).
    ``names``: what each in-Bundle ``urn:uuid`` reference stands for."""
    kind = str(resource.get("resourceType", "Resource"))
    rows = []
    for element, label in FIELDS:
        if element not in resource:
            continue
        shown = _summary(resource[element], names)
        if shown.strip():
            rows.append(f"<tr><td><b>{escape(label)}</b></td><td>{_cell(shown)}</td></tr>")
    table = f"<table>{''.join(rows)}</table>" if rows else ""
    return f'<div xmlns="{XHTML}"><p><b>{escape(kind)}</b></p>{table}</div>'


def with_narrative(resource: JSON, names: dict[str, str] | None = None) -> JSON:
    """A copy of ``resource`` with a generated narrative (kept when not ``generated``)."""
    out = copy.deepcopy(resource)
    if out.get("resourceType") in NOT_DOMAIN:
        return out
    existing = out.get("text")
    if isinstance(existing, dict) and existing.get("status") not in (None, "generated"):
        return out  # a narrative someone wrote by hand ("additional"/"extensions") stays
    out.pop("text", None)
    out["text"] = {"status": "generated", "div": narrative_div(out, names)}
    return out


def with_narratives(bundle: JSON) -> JSON:
    """A copy of a Bundle whose every entry resource carries a generated narrative."""
    entries = bundle.get("entry", [])
    names = {
        str(e["fullUrl"]): _name(e["resource"])
        for e in entries
        if isinstance(e.get("resource"), dict) and e.get("fullUrl")
    }
    out = dict(bundle)
    out["entry"] = [_entry(e, names) for e in entries]
    return out


def _name(resource: JSON) -> str:
    kind = str(resource.get("resourceType", "Resource"))
    identifiers = resource.get("identifier") or []
    if isinstance(identifiers, list) and identifiers and identifiers[0].get("value"):
        return f"{kind} {identifiers[0]['value']}"
    return kind


def _entry(entry: JSON, names: dict[str, str]) -> JSON:
    if not isinstance(entry.get("resource"), dict):
        return dict(entry)
    return {**entry, "resource": with_narrative(entry["resource"], names)}


def resources_without_narrative(bundles: Iterable[JSON]) -> list[str]:
    """``Type`` of each entry resource lacking ``text.div`` (for tests and checks)."""
    return [
        str(e["resource"].get("resourceType"))
        for b in bundles
        for e in b.get("entry", [])
        if isinstance(e.get("resource"), dict)
        and e["resource"].get("resourceType") not in NOT_DOMAIN
        and not e["resource"].get("text", {}).get("div")
    ]
