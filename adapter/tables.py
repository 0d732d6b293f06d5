"""Load, validate and freeze the vocabulary tables under ``mappings/``.

Every table is one YAML file with a provenance header. Three kinds exist:

``conceptmap`` (the default)
    ConceptMap-shaped rows ``source {code, display?} -> target {system?, code, display,
    verify?}`` (``target`` may be a list, or ``null`` for a code that is deliberately left
    unmapped), plus an explicit ``unmapped`` policy: ``error``, ``omit`` or ``fixed``.
``labels``
    Named codings and texts (the planning-purpose labels).
``rules``
    Named lists of values the classifier compares against (keywords, station names, codes).

Validation happens once, at load; anything wrong raises :class:`MappingTableError` naming the
file and the row. The result is immutable, so nothing downstream can change a table at run time.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import yaml

from adapter.errors import MappingTableError, UnmappedCode

HEADER_KEYS = frozenset({"table", "title", "source", "version", "owner", "last_reviewed", "kind"})
CONCEPTMAP_KEYS = HEADER_KEYS | {"source_system", "target_system", "unmapped", "rows"}
LABELS_KEYS = HEADER_KEYS | {"labels"}
RULES_KEYS = HEADER_KEYS | {"rules"}
ROW_KEYS = frozenset({"source", "target", "note"})
SOURCE_KEYS = frozenset({"code", "display"})
CODING_KEYS = frozenset({"system", "code", "display", "verify", "note"})
UNMAPPED_MODES = ("error", "omit", "fixed")
# Short aliases an analyst may write instead of a full code-system URI.
SYSTEM_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "SCT": "http://snomed.info/sct",
        "LN": "http://loinc.org",
        "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    }
)
_URI = re.compile(r"^(urn:[a-z0-9][a-z0-9-]{0,31}:\S+|https?://\S+)$", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Coding:
    """A target code. ``verify`` marks a code no public source confirmed (standards.md)."""

    system: str
    code: str
    display: str
    verify: bool = False

    def as_fhir(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, "display": self.display}


@dataclass(frozen=True, slots=True)
class VerifyFlag:
    """One code flagged ``verify: true``, for ``rtplan mappings check``."""

    file: str
    row: str
    coding: Coding
    table: str = ""

    @property
    def withheld(self) -> bool:
        """True when the code is not emitted (code tables); identifier tables are used as
        they are, because without them no patient or owner is found."""
        return self.table not in IDENTIFIER_TABLES


@dataclass(frozen=True, slots=True)
class ConceptMapTable:
    name: str
    file: str
    source_system: str
    unmapped: Literal["error", "omit", "fixed"]
    fixed: tuple[Coding, ...]
    rows: Mapping[str, tuple[Coding, ...]]  # source code -> targets; () = deliberately unmapped

    def lookup(self, code: str) -> tuple[Coding, ...]:
        """Targets for ``code``; applies the table's unmapped policy when there is no row.

        Raises:
            UnmappedCode: no row (or an empty one) and the policy is ``error``.
        """
        targets = self.rows.get(code)
        if targets:
            return targets
        if self.unmapped == "fixed":
            return self.fixed
        if self.unmapped == "error":
            raise UnmappedCode(self.name, code)
        return ()

    def first(self, code: str) -> Coding | None:
        targets = self.lookup(code)
        return targets[0] if targets else None


@dataclass(frozen=True, slots=True)
class LabelsTable:
    name: str
    file: str
    codings: Mapping[str, Coding]
    texts: Mapping[str, str]

    def coding(self, key: str) -> Coding:
        return self.codings[key]

    def text(self, key: str) -> str:
        return self.texts[key]


@dataclass(frozen=True, slots=True)
class RulesTable:
    name: str
    file: str
    values: Mapping[str, tuple[str, ...]]

    def get(self, key: str) -> tuple[str, ...]:
        return self.values.get(key, ())


@dataclass(frozen=True, slots=True)
class Tables:
    """Every table of one ``mappings/`` folder, by table name."""

    folder: str
    conceptmaps: Mapping[str, ConceptMapTable]
    labels: Mapping[str, LabelsTable]
    rules: Mapping[str, RulesTable]
    verify_flags: tuple[VerifyFlag, ...]

    def conceptmap(self, name: str) -> ConceptMapTable:
        try:
            return self.conceptmaps[name]
        except KeyError:
            raise MappingTableError(self.folder, name, "required table is missing") from None

    def labels_table(self, name: str) -> LabelsTable:
        try:
            return self.labels[name]
        except KeyError:
            raise MappingTableError(self.folder, name, "required table is missing") from None

    def rules_table(self, name: str) -> RulesTable:
        try:
            return self.rules[name]
        except KeyError:
            raise MappingTableError(self.folder, name, "required table is missing") from None


def load_tables(folder: Path) -> Tables:
    """Read and validate every ``*.yaml`` table in ``folder`` (not recursive: receiver
    profiles live in sub-folders and have their own loader).

    Raises:
        MappingTableError: the first problem found, naming the file and the row.
    """
    if not folder.is_dir():
        raise MappingTableError(str(folder), "-", "mappings folder does not exist")
    conceptmaps: dict[str, ConceptMapTable] = {}
    labels: dict[str, LabelsTable] = {}
    rules: dict[str, RulesTable] = {}
    flags: list[VerifyFlag] = []
    seen: dict[str, str] = {}
    for path in sorted(folder.glob("*.yaml")):
        doc = _read_yaml(path)
        file = path.name
        name = _header(doc, file)
        if name in seen:
            raise MappingTableError(file, "table", f"table name {name!r} also used by {seen[name]}")
        seen[name] = file
        kind = doc.get("kind", "conceptmap")
        if kind == "conceptmap":
            table, table_flags = _conceptmap(doc, file, name)
            conceptmaps[name] = table
            flags.extend(table_flags)
        elif kind == "labels":
            label_table, table_flags = _labels(doc, file, name)
            labels[name] = label_table
            flags.extend(table_flags)
        elif kind == "rules":
            rules[name] = _rules(doc, file, name)
        else:
            raise MappingTableError(file, "kind", f"unknown kind {kind!r}")
    return Tables(
        folder=str(folder),
        conceptmaps=MappingProxyType(conceptmaps),
        labels=MappingProxyType(labels),
        rules=MappingProxyType(rules),
        verify_flags=tuple(flags),
    )


# libyaml's safe loader when PyYAML was built with it (about 10x faster, the same
# documents); pure-Python SafeLoader otherwise. Either way only plain YAML types load.
_SAFE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_SAFE_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "-"
        raise MappingTableError(path.name, where, f"not valid YAML: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise MappingTableError(path.name, "-", f"cannot read: {exc}") from exc
    if not isinstance(doc, dict):
        raise MappingTableError(path.name, "-", "a table file must be a YAML mapping")
    return doc


def _header(doc: Mapping[str, Any], file: str) -> str:
    for key in ("table", "title", "source", "version", "owner"):
        if not isinstance(doc.get(key), str) or not doc[key].strip():
            raise MappingTableError(file, key, "header field is missing or empty")
    name: str = doc["table"]
    if not re.fullmatch(r"[a-z][a-z0-9-]*", name):
        raise MappingTableError(file, "table", f"table name {name!r} must be kebab-case")
    return name


def _unknown_keys(found: Mapping[str, Any], allowed: frozenset[str], file: str, row: str) -> None:
    extra = sorted(set(found) - allowed)
    if extra:
        raise MappingTableError(file, row, f"unknown key(s): {', '.join(extra)}")


def _system(value: object, file: str, row: str) -> str:
    if not isinstance(value, str) or not value:
        raise MappingTableError(file, row, "code system is missing")
    system = SYSTEM_ALIASES.get(value, value)
    if not _URI.match(system):
        raise MappingTableError(file, row, f"code system {value!r} is not a URI")
    return system


def _coding(raw: object, default_system: str | None, file: str, row: str) -> Coding:
    if not isinstance(raw, dict):
        raise MappingTableError(file, row, "a target must be a mapping with code and display")
    _unknown_keys(raw, CODING_KEYS, file, row)
    code, display = raw.get("code"), raw.get("display")
    if not isinstance(code, str) or not code.strip():
        raise MappingTableError(file, row, "target code is missing (quote numeric codes)")
    if not isinstance(display, str) or not display.strip():
        raise MappingTableError(file, row, f"target {code!r} has no display")
    verify = raw.get("verify", False)
    if not isinstance(verify, bool):
        raise MappingTableError(file, row, "verify must be true or false")
    system = _system(raw.get("system", default_system), file, row)
    return Coding(system=system, code=code, display=display, verify=verify)


def _targets(raw: object, default: str | None, file: str, row: str) -> tuple[Coding, ...]:
    if raw is None:
        return ()
    items = raw if isinstance(raw, list) else [raw]
    targets = tuple(
        _coding(item, default, file, f"{row} target[{i}]") for i, item in enumerate(items)
    )
    keys = [(t.system, t.code) for t in targets]
    if len(set(keys)) != len(keys):
        raise MappingTableError(file, row, "the same target code is listed twice")
    return targets


def _conceptmap(
    doc: Mapping[str, Any], file: str, name: str
) -> tuple[ConceptMapTable, list[VerifyFlag]]:
    _unknown_keys(doc, CONCEPTMAP_KEYS, file, "header")
    source_system = doc.get("source_system")
    if not isinstance(source_system, str):
        raise MappingTableError(file, "source_system", "header field is missing")
    _system(source_system, file, "source_system")
    default_target = doc.get("target_system")
    if default_target is not None:
        default_target = _system(default_target, file, "target_system")
    unmapped = doc.get("unmapped")
    if not isinstance(unmapped, dict) or unmapped.get("mode") not in UNMAPPED_MODES:
        raise MappingTableError(
            file, "unmapped", f"an explicit policy is required: mode one of {UNMAPPED_MODES}"
        )
    _unknown_keys(unmapped, frozenset({"mode", "target"}), file, "unmapped")
    fixed = _targets(unmapped.get("target"), default_target, file, "unmapped")
    if unmapped["mode"] == "fixed" and not fixed:
        raise MappingTableError(file, "unmapped", "mode fixed needs a target")
    raw_rows = doc.get("rows")
    if not isinstance(raw_rows, list) or not raw_rows:
        raise MappingTableError(file, "rows", "a table needs at least one row")
    rows: dict[str, tuple[Coding, ...]] = {}
    flags: list[VerifyFlag] = []
    for index, raw_row in enumerate(raw_rows):
        label = f"rows[{index}]"
        if not isinstance(raw_row, dict):
            raise MappingTableError(file, label, "a row must be a mapping")
        _unknown_keys(raw_row, ROW_KEYS, file, label)
        source = raw_row.get("source")
        if not isinstance(source, dict):
            raise MappingTableError(file, label, "row has no source")
        _unknown_keys(source, SOURCE_KEYS, file, label)
        code = source.get("code")
        if not isinstance(code, str) or not code:
            raise MappingTableError(file, label, "source code is missing (quote numeric codes)")
        label = f"rows[{index}] (code {code!r})"
        if code in rows:
            raise MappingTableError(file, label, "duplicate source code")
        if "target" not in raw_row:
            raise MappingTableError(file, label, "row has no target (write target: null)")
        rows[code] = _targets(raw_row["target"], default_target, file, label)
        flags.extend(VerifyFlag(file, label, t, name) for t in rows[code] if t.verify)
    flags.extend(VerifyFlag(file, "unmapped", t, name) for t in fixed if t.verify)
    table = ConceptMapTable(
        name=name,
        file=file,
        source_system=source_system,
        unmapped=unmapped["mode"],
        fixed=fixed,
        rows=MappingProxyType(rows),
    )
    return table, flags


def _labels(doc: Mapping[str, Any], file: str, name: str) -> tuple[LabelsTable, list[VerifyFlag]]:
    _unknown_keys(doc, LABELS_KEYS, file, "header")
    raw = doc.get("labels")
    if not isinstance(raw, dict) or not raw:
        raise MappingTableError(file, "labels", "section is missing or empty")
    codings: dict[str, Coding] = {}
    texts: dict[str, str] = {}
    for key, value in raw.items():
        row = f"labels.{key}"
        if isinstance(value, str):
            if not value.strip():
                raise MappingTableError(file, row, "text is empty")
            texts[key] = value
        else:
            codings[key] = _coding(value, None, file, row)
    flags = [VerifyFlag(file, f"labels.{k}", c, name) for k, c in codings.items() if c.verify]
    table = LabelsTable(name, file, MappingProxyType(codings), MappingProxyType(texts))
    return table, flags


def _rules(doc: Mapping[str, Any], file: str, name: str) -> RulesTable:
    _unknown_keys(doc, RULES_KEYS, file, "header")
    raw = doc.get("rules")
    if not isinstance(raw, dict) or not raw:
        raise MappingTableError(file, "rules", "section is missing or empty")
    values: dict[str, tuple[str, ...]] = {}
    for key, items in raw.items():
        row = f"rules.{key}"
        if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
            raise MappingTableError(file, row, "must be a list of non-empty strings")
        if len(set(items)) != len(items):
            raise MappingTableError(file, row, "a value is listed twice")
        values[key] = tuple(items)
    return RulesTable(name, file, MappingProxyType(values))


# Tables whose targets are identifier systems or identifiers, not codes: a flagged row is still
# used (without it no patient or owner is found) and must be confirmed before go-live.
IDENTIFIER_TABLES = frozenset({"identifier-systems", "oncologists"})


def confirmed(codings: Iterable[Coding]) -> tuple[Coding, ...]:
    """The codings that may be sent. A code flagged ``verify: true`` is not emitted until the
    site confirms it in its mapping tables (removes the flag); ``rtplan mappings check`` lists
    the codes held back."""
    return tuple(c for c in codings if not c.verify)


def concept(codings: Iterable[Coding], text: str) -> dict[str, Any]:
    """A CodeableConcept of the confirmed codings plus ``text`` (text alone when none is)."""
    kept = confirmed(codings)
    if not kept:
        return {"text": text}
    return {"coding": [c.as_fhir() for c in kept], "text": text}


def iter_verify_flags(tables: Tables) -> Iterator[VerifyFlag]:
    """Codes an analyst must confirm in a terminology browser before go-live."""
    yield from tables.verify_flags
