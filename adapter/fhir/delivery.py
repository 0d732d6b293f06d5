"""Deliver one transaction Bundle and classify the answer (reliability.md §2).

- 2xx: delivered (ids and versions kept); a reconciliation search alerts on duplicates.
- Not sent (connect error, pool timeout): retry.
- No answer (timeouts, dropped connection, deadline), 500, 502, 504: the outcome is unknown.
  Reconcile by identifier first, then resend, because our Bundles are conditional writes and
  a resend is idempotent. A Bundle that is not idempotent is never resent blindly: dead.
- 429, 503: retry after Retry-After (an HTTP-date too), capped by the policy.
- 401 (after the auth layer's one refresh): dead, unauthorised.
- 409, HAPI-0550 unique-constraint conflict: reconcile, then retry.
- 412 (several matches): hold the key, raise a data-quality alert.
- A Bundle with conditional PATCH entries (review amendments and withdrawals) is sent as a
  read-modify-write with If-Match (``adapter/fhir/patches.py``); there a 412 (Medplum) or 409
  (HAPI) means "changed meanwhile": read again, up to ``PATCH_ATTEMPTS`` times.
- 400, 403, 404, 422 and other 4xx: dead, with the OperationOutcome's codes.

Reasons name statuses, issue codes and element paths, never diagnostics text or values:
servers echo patient data in diagnostics.
"""

from __future__ import annotations

import email.utils
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from adapter.errors import NoAnswer, NotSent
from adapter.fhir.auth import AuthRefused
from adapter.fhir.client import FhirClient, FhirResponse
from adapter.fhir.patches import conditional_patches, resolve_patches
from adapter.fhir.transaction_payload import TransactionPayload
from adapter.outbox.worker import Attempt, Verdict
from adapter.store import payloads
from adapter.store.outbox import Row

log = logging.getLogger(__name__)
JSON = dict[str, Any]
UNKNOWN_OUTCOME = frozenset({500, 502, 504})
HAPI_CONFLICT_MARKERS = ("HAPI-0550", "HFJ_RES_SEARCH_URL")
PATCH_ATTEMPTS = 3  # reads of a resource to patch when the server says it changed meanwhile
VERSION_CONFLICT = frozenset({409, 412})  # an If-Match that no longer matches


@dataclass(frozen=True, slots=True)
class Conditional:
    """A search that must find exactly one resource once the Bundle is in."""

    resource_type: str
    params: tuple[tuple[str, str], ...]


def conditionals(bundle: JSON) -> list[Conditional]:
    """The conditional entries of a transaction (conditional update/create)."""
    found = []
    for entry in bundle.get("entry", []):
        request = entry.get("request", {})
        url = str(request.get("url", ""))
        if "?" in url and request.get("method") in ("PUT", "POST"):
            kind, _, query = url.partition("?")
            found.append(Conditional(kind, tuple(parse_qsl(query))))
        elif request.get("method") == "POST" and request.get("ifNoneExist"):
            query = str(request["ifNoneExist"])
            found.append(Conditional(url, tuple(parse_qsl(query))))
    return found


def is_idempotent(bundle: JSON) -> bool:
    """True when every entry is a conditional write or a read: a resend cannot duplicate."""
    for entry in bundle.get("entry", []):
        request = entry.get("request", {})
        method = request.get("method")
        if method == "GET" or method == "DELETE":
            continue
        if method == "PUT":
            continue  # update by id or conditional update: idempotent
        if method == "POST" and request.get("ifNoneExist"):
            continue
        return False
    return True


def outcome_codes(response: FhirResponse) -> str:
    """Issue severity/code/expression only: diagnostics can contain patient data."""
    outcome = response.outcome
    if outcome is None:
        return ""
    parts = []
    for issue in outcome.get("issue", [])[:5]:
        where = ",".join(issue.get("expression", []) or issue.get("location", []))
        parts.append(
            f"{issue.get('severity', '?')}/{issue.get('code', '?')}"
            + (f"@{where}" if where else "")
        )
    return "; ".join(parts)


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """Parse Retry-After as delta-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def _is_hapi_conflict(response: FhirResponse) -> bool:
    outcome = response.outcome or {}
    text = " ".join(str(i.get("diagnostics", "")) for i in outcome.get("issue", []))
    return any(marker in text for marker in HAPI_CONFLICT_MARKERS)


def entry_results(body: JSON | None) -> JSON:
    """Server ids and versions from a transaction-response Bundle."""
    results = []
    for entry in (body or {}).get("entry", []):
        response = entry.get("response", {})
        location = str(response.get("location", ""))
        path = urlsplit(location).path if "://" in location else location
        parts = [p for p in path.split("/") if p]
        item: JSON = {"status": response.get("status", "")}
        if "_history" in parts:
            index = parts.index("_history")
            item.update(
                {"type": parts[index - 2], "id": parts[index - 1], "version": parts[index + 1]}
            )
        elif len(parts) >= 2:
            item.update({"type": parts[-2], "id": parts[-1]})
        if response.get("etag"):
            item["etag"] = response["etag"]
        results.append(item)
    return {"entries": results}


class FhirDeliverer:
    """Deliver ``fhir-transaction`` rows to one FHIR server."""

    def __init__(self, client: FhirClient, *, reconcile: bool = True) -> None:
        self.client = client
        self.reconcile = reconcile

    async def deliver(self, row: Row) -> Attempt:
        bundle = payloads.read_as(TransactionPayload, row.kind, row.payload).bundle
        if conditional_patches(bundle):
            return await self._deliver_patched(bundle)
        try:
            response = await self.client.transaction(bundle)
        except AuthRefused as exc:
            return Attempt(Verdict.DEAD, str(exc))
        except NotSent as exc:
            return Attempt(Verdict.RETRY, str(exc))
        except NoAnswer as exc:
            return await self._unknown_outcome(bundle, str(exc))
        return await self._classify(bundle, response)

    async def _deliver_patched(self, bundle: JSON) -> Attempt:
        """Read-modify-write of the PATCH entries (adapter/fhir/patches.py); a 412 on an
        If-Match means someone wrote in between: read again and re-apply."""
        for attempt in range(1, PATCH_ATTEMPTS + 1):
            try:
                resolved = await resolve_patches(self.client, bundle)
                if resolved.several:
                    alert = f"{resolved.several} to update matches several resources: data quality"
                    return Attempt(Verdict.HOLD, alert, alert=alert)
                if resolved.missing:
                    return Attempt(
                        Verdict.DEAD,
                        f"the {resolved.missing} to update is not on the server (was the earlier "
                        "version of the review delivered? see 'rtplan outbox dead')",
                    )
                if resolved.failed:
                    return Attempt(Verdict.RETRY, resolved.failed)
                response = await self.client.transaction(resolved.bundle)
            except AuthRefused as exc:
                return Attempt(Verdict.DEAD, str(exc))
            except NotSent as exc:
                return Attempt(Verdict.RETRY, str(exc))
            except NoAnswer as exc:
                # The next attempt reads again; re-applying an applied patch changes nothing.
                return Attempt(Verdict.RETRY, f"{exc}; the patch is re-read and re-applied")
            # Someone wrote between our read and our write: Medplum says 412, HAPI JPA 8.8 says
            # 409 (a version conflict) for an If-Match inside a transaction. Read again.
            changed = response.status in VERSION_CONFLICT and resolved.guarded
            if changed and attempt < PATCH_ATTEMPTS:
                continue
            if changed:
                return Attempt(
                    Verdict.RETRY, f"HTTP {response.status}: changed on the server while updating"
                )
            return await self._classify(resolved.bundle, response)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _classify(self, bundle: JSON, response: FhirResponse) -> Attempt:
        status = response.status
        codes = outcome_codes(response)
        detail = f"HTTP {status}" + (f" ({codes})" if codes else "")
        if response.ok:
            return await self._delivered(bundle, response)
        if status in (429, 503):
            wait = retry_after_seconds(response.headers.get("retry-after"), time.time())
            return Attempt(Verdict.RETRY, detail, retry_after=wait)
        if status == 412:
            alert = "several resources match a conditional write: data quality"
            return Attempt(Verdict.HOLD, f"{detail}: {alert}", alert=alert)
        if status == 409 or _is_hapi_conflict(response):
            return await self._unknown_outcome(bundle, f"{detail}: conflict")
        if status in UNKNOWN_OUTCOME:
            return await self._unknown_outcome(bundle, detail)
        if status == 401:
            return Attempt(Verdict.DEAD, f"{detail}: unauthorised after one token refresh")
        return Attempt(Verdict.DEAD, f"rejected: {detail}", result={"outcome": response.body})

    async def _delivered(self, bundle: JSON, response: FhirResponse) -> Attempt:
        result = entry_results(response.body)
        alert = ""
        if self.reconcile:
            try:
                duplicated = await self._duplicates(bundle)
            except (NotSent, NoAnswer):
                duplicated = []  # the write succeeded; the check can run again next time
            if duplicated:
                alert = f"{', '.join(duplicated)} matched more than one resource after the write"
                result["duplicates"] = duplicated
        return Attempt(Verdict.DELIVERED, result=result, alert=alert)

    async def _unknown_outcome(self, bundle: JSON, detail: str) -> Attempt:
        """The server may have applied the Bundle. Look before resending."""
        try:
            duplicated = await self._duplicates(bundle)
        except (NotSent, NoAnswer) as exc:
            return Attempt(Verdict.RETRY, f"{detail}; reconcile search failed: {exc}")
        if duplicated:
            alert = f"{', '.join(duplicated)} matched more than one resource: data quality"
            return Attempt(Verdict.HOLD, f"{detail}: {alert}", alert=alert)
        if not is_idempotent(bundle):
            return Attempt(
                Verdict.DEAD, f"{detail}: outcome unknown and the Bundle is not idempotent"
            )
        return Attempt(Verdict.RETRY, f"{detail}; reconciled, resending (conditional writes)")

    async def _duplicates(self, bundle: JSON) -> list[str]:
        """Resource types whose conditional search now matches more than one resource."""
        searches = [(c.resource_type, dict(c.params)) for c in conditionals(bundle)]
        totals = await self.client.counts(searches)
        return [kind for (kind, _), total in zip(searches, totals, strict=True) if (total or 0) > 1]
