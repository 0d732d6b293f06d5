"""The PACS label against a real Orthanc (Debian, loopback only): C-STORE and STOW-RS add one
KO series to the planning study Orthanc already holds and change nothing else; a diagnostic
study gets no KOS; with the archive down, then up, the KOS arrives once."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from adapter.cli import main
from adapter.ingest.pipeline import log_key
from adapter.store.outbox import Outbox
from tests.peers.orthanc_fixture import OrthancPeer, value
from tests.store_backend import StoreUnderTest
from tests.support import FIXTURES, ROOT

pytestmark = [pytest.mark.peer, pytest.mark.store]

DICOM = FIXTURES / "dicom"
PLANNING = DICOM / "planning-ct"
DIAGNOSTIC = DICOM / "diagnostic-ct"
SERIES_UID, SOP_UID, MODALITY, SERIES_DESCRIPTION = "0020000E", "00080018", "00080060", "0008103E"
STUDY_DESCRIPTION, NUMBER_OF_INSTANCES = "00081030", "00201209"
LABEL = "RADIOTHERAPY PLANNING SCAN - NOT FOR DIAGNOSTIC USE"


def study_uid(folder: Path) -> str:
    first = sorted(folder.glob("*_CT_0001.dcm"))[0]
    return str(dcmread(first, stop_before_pixels=True).StudyInstanceUID)


def snapshot(peer: OrthancPeer, uid: str) -> dict[str, Any]:
    """What a PACS user sees of a study: its series (UID, modality, description, count) and
    every instance UID."""
    series = sorted(
        (
            value(s, SERIES_UID),
            value(s, MODALITY),
            value(s, SERIES_DESCRIPTION),
            value(s, NUMBER_OF_INSTANCES),
        )
        for s in peer.series(uid)
    )
    instances = sorted((value(i, SERIES_UID), value(i, SOP_UID)) for i in peer.instances(uid))
    (study,) = peer.qido("studies", StudyInstanceUID=uid, includefield="StudyDescription")
    return {"series": series, "instances": instances, "study": value(study, STUDY_DESCRIPTION)}


def hold_both_studies(peer: OrthancPeer) -> dict[str, dict[str, Any]]:
    peer.upload(sorted(PLANNING.glob("*.dcm")) + sorted(DIAGNOSTIC.glob("*.dcm")))
    return {uid: snapshot(peer, uid) for uid in (study_uid(PLANNING), study_uid(DIAGNOSTIC))}


def assert_labelled_once(peer: OrthancPeer, before: dict[str, dict[str, Any]], out: Path) -> None:
    planning, diagnostic = study_uid(PLANNING), study_uid(DIAGNOSTIC)
    after = snapshot(peer, planning)
    added = [s for s in after["series"] if s not in before[planning]["series"]]
    (ko,) = added
    assert ko[1:] == ("KO", LABEL, 1)  # one KO series with one instance
    # The original instances are unchanged: same series, descriptions, counts and UIDs.
    assert [s for s in after["series"] if s != ko] == before[planning]["series"]
    originals = [i for i in after["instances"] if i[0] != ko[0]]
    assert originals == before[planning]["instances"]
    assert after["study"] == before[planning]["study"]
    # The KOS on the PACS is the one the adapter built and recorded.
    (kos_file,) = sorted((out / "dicom").glob("*.dcm"))
    kos_instance = [i for i in after["instances"] if i[0] == ko[0]]
    assert kos_instance == [(ko[0], str(dcmread(kos_file).SOPInstanceUID))]
    # The diagnostic study got nothing.
    assert snapshot(peer, diagnostic) == before[diagnostic]


def label_state(store: StoreUnderTest, out: Path) -> str:
    with Outbox(store.at(out / "outbox.sqlite")) as outbox:
        return outbox.labels().status(study_uid(PLANNING)).state.value


def test_cstore_adds_one_ko_series_to_the_study_orthanc_holds(
    orthanc: OrthancPeer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture, store: StoreUnderTest,
) -> None:
    before = hold_both_studies(orthanc)
    monkeypatch.setenv("RTPLAN_LABEL__CSTORE", orthanc.cstore_target)
    out = tmp_path / "out"
    caplog.set_level(logging.DEBUG)
    code = main(["-v", "ingest", str(PLANNING), str(DIAGNOSTIC), "--out", str(out)])
    assert code == 0, capsys.readouterr()
    assert_labelled_once(orthanc, before, out)
    # Even with -v and DEBUG captured, no patient data in the logs.
    patient = dcmread(sorted(PLANNING.glob("*.dcm"))[0], stop_before_pixels=True)
    for value_ in (str(patient.PatientName), patient.PatientID, patient.AccessionNumber):
        assert value_ not in caplog.text
    assert "row" in caplog.text  # the logs were captured at all
    assert label_state(store, out) == "accepted"
    # Ingesting again sends nothing new: still one KO instance.
    assert main(["ingest", str(PLANNING), "--out", str(out)]) == 0
    assert_labelled_once(orthanc, before, out)


def test_stow_rs_adds_one_ko_series_to_the_study_orthanc_holds(
    orthanc: OrthancPeer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, store: StoreUnderTest,
) -> None:
    before = hold_both_studies(orthanc)
    monkeypatch.setenv("RTPLAN_LABEL__STOW_RS_URL", orthanc.dicomweb_url)
    out = tmp_path / "out"
    code = main(["ingest", str(PLANNING), str(DIAGNOSTIC), "--out", str(out)])
    assert code == 0, capsys.readouterr()
    assert_labelled_once(orthanc, before, out)
    assert label_state(store, out) == "accepted"
    with Outbox(store.at(out / "outbox.sqlite")) as outbox:
        (row,) = [r for r in outbox.rows() if r.destination == "pacs"]
    assert row.result == {"http": 200}


def test_a_cstore_refusal_is_a_dead_letter_not_a_crash(
    orthanc: OrthancPeer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, store: StoreUnderTest,
) -> None:
    # Orthanc checks the called AE title: a wrong one is rejected-permanent at association, a
    # dead letter at once (no resends), visible in the label state and the outbox.
    monkeypatch.setenv("RTPLAN_LABEL__CSTORE", f"WRONGAE@127.0.0.1:{orthanc.dicom_port}")
    out = tmp_path / "out"
    code = main(["ingest", str(PLANNING), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    assert "Delivery: 2 delivered, 1 gave up" in captured.out  # Bundle and KOS files written
    assert label_state(store, out) == "failed"
    with Outbox(store.at(out / "outbox.sqlite")) as outbox:
        (row,) = [r for r in outbox.rows() if r.destination == "pacs"]
    assert row.attempts == 1
    assert row.last_error == (
        "C-STORE WRONGAE: association rejected: Called AE title not recognised"
    )
    assert orthanc.qido("studies") == []  # nothing reached the archive


def test_archive_down_then_up_the_kos_arrives_once(
    orthanc_factory: Any, tmp_path: Path, store: StoreUnderTest
) -> None:
    peer: OrthancPeer = orthanc_factory()
    peer.start()
    before = hold_both_studies(peer)
    peer.stop()  # the archive goes down, keeping what it holds
    out = tmp_path / "out"
    env = {
        **os.environ,
        "RTPLAN_LABEL__CSTORE": peer.cstore_target,
        "RTPLAN_LABEL__TIMEOUT": "2",
        "RTPLAN_LABEL__INITIAL_WAIT": "0.2",
        "RTPLAN_LABEL__MAX_WAIT": "0.5",
    }
    command = [sys.executable, "-m", "adapter.cli", "ingest", str(PLANNING), str(DIAGNOSTIC),
               "--out", str(out)]  # fmt: skip
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as ingest:  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and _label_attempts(store, out) < 2:
                assert ingest.poll() is None, ingest.communicate()
                time.sleep(0.1)
            # It tried and failed while the archive was down.
            assert _label_attempts(store, out) >= 2
            peer.start()
            stdout, stderr = ingest.communicate(timeout=120)
        finally:
            if ingest.poll() is None:
                ingest.kill()
    assert ingest.returncode == 0, stderr
    assert "1 gave up" not in stdout
    assert_labelled_once(peer, before, out)
    assert label_state(store, out) == "accepted"
    assert f"PACS label {log_key(study_uid(PLANNING))}: KOS #1 (new)" in stdout


def _label_attempts(store: StoreUnderTest, out: Path) -> int:
    path = out / "outbox.sqlite"
    if not store.postgresql and not path.exists():
        return 0
    try:
        with Outbox(store.at(path)) as outbox:
            rows = [r for r in outbox.rows() if r.destination == "pacs"]
    except Exception:  # the ingest process may be creating the schema right now
        return 0
    return max((r.attempts for r in rows), default=0)


def test_cstore_over_tls_with_a_client_certificate(
    orthanc_factory: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, store: StoreUnderTest,
) -> None:
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("rtplan-adapter")
    files = {}
    for name, blob in (
        ("ca.pem", ca.cert_pem.bytes()),
        ("server.pem", server.cert_chain_pems[0].bytes()),
        ("server-key.pem", server.private_key_pem.bytes()),
        ("client.pem", client.cert_chain_pems[0].bytes()),
        ("client-key.pem", client.private_key_pem.bytes()),
    ):
        files[name] = tmp_path / name
        files[name].write_bytes(blob)
    peer: OrthancPeer = orthanc_factory(
        tls=(files["server.pem"], files["server-key.pem"], files["ca.pem"])
    )
    peer.start()
    before = hold_both_studies(peer)
    out = tmp_path / "out"
    config = tmp_path / "rtplan.yaml"
    config.write_text(
        "label:\n"
        f"  cstore: \"{peer.cstore_target}\"\n"
        "  tls: true\n"
        f"  ca_bundle: {files['ca.pem']}\n"
        f"  client_cert: {files['client.pem']}\n"
        f"  client_key: {files['client-key.pem']}\n"
    )
    code = main(["--config", str(config), "ingest", str(PLANNING), str(DIAGNOSTIC),
                 "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr()
    assert_labelled_once(peer, before, out)

    # Without TLS the same archive is unreachable: the row retries, then gives up, visibly.
    monkeypatch.setenv("RTPLAN_LABEL__MAX_ATTEMPTS", "1")
    plain = tmp_path / "plain"
    store.point_cli(monkeypatch, plain / "outbox.sqlite")  # a store of its own
    config.write_text(f"label:\n  cstore: \"{peer.cstore_target}\"\n  timeout: 3\n")
    assert main(["--config", str(config), "ingest", str(PLANNING), "--out", str(plain)]) == 1
    with Outbox(store.at(plain / "outbox.sqlite")) as outbox:
        (row,) = [r for r in outbox.rows() if r.destination == "pacs"]
    assert row.state.value == "dead"
    assert_labelled_once(peer, before, out)


def test_a_late_series_adds_a_superseding_kos_to_the_same_ko_series(
    orthanc: OrthancPeer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, store: StoreUnderTest,
) -> None:
    from tests.integration.test_label_cli import copy_without_declared_counts, late_series

    folder = copy_without_declared_counts(tmp_path)
    uid = study_uid(folder)
    orthanc.upload(sorted(folder.glob("*.dcm")))
    monkeypatch.setenv("RTPLAN_LABEL__CSTORE", orthanc.cstore_target)
    out = tmp_path / "out"
    assert main(["ingest", str(folder), "--out", str(out)]) == 0, capsys.readouterr()
    late_series(folder)
    orthanc.upload([folder / "late_CT_0001.dcm"])
    before = snapshot(orthanc, uid)
    assert main(["ingest", str(folder), "--out", str(out)]) == 0, capsys.readouterr()
    after = snapshot(orthanc, uid)
    (ko_before,) = [s for s in before["series"] if s[1] == "KO"]
    (ko_after,) = [s for s in after["series"] if s[1] == "KO"]
    assert ko_after[0] == ko_before[0]  # the same KO series ...
    assert (ko_before[3], ko_after[3]) == (1, 2)  # ... now with the superseding instance
    assert [s for s in after["series"] if s[1] != "KO"] == [
        s for s in before["series"] if s[1] != "KO"
    ]
    first, second = (str(dcmread(p).SOPInstanceUID) for p in sorted((out / "dicom").glob("*")))
    assert sorted(i[1] for i in after["instances"] if i[0] == ko_after[0]) == sorted(
        [first, second]
    )
    with Outbox(store.at(out / "outbox.sqlite")) as outbox:
        status = outbox.labels().status(uid)
    assert status.state.value == "accepted"
    assert status.current is not None and status.current.sop_instance_uid == second
    assert status.superseded == 1


def test_orthanc_listens_on_loopback_only(orthanc: OrthancPeer) -> None:
    from tests.peers.orthanc_fixture import listening_addresses

    assert orthanc.process is not None
    found = listening_addresses(orthanc.process.pid)
    assert {port for _, port in found} == {orthanc.http_port, orthanc.dicom_port}
    assert {address for address, _ in found} == {"127.0.0.1"}
