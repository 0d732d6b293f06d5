"""The receiver's answers to a sender (pynetdicom as the SCU): success only once the instance is
on disk; a failure status when it cannot be stored; refusal of a data set without its UIDs;
C-STORE over TLS with a client certificate."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import pytest
import trustme
from pydicom import dcmread
from pynetdicom import AE

from adapter.config import load_settings
from adapter.label.delivery import _close_socket
from adapter.receive.scp import Receiver
from adapter.receive.spool import Identity, Spool
from tests.receive_support import receiver_settings, running_receiver
from tests.support import FIXTURES

pytestmark = [pytest.mark.peer, pytest.mark.store]
CT = sorted((FIXTURES / "dicom" / "planning-ct").glob("*_CT_0001.dcm"))[0]


def send(port: int, path: Path, *, tls: ssl.SSLContext | None = None) -> int:
    ds = dcmread(path)
    ae = AE(ae_title="CTSIM1")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    tls_args = (tls, "localhost") if tls is not None else None
    assoc = ae.associate("127.0.0.1", port, ae_title="RTPLAN", tls_args=tls_args)
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status)
    finally:
        assoc.release()


def test_an_instance_that_cannot_be_stored_is_answered_with_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(self: Spool, raw: bytes, identity: Identity) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Spool, "store", disk_full)  # a fault no real sender can cause
    settings = receiver_settings(load_settings(None, env={}))
    with running_receiver(settings, tmp_path / "out") as service:
        assert send(service.port, CT) == 0xA700
        stats = service.stats()
    assert stats["failed"] == 1 and stats["received"] == 0


def test_an_instance_over_the_memory_budget_is_answered_a700_and_counted_as_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget is full when the whole instance is to be joined for writing (its fragments
    still fit): A700, counted, nothing spooled. A fault injected at that one call: no sender
    can time another association's memory to land there."""
    reserve = Receiver.reserve

    def full_for_whole_instances(self: Receiver, size: int) -> bool:
        joining = sys._getframe(1).f_code.co_name == "_perform"  # the joined copy's reservation
        return not joining and reserve(self, size)

    monkeypatch.setattr(Receiver, "reserve", full_for_whole_instances)
    settings = receiver_settings(load_settings(None, env={}))
    with running_receiver(settings, tmp_path / "out") as service:
        assert send(service.port, CT) == 0xA700
        stats = service.stats()
    assert stats["failed"] == 1 and stats["received"] == 0
    assert not list((tmp_path / "out" / "spool").rglob("*.dcm"))


def test_a_data_set_without_a_study_uid_is_refused_and_not_spooled(tmp_path: Path) -> None:
    ds = dcmread(CT)
    del ds.StudyInstanceUID
    broken = tmp_path / "broken.dcm"
    ds.save_as(broken)
    settings = receiver_settings(load_settings(None, env={}))
    with running_receiver(settings, tmp_path / "out") as service:
        assert send(service.port, broken) == 0xC000
        assert send(service.port, CT) == 0x0000
        stats = service.stats()
    assert stats["refused"] == 1 and stats["received"] == 1
    assert len(list((tmp_path / "out" / "spool").rglob("*.dcm"))) == 1


def test_cstore_over_tls_requires_a_client_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("ctsim1.example")
    cert, key, trusted = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(trusted))
    settings = receiver_settings(
        load_settings(None, env={}),
        tls_cert=str(cert),
        tls_key=str(key),
        tls_ca=str(trusted),
    )
    with running_receiver(settings, tmp_path / "out") as service:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(trusted))
        client.configure_cert(context)
        assert send(service.port, CT, tls=context) == 0x0000
        anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(trusted))
        ae = AE(ae_title="CTSIM1")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
        assoc = ae.associate(
            "127.0.0.1", service.port, ae_title="RTPLAN", tls_args=(anonymous, "localhost")
        )
        assert not assoc.is_established
        _close_socket(assoc)  # pynetdicom 3.0.4 leaves a refused TLS socket open
        stats = service.stats()
    assert stats["received"] == 1
