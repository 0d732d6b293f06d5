"""QIDO-RS and WADO-RS metadata over httpx, with limits on what a hostile server can send.

* Every response body is read in chunks and refused beyond ``max_bytes`` (a study's metadata)
  or ``max_page_bytes`` (a QIDO page), before it is parsed.
* The JSON must be a list of objects; a study with more than ``max_instances`` instances, an
  element nesting deeper than ``max_depth`` sequences, or a UID that is not a UID is refused
  with one line naming what was wrong (never the value: it may be patient data).
* Requests are spaced by ``1 / rate`` seconds (the archive is a clinical system in use).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Final

import httpx

from adapter.errors import AdapterError

DICOM_JSON: Final = "application/dicom+json"
STUDY_UID_TAG: Final = "0020000D"
SOP_INSTANCE_UID_TAG: Final = "00080018"
STUDY_COUNT_TAG: Final = "00201208"  # Number of Study Related Instances
SERIES_COUNT_TAG: Final = "00201209"  # Number of Series Related Instances
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
JSON = dict[str, Any]


class SourceError(AdapterError):
    """The DICOMweb server's answer cannot be used (one line, no patient data)."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int = 256 * 1024 * 1024
    max_page_bytes: int = 16 * 1024 * 1024
    max_instances: int = 20_000
    max_depth: int = 8


class DicomWebSource:
    def __init__(
        self,
        base_url: str,
        *,
        rate: float = 0.0,
        page_size: int = 100,
        limits: Limits = Limits(),
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.page_size = page_size
        self.limits = limits
        self._last = 0.0
        # Study UID -> (0020,1208) from its QIDO-RS result, when the archive gave one.
        self.expected: dict[str, int] = {}
        self._http = httpx.AsyncClient(
            timeout=timeout, transport=transport, trust_env=False, follow_redirects=False
        )

    async def __aenter__(self) -> DicomWebSource:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    async def study_uids(self, *, since: str = "", study: str = "") -> list[str]:
        """Every matching Study Instance UID, page by page (``limit``/``offset``)."""
        if study:
            _check_uid(study, "--study")
            return [study]
        found: list[str] = []
        offset = 0
        while True:
            params = {"limit": str(self.page_size), "offset": str(offset)}
            params["includefield"] = STUDY_COUNT_TAG
            if since:
                params["StudyDate"] = f"{since}-"
            page = await self._get_json("/studies", params, self.limits.max_page_bytes)
            for item in page:
                uid = _first(item, STUDY_UID_TAG)
                if not isinstance(uid, str) or not _UID.match(uid) or len(uid) > 64:
                    raise SourceError("QIDO-RS /studies", "a result without a valid study UID")
                if uid not in found:
                    found.append(uid)
                count = _count(item, STUDY_COUNT_TAG)
                if count is not None:
                    self.expected[uid] = count
            if len(page) < self.page_size:
                return found
            offset += len(page)

    async def expected_instances(self, study_uid: str) -> int | None:
        """How many instances the archive says the study has: (0020,1208) from the study's
        QIDO-RS result, else the sum of its series' (0020,1209) (QIDO-RS
        ``/studies/{uid}/series``); None when the archive gives neither."""
        if study_uid in self.expected:
            return self.expected[study_uid]
        _check_uid(study_uid, "--study")
        series = await self._get_json(
            f"/studies/{study_uid}/series",
            {"includefield": SERIES_COUNT_TAG},
            self.limits.max_page_bytes,
            where="QIDO-RS study series",
        )
        counts = [_count(item, SERIES_COUNT_TAG) for item in series]
        if not counts or any(c is None for c in counts):
            return None
        return sum(c for c in counts if c is not None)

    async def metadata(self, study_uid: str) -> list[JSON]:
        """The study's instances as DICOM JSON objects (WADO-RS ``/metadata``)."""
        where = "WADO-RS study metadata"
        items = await self._get_json(
            f"/studies/{study_uid}/metadata", {}, self.limits.max_bytes, where=where
        )
        if len(items) > self.limits.max_instances:
            raise SourceError(where, f"more than {self.limits.max_instances} instances")
        for item in items:
            _check_depth(item, self.limits.max_depth, where)
        return items

    async def _get_json(
        self, path: str, params: dict[str, str], max_bytes: int, *, where: str = ""
    ) -> list[JSON]:
        where = where or f"QIDO-RS {path}"
        await self._pace()
        try:
            async with self._http.stream(
                "GET", self.base_url + path, params=params, headers={"Accept": DICOM_JSON}
            ) as response:
                if response.status_code == 204:
                    return []
                if response.status_code != 200:
                    raise SourceError(where, f"HTTP {response.status_code}")
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > max_bytes:
                        raise SourceError(where, f"answer larger than {max_bytes} bytes")
        except httpx.HTTPError as exc:
            raise SourceError(where, f"cannot reach the server ({type(exc).__name__})") from None
        if not body.strip():
            return []
        try:
            document = json.loads(bytes(body))
        except (ValueError, RecursionError):
            raise SourceError(where, "not JSON") from None
        if not isinstance(document, list) or not all(isinstance(i, dict) for i in document):
            raise SourceError(where, "not a DICOM JSON array of objects")
        return document

    async def _pace(self) -> None:
        if self.interval:
            wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last = time.monotonic()


def _first(item: JSON, tag: str) -> object:
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    return values[0] if isinstance(values, list) and values else None


def _count(item: JSON, tag: str) -> int | None:
    """A count attribute (IS, or a number in DICOM JSON); None when absent or not a count."""
    value = _first(item, tag)
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def instance_count(items: list[JSON]) -> int:
    """Distinct SOP Instance UIDs among the study's metadata items (an item without one still
    counts once: the reader reports it)."""
    uids = {_first(item, SOP_INSTANCE_UID_TAG) for item in items}
    unnamed = sum(1 for item in items if _first(item, SOP_INSTANCE_UID_TAG) is None)
    return len(uids - {None}) + unnamed


def _check_uid(uid: str, where: str) -> None:
    if not _UID.match(uid) or len(uid) > 64:
        raise SourceError(where, "not a DICOM UID")


def _check_depth(item: JSON, depth: int, where: str) -> None:
    if depth < 0:
        raise SourceError(where, "sequences nested too deeply")
    for element in item.values():
        if not isinstance(element, dict):
            raise SourceError(where, "an element that is not an object")
        if element.get("vr") == "SQ":
            for child in element.get("Value", []) or []:
                if not isinstance(child, dict):
                    raise SourceError(where, "a sequence item that is not an object")
                _check_depth(child, depth - 1, where)
