"""The C-STORE receiver against real senders: Orthanc pushes studies (``/modalities/../store``)
and dcmtk's ``storescu`` sends the same study twice, and in two halves with a pause longer than
the quiet period. Output goes to the embedded default sinks (``--out``)."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from adapter.config import load_settings
from adapter.ingest.pipeline import log_key
from adapter.receive.service import ReceiveService
from adapter.store.outbox import Outbox
from tests.peers.orthanc_fixture import OrthancPeer
from tests.receive_support import receiver_settings, running_receiver, wait_for
from tests.store_backend import StoreUnderTest
from tests.support import FIXTURES, make_study

pytest_plugins = ["tests.peers.orthanc_fixture"]
pytestmark = [pytest.mark.peer, pytest.mark.store]

PLANNING = FIXTURES / "dicom" / "planning-ct"
DIAGNOSTIC = FIXTURES / "dicom" / "diagnostic-ct"


def study_uid(folder: Path) -> str:
    first = sorted(folder.glob("*.dcm"))[0]
    return str(dcmread(first, stop_before_pixels=True).StudyInstanceUID)


def storescu(
    port: int, files: list[Path], *, calling: str = "CTSIM1"
) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("storescu")
    if exe is None:
        pytest.fail("dcmtk storescu is missing; install the Debian package dcmtk", pytrace=False)
    assert exe is not None
    cmd = [exe, "-aet", calling, "-aec", "RTPLAN", "127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def imaging_studies(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    resources = [e["resource"] for e in bundle["entry"]]
    return [r for r in resources if r["resourceType"] == "ImagingStudy"]


def transactions(store: StoreUnderTest, out: Path, uid: str) -> int:
    with Outbox(store.at(out / "outbox.sqlite")) as outbox:
        return len(outbox.rows_for_key(f"study:{uid}", kind="fhir-transaction"))


def report(out: Path, uid: str) -> dict[str, object]:
    path = out / "received" / f"{log_key(uid)}.json"
    result: dict[str, object] = json.loads(path.read_text())
    return result


def processed(service: ReceiveService, n: int) -> bool:
    assert service.processor is not None
    counts = service.processor.counts
    return sum(v for k, v in counts.items() if k not in ("errors", "rejected_files")) >= n


def test_orthanc_pushes_a_planning_and_a_diagnostic_study(
    orthanc: OrthancPeer, tmp_path: Path, store: StoreUnderTest
) -> None:
    out = tmp_path / "out"
    settings = receiver_settings(load_settings(None, env={}), quiet=30.0)
    orthanc.upload(sorted(PLANNING.glob("*.dcm")) + sorted(DIAGNOSTIC.glob("*.dcm")))
    with running_receiver(settings, out) as service, orthanc.client() as http:
        modality = {"AET": "RTPLAN", "Host": "127.0.0.1", "Port": service.port}
        http.put("/modalities/rtplan", json=modality).raise_for_status()
        studies = http.get("/studies").json()
        assert len(studies) == 2
        answer = http.post("/modalities/rtplan/store", json={"Resources": studies}, timeout=60)
        answer.raise_for_status()
        # (0020,1208) gives the count, so both are processed well before the 30 s quiet period.
        wait_for(lambda: processed(service, 2), timeout=25, what="both studies processed")
        stats = service.stats()
    planning, diagnostic = study_uid(PLANNING), study_uid(DIAGNOSTIC)
    assert report(out, planning)["status"] == "mapped"
    assert report(out, diagnostic)["status"] == "held-not-planning"
    assert report(out, diagnostic)["planning_scan"] is False
    bundle = json.loads((out / "fhir" / f"ImagingStudy-{log_key(planning)}.json").read_text())
    types = sorted(e["resource"]["resourceType"] for e in bundle["entry"])
    assert "ImagingStudy" in types and "Task" in types
    (study,) = imaging_studies(bundle)
    assert study["numberOfInstances"] == 10
    assert not (out / "fhir" / f"ImagingStudy-{log_key(diagnostic)}.json").exists()
    assert transactions(store, out, diagnostic) == 0
    assert len(list((out / "dicom").glob("KOS-*.dcm"))) == 1  # the PACS label, planning only
    assert stats["received"] == 18 and stats["associations"] >= 1
    # The spool entries are settled: nothing waits; headers kept, private.
    spool = out / "spool"
    assert not any((spool / "incoming").iterdir())
    kept = list((spool / "studies").rglob("*.dcm"))
    assert len(kept) == 18
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in kept)
    assert all("PixelData" not in dcmread(p) for p in kept)  # cut before the pixels


def test_storescu_twice_and_in_two_halves_gives_one_complete_study(
    tmp_path: Path, store: StoreUnderTest
) -> None:
    out = tmp_path / "out"
    settings = receiver_settings(load_settings(None, env={}), quiet=2.0)
    folder, uid = make_study(tmp_path / "src", slices=8)
    files = sorted(folder.glob("*.dcm"))
    images = [f for f in files if "_CT_" in f.name]
    others = [f for f in files if f not in images]
    first, second = images[:4], images[4:] + others
    with running_receiver(settings, out) as service:
        sent = storescu(service.port, first)
        assert sent.returncode == 0, sent.stderr
        # Half a study, then silence longer than the quiet period: processed, and held.
        wait_for(lambda: processed(service, 1), timeout=30, what="first half processed")
        assert report(out, uid)["status"] == "held-incomplete"
        assert transactions(store, out, uid) == 0
        time.sleep(1.0)
        sent = storescu(service.port, second)
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: processed(service, 2), timeout=30, what="second half processed")
        assert report(out, uid)["status"] == "mapped"
        assert report(out, uid)["complete"] is True
        # The whole study again: every instance is a duplicate, nothing is processed.
        sent = storescu(service.port, files)
        assert sent.returncode == 0, sent.stderr
        time.sleep(settings.dicom.quiet_seconds + 1.5)
        stats = service.stats()
    assert stats["received"] == len(files)
    assert stats["duplicates"] == len(files)
    assert stats["studies_held_incomplete"] == 1 and stats["studies_mapped"] == 1
    assert transactions(store, out, uid) == 1  # one ImagingStudy, written once
    bundle = json.loads((out / "fhir" / f"ImagingStudy-{log_key(uid)}.json").read_text())
    (study,) = imaging_studies(bundle)
    assert study["numberOfInstances"] == len(files)


def test_a_late_instance_updates_the_same_imaging_study(
    tmp_path: Path, store: StoreUnderTest
) -> None:
    out = tmp_path / "out"
    settings = receiver_settings(load_settings(None, env={}), quiet=1.0)
    folder, uid = make_study(tmp_path / "src", slices=4)
    files = sorted(folder.glob("*.dcm"))
    for path in files:  # no expected count: the first batch is complete as far as anyone knows
        ds = dcmread(path)
        del ds[0x00201208]
        ds.save_as(path)
    late = next(f for f in files if "RTPLAN" in f.name)
    with running_receiver(settings, out) as service:
        assert storescu(service.port, [f for f in files if f != late]).returncode == 0
        wait_for(lambda: processed(service, 1), timeout=30, what="study processed")
        # Complete only as far as anyone can tell: the report says no count was declared.
        assert report(out, uid)["complete"] is True
        assert report(out, uid)["declared_instances"] is None
        assert storescu(service.port, [late]).returncode == 0
        wait_for(lambda: processed(service, 2), timeout=30, what="late instance processed")
    assert transactions(store, out, uid) == 2  # the same key: the second updates the ImagingStudy
    bundle = json.loads((out / "fhir" / f"ImagingStudy-{log_key(uid)}.json").read_text())
    (study,) = imaging_studies(bundle)
    assert study["numberOfInstances"] == len(files)


def test_a_caller_not_on_the_allow_list_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    settings = receiver_settings(load_settings(None, env={}), allowed_callers=("CTSIM1",))
    with running_receiver(settings, out) as service:
        refused = storescu(service.port, sorted(PLANNING.glob("*.dcm"))[:1], calling="INTRUDER")
        assert refused.returncode != 0
        accepted = storescu(service.port, sorted(PLANNING.glob("*.dcm"))[:1], calling="CTSIM1")
        assert accepted.returncode == 0, accepted.stderr
        stats = service.stats()
    assert stats["received"] == 1 and stats["associations_rejected"] == 1


def test_a_diagnostic_study_sent_as_a_listed_simulator_is_still_held(
    tmp_path: Path, store: StoreUnderTest
) -> None:
    """The calling AE title is a claim: a diagnostic CT pushed by a caller calling itself
    ``CTSIM1`` (a simulator in the bundled ``ae_titles`` rule, and on the allow-list) is held
    as not planning, as the same files are from a folder; it is not labelled on PACS."""
    out = tmp_path / "out"
    settings = receiver_settings(load_settings(None, env={}), allowed_callers=("CTSIM1",))
    uid = study_uid(DIAGNOSTIC)
    with running_receiver(settings, out) as service:
        sent = storescu(service.port, sorted(DIAGNOSTIC.glob("*.dcm")), calling="CTSIM1")
        assert sent.returncode == 0, sent.stderr
        wait_for(lambda: processed(service, 1), timeout=30, what="study processed")
    assert report(out, uid)["status"] == "held-not-planning"
    assert report(out, uid)["planning_scan"] is False
    assert transactions(store, out, uid) == 0
    assert not list((out / "dicom").glob("KOS-*.dcm"))
