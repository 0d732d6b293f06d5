"""Conditional JSON Patch entries, delivered as read-modify-write with ``If-Match``.

A review amendment or withdrawal changes a few elements of a ServiceRequest and a radiology
Task that radiology may have changed since (status ``received``, owner, businessStatus,
output). The review Bundle therefore carries FHIR ``PATCH`` entries (JSON Patch in a Binary,
``ServiceRequest?identifier=...``) instead of whole resources. Servers differ in what they do
with a *conditional* patch inside a transaction, so before sending, each one is turned into:

1. a search on the identifier (exactly one match, else the row is held or dead);
2. the patch applied here, with the ``jsonpatch`` library, to the version read;
3. ``PUT Type/id`` with ``ifMatch: W/"<versionId>"`` in the same transaction as the rest.

A 412 means someone wrote in between: the deliverer reads again and re-applies (bounded).
A resource whose status is already final (radiology completed it, or it was revoked) keeps
its status: a withdrawal only appends its note there. Applying a patch twice changes nothing:
appending a note that is already there is skipped, and ``replace``/``add`` of a member set it
to the same value. So a resend after a lost answer is harmless, and an entry whose patch
changes nothing is left out of the transaction.
"""

from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import jsonpatch

from adapter.fhir.client import FhirClient

JSON = dict[str, Any]
# = adapter.mapping.review_bundle.JSON_PATCH (not imported: it would load the review model and
# pydantic into every FHIR delivery, ingest included)
JSON_PATCH = "application/json-patch+json"


@dataclass(frozen=True, slots=True)
class Resolved:
    """The Bundle to send, or why it cannot be sent."""

    bundle: JSON
    guarded: bool = False  # some entry carries If-Match: a 412 means "re-read"
    missing: str = ""  # a patch target is not on the server
    several: str = ""  # a patch target's identifier matches several resources
    failed: str = ""  # the search failed, or the patch does not apply


def conditional_patches(bundle: JSON) -> bool:
    return any(_is_conditional_patch(e) for e in bundle.get("entry", []))


def _is_conditional_patch(entry: JSON) -> bool:
    request = entry.get("request", {})
    return request.get("method") == "PATCH" and "?" in str(request.get("url", ""))


def operations(entry: JSON) -> list[JSON]:
    resource = entry.get("resource", {})
    if resource.get("resourceType") != "Binary" or resource.get("contentType") != JSON_PATCH:
        raise ValueError("a PATCH entry must carry a Binary of application/json-patch+json")
    value = json.loads(base64.b64decode(resource["data"]))
    if not isinstance(value, list):
        raise ValueError("a JSON Patch is a list of operations")
    return value


# Request/Task statuses after which nothing is pending: a withdrawal must not turn work that
# radiology completed (or that ended otherwise) into "cancelled".
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "revoked", "entered-in-error"})
STATUS_PATHS = frozenset({"/status", "/statusReason"})


def apply_idempotent(current: JSON, ops: list[JSON]) -> JSON:
    """``current`` with ``ops`` applied, one at a time; appending a value already in the
    array is skipped, and an append to an absent array creates it. A resource whose status is
    already final keeps its status and statusReason (a withdrawal then only adds its note)."""
    document = copy.deepcopy(current)
    final = current.get("status") in FINAL_STATUSES
    for op in ops:
        path = str(op.get("path", ""))
        if final and path in STATUS_PATHS:
            continue
        if op.get("op") == "add" and path.endswith("/-"):
            try:
                items = jsonpatch.JsonPointer(path[:-2]).resolve(document)
            except jsonpatch.JsonPointerException:
                op = {"op": "add", "path": path[:-2], "value": [op.get("value")]}
            else:
                if op.get("value") in items:
                    continue
        document = jsonpatch.apply_patch(document, [op])
    return document


async def resolve_patches(client: FhirClient, bundle: JSON) -> Resolved:
    """Turn each conditional PATCH entry into ``PUT Type/id`` + ``If-Match`` (see module)."""
    entries: list[JSON] = []
    guarded = False
    for entry in bundle.get("entry", []):
        if not _is_conditional_patch(entry):
            entries.append(entry)
            continue
        kind, _, query = str(entry["request"]["url"]).partition("?")
        response = await client.request("GET", kind, params=dict(parse_qsl(query)))
        if not response.ok or response.body is None:
            return Resolved(bundle, failed=f"{kind} search before patch: HTTP {response.status}")
        found = [
            e["resource"]
            for e in response.body.get("entry", [])
            if e.get("resource", {}).get("resourceType") == kind
        ]
        if not found:
            return Resolved(bundle, missing=kind)
        if len(found) > 1:
            return Resolved(bundle, several=kind)
        current = found[0]
        try:
            patched = apply_idempotent(current, operations(entry))
        except (ValueError, jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            return Resolved(bundle, failed=f"{kind} patch does not apply: {type(exc).__name__}")
        if patched == current:
            continue  # already applied (a resend after a lost answer)
        meta = dict(patched.get("meta", {}))
        version = str(meta.pop("versionId", ""))
        meta.pop("lastUpdated", None)
        if meta:
            patched["meta"] = meta
        else:
            patched.pop("meta", None)
        write: JSON = {"method": "PUT", "url": f"{kind}/{current['id']}"}
        if version:
            write["ifMatch"] = f'W/"{version}"'
            guarded = True
        full = f"{client.base_url.rstrip('/')}/{kind}/{current['id']}"
        entries.append({"fullUrl": full, "resource": patched, "request": write})
    return Resolved({**bundle, "entry": entries}, guarded=guarded)
