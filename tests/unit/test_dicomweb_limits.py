"""Hostile DICOMweb answers (a fake server: no real archive sends these) are refused with one
line naming the request and the problem, never a value from the answer."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from adapter.dicomweb.backload import qido_date
from adapter.dicomweb.client import DicomWebSource, Limits, SourceError
from adapter.errors import ConfigError

STUDY = "1.2.3.4"
DEFAULT = Limits()


def source(answer: httpx.Response | bytes, limits: Limits = DEFAULT) -> DicomWebSource:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(200, content=answer)

    return DicomWebSource("http://archive/dicom-web", limits=limits,
                          transport=httpx.MockTransport(handler))  # fmt: skip


def metadata(answer: httpx.Response | bytes, limits: Limits = DEFAULT) -> object:
    async def run() -> object:
        async with source(answer, limits) as web:
            return await web.metadata(STUDY)

    return asyncio.run(run())


def nested(depth: int) -> dict[str, object]:
    item: dict[str, object] = {"00080018": {"vr": "UI", "Value": ["1.2"]}}
    for _ in range(depth):
        item = {"00081115": {"vr": "SQ", "Value": [item]}}
    return item


@pytest.mark.parametrize(
    ("answer", "limits", "problem"),
    [
        (b"x" * 2000, Limits(max_bytes=1000), "answer larger than 1000 bytes"),
        (b"{not json", Limits(), "not JSON"),
        (b'{"00080018": {}}', Limits(), "not a DICOM JSON array of objects"),
        (json.dumps([{}] * 3).encode(), Limits(max_instances=2), "more than 2 instances"),
        (json.dumps([nested(5)]).encode(), Limits(max_depth=3), "nested too deeply"),
        (json.dumps([{"00100010": "TEST^PATIENT"}]).encode(), Limits(), "not an object"),
        (httpx.Response(500, text="TEST^PATIENT"), Limits(), "HTTP 500"),
    ],
)
def test_hostile_metadata_is_refused_with_one_line(
    answer: httpx.Response | bytes, limits: Limits, problem: str
) -> None:
    with pytest.raises(SourceError) as caught:
        metadata(answer, limits)
    message = str(caught.value)
    assert message.startswith("WADO-RS study metadata: ") and problem in message
    assert "TEST^PATIENT" not in message and "\n" not in message


def test_a_qido_result_without_a_valid_uid_is_refused() -> None:
    async def run() -> object:
        body = json.dumps([{"0020000D": {"vr": "UI", "Value": ["../../etc"]}}]).encode()
        async with source(body) as web:
            return await web.study_uids()

    with pytest.raises(SourceError, match="QIDO-RS /studies: a result without a valid study UID"):
        asyncio.run(run())


def test_qido_pages_until_a_short_page() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        offset = int(request.url.params["offset"])
        seen.append(f"{offset}:{request.url.params['StudyDate']}")
        uids = [f"1.2.{n}" for n in range(offset, min(offset + 2, 5))]
        return httpx.Response(200, json=[{"0020000D": {"vr": "UI", "Value": [u]}} for u in uids])

    async def run() -> list[str]:
        transport = httpx.MockTransport(handler)
        async with DicomWebSource("http://a/dw", page_size=2, transport=transport) as web:
            return await web.study_uids(since="20240101")

    assert asyncio.run(run()) == [f"1.2.{n}" for n in range(5)]
    assert seen == ["0:20240101-", "2:20240101-", "4:20240101-"]


@pytest.mark.parametrize(("text", "dicom"), [("2024-03-01", "20240301"), ("20240301", "20240301")])
def test_since_dates(text: str, dicom: str) -> None:
    assert qido_date(text) == dicom


def test_a_since_that_is_not_a_date_names_the_option() -> None:
    with pytest.raises(ConfigError, match="--since"):
        qido_date("last tuesday")
