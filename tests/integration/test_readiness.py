"""``GET /readyz`` checks every dependency of the process (docs/operations.md, "The HTTP API"):
the store, the FHIR server, the spool, the output folder, the HL7 receivers (real python-hl7
MLLP peer, up and down) and the PACS label destinations; the answer names the role, never a
host, path or value from the data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from adapter.config import ServeSettings, Settings, load_settings
from tests.api_support import api_settings, running_api
from tests.peers.hl7_receiver import Hl7Receiver
from tests.peers.launch import free_port

pytestmark = [pytest.mark.peer, pytest.mark.store]


def mllp_settings(tmp_path: Path, port: int, **env: str) -> Settings:
    base = load_settings(
        None,
        env={"RTPLAN_HL7__MLLP": "true", "RTPLAN_HL7__HOST": "127.0.0.1",
             "RTPLAN_HL7__PORT": str(port), **env},
    )  # fmt: skip
    return api_settings(base, tmp_path)


def test_readyz_needs_the_hl7_receiver_to_accept_a_connection(
    tmp_path: Path, hl7_receiver: Hl7Receiver
) -> None:
    settings = mllp_settings(tmp_path, hl7_receiver.port)
    with running_api(settings, tmp_path / "out") as api:
        assert api.get("/readyz").json() == {"status": "ready"}
        hl7_receiver.stop()  # the RIS goes away
        answer = api.get("/readyz")
    assert answer.status_code == 503
    assert answer.json() == {"detail": "HL7 receiver default-ris not reachable"}
    assert str(hl7_receiver.port) not in answer.text and "127.0.0.1" not in answer.text


def test_a_process_that_does_not_deliver_does_not_wait_for_the_receivers(tmp_path: Path) -> None:
    settings = mllp_settings(tmp_path, free_port())  # nothing listens there
    settings = replace(settings, serve=ServeSettings(mllp_listener=False, delivery=False))
    with running_api(settings, tmp_path / "out") as api:
        assert api.get("/readyz").json() == {"status": "ready"}


def test_readyz_names_every_failed_dependency_at_once(tmp_path: Path) -> None:
    closed = free_port()
    base = load_settings(
        None,
        env={
            "RTPLAN_FHIR__BASE_URL": f"http://127.0.0.1:{free_port()}/fhir",
            "RTPLAN_LABEL__CSTORE": f"ORTHANC@127.0.0.1:{closed}",
            "RTPLAN_LABEL__STOW_RS_URL": f"http://127.0.0.1:{closed}/dicom-web",
        },
    )
    spool = tmp_path / "spool-is-a-file"
    spool.write_text("not a folder")
    settings = api_settings(base, tmp_path)
    settings = replace(settings, dicom=replace(settings.dicom, listen_port=free_port(),
                                               spool_dir=str(spool)))  # fmt: skip
    with running_api(settings, tmp_path / "out") as api:
        answer = api.get("/readyz")
    assert answer.status_code == 503
    assert answer.json()["detail"].split("; ") == [
        "spool not writable",
        "FHIR server not reachable",
        "PACS C-STORE not reachable",
        "PACS STOW-RS not reachable",
    ]
    assert str(tmp_path) not in answer.text and str(closed) not in answer.text


def test_readyz_is_ready_when_the_spool_and_output_folder_take_files(tmp_path: Path) -> None:
    settings = api_settings(load_settings(None, env={}), tmp_path)
    spool = tmp_path / "spool"
    spool.mkdir()
    settings = replace(settings, dicom=replace(settings.dicom, listen_port=free_port(),
                                               spool_dir=str(spool)))  # fmt: skip
    with running_api(settings, tmp_path / "out") as api:
        assert api.get("/readyz").json() == {"status": "ready"}
    assert not list(spool.iterdir())  # the probe file is removed again


@pytest.mark.parametrize("spool_dir", ["", "/var/spool/rtplan"])
@pytest.mark.parametrize("out", [None, Path("/srv/out")])
def test_readiness_checks_the_spool_the_receiver_uses(spool_dir: str, out: Path | None) -> None:
    from adapter.api.readiness import spool_folder
    from adapter.receive.process import spool_path

    base = load_settings(None, env={})
    settings = replace(base, dicom=replace(base.dicom, spool_dir=spool_dir))
    assert spool_folder(settings, out) == spool_path(settings, out)
