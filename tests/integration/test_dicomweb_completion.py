"""``rtplan ingest --dicomweb`` against a real Orthanc (DICOMweb plugin), through a recording
proxy (tests/peers/dicomweb_proxy.py):

* a study is read only when the instances retrieved reach the archive's QIDO-RS count
  ((0020,1208), or the sum of its series' (0020,1209)); one still arriving is skipped,
  unrecorded, and read by the next run;
* ``--rate N`` spaces the requests that reach the archive (counted at the proxy: the test fails
  if the rate is ignored, and tolerates a loaded machine, which only spaces them further).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from pydicom import dcmread

from adapter.cli import main
from adapter.ingest.pipeline import log_key
from adapter.store.outbox import Outbox
from tests.peers.dicomweb_proxy import DicomWebProxy
from tests.peers.orthanc_fixture import OrthancPeer
from tests.store_backend import StoreUnderTest
from tests.support import FIXTURES

pytest_plugins = ["tests.peers.orthanc_fixture"]
pytestmark = [pytest.mark.peer, pytest.mark.store]

DICOM = FIXTURES / "dicom"
CASES = ["planning-ct", "planning-mr", "diagnostic-ct", "pet-ct"]
PLANNING = sorted((DICOM / "planning-ct").glob("*.dcm"))


def planning_uid() -> str:
    return str(dcmread(PLANNING[0], stop_before_pixels=True).StudyInstanceUID)


def backload(url: str, out: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[
    int, dict[str, object], str
]:  # fmt: skip
    code = main(["ingest", "--dicomweb", url, "--out", str(out), "--json", *extra])
    stdout, stderr = capsys.readouterr()
    return code, json.loads(stdout), stderr


def test_a_study_still_arriving_at_the_archive_is_read_only_once_complete(
    orthanc: OrthancPeer, tmp_path: Path, capsys: pytest.CaptureFixture[str], store: StoreUnderTest
) -> None:
    orthanc.upload(PLANNING)
    uid, out = planning_uid(), tmp_path / "out"
    with DicomWebProxy(orthanc.http_url) as proxy:
        proxy.drop_last_instance_of = uid  # one instance not retrievable yet
        code, summary, err = backload(f"{proxy.url}/dicom-web", out, capsys)
        assert code == 1  # not done
        assert summary["studies_found"] == 1 and summary["studies_incomplete_at_archive"] == 1
        assert summary["mapped"] == 0
        total = len(PLANNING)
        line = f"{log_key(uid)}: incomplete at the archive ({total - 1} of {total} instances)"
        assert line in err
        # The count came from the study's own QIDO-RS result: no series query was needed.
        assert not [p for _, p in proxy.requests if p.endswith("/series")]
        assert not list(out.glob("fhir/*.json"))
        with Outbox(store.at(out / "outbox.sqlite")) as outbox:
            assert outbox.study(uid) is None  # not recorded: the next run reads it
        proxy.drop_last_instance_of = ""  # the rest has arrived
        code, summary, _ = backload(f"{proxy.url}/dicom-web", out, capsys)
    assert code == 0
    assert summary["studies_incomplete_at_archive"] == 0 and summary["mapped"] == 1
    assert list(out.glob("fhir/ImagingStudy-*.json"))


def test_study_uid_uses_the_series_counts(
    orthanc: OrthancPeer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--study UID`` has no QIDO-RS study result: the series' (0020,1209) are summed."""
    orthanc.upload(PLANNING)
    uid = planning_uid()
    with DicomWebProxy(orthanc.http_url) as proxy:
        proxy.drop_last_instance_of = uid
        url = f"{proxy.url}/dicom-web"
        code, summary, err = backload(url, tmp_path / "a", capsys, "--study", uid)
        assert code == 1 and summary["studies_incomplete_at_archive"] == 1
        assert f"/dicom-web/studies/{uid}/series" in [p for _, p in proxy.requests]
        assert "incomplete at the archive" in err
        proxy.drop_last_instance_of = ""
        code, summary, _ = backload(url, tmp_path / "a", capsys, "--study", uid)
    assert code == 0 and summary["mapped"] == 1


def test_rate_spaces_the_requests_that_reach_the_archive(
    orthanc: OrthancPeer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    orthanc.upload([p for case in CASES for p in sorted((DICOM / case).glob("*.dcm"))])
    with DicomWebProxy(orthanc.http_url) as proxy:
        code, summary, _ = backload(f"{proxy.url}/dicom-web", tmp_path / "out", capsys,
                                    "--rate", "1")  # fmt: skip
        arrivals = [t for t, _ in proxy.requests]
    assert summary["studies_found"] == len(CASES) and code in (0, 1)
    assert len(arrivals) >= len(CASES) + 1  # one QIDO-RS page, one metadata read per study
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # At 1 request/s each gap is ~1 s; without the limit the QIDO-RS page and the first
    # metadata read arrive milliseconds apart. Half a second absorbs the loopback jitter.
    assert min(gaps) >= 0.5, gaps
    assert arrivals[-1] - arrivals[0] >= 0.9 * (len(arrivals) - 1), gaps
