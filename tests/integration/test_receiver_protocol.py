"""The C-STORE receiver's upper layer against real senders (dcmtk ``storescu``/``echoscu``,
pynetdicom) and against a raw socket for what no well-behaved sender does: garbage, oversized
PDUs, an abort mid-instance, too many associations, silence, and a stop with an association
open. Each instance lands byte for byte; each fault is one log line, never a traceback."""

from __future__ import annotations

import contextlib
import logging
import shutil
import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme
from pydicom import dcmread
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRBigEndian
from pynetdicom import AE

from adapter.config import DicomSettings
from adapter.receive import scp
from adapter.receive.scp import Receiver
from adapter.receive.spool import INCOMING, Spool
from tests.peers.launch import free_port
from tests.receive_support import data_set_offset
from tests.support import FIXTURES

pytestmark = [pytest.mark.peer]
CT_FILES = sorted((FIXTURES / "dicom" / "planning-ct").glob("*_CT_*.dcm"))
CT = CT_FILES[0]
CT_STORAGE = b"1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = b"1.2.840.10008.1.2.1"


@contextmanager
def receiving(tmp_path: Path, **settings: object) -> Iterator[Receiver]:
    receiver = Receiver(
        DicomSettings(listen_port=free_port(), **settings),  # type: ignore[arg-type]
        Spool(tmp_path / "spool"),
    )
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


def dcmtk(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(tool)
    if exe is None:
        pytest.fail(f"dcmtk {tool} is missing; install the Debian package dcmtk", pytrace=False)
    assert exe is not None
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, check=False)


def spooled(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "spool" / INCOMING).rglob("*.dcm"))


# A requestor written from PS3.8 §9.3 with struct alone (not with the receiver's own codec).
def item(kind: int, value: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(value)) + value


def associate_rq(
    *,
    called: bytes = b"RTPLAN",
    contexts: tuple[bytes, ...] = (CT_STORAGE,),
    syntax: bytes = EXPLICIT_LE,
    ids: tuple[int, ...] = (),
) -> bytes:
    body = struct.pack(">HH", 1, 0) + called.ljust(16) + b"CTSIM1".ljust(16) + bytes(32)
    body += item(0x10, b"1.2.840.10008.3.1.1.1")
    for number, abstract in enumerate(contexts):
        proposed = item(0x30, abstract) + item(0x40, syntax)
        context_id = ids[number] if ids else 2 * number + 1
        body += item(0x20, bytes((context_id, 0, 0, 0)) + proposed)
    body += item(0x50, item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.3.4"))
    return struct.pack(">BxI", 1, len(body)) + body


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    header = recv_exactly(sock, 6)
    kind, length = struct.unpack(">BxI", header)
    return kind, recv_exactly(sock, length)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


@contextmanager
def connected(receiver: Receiver) -> Iterator[socket.socket]:
    sock = socket.create_connection(("127.0.0.1", receiver.port), timeout=10)
    try:
        yield sock
    finally:
        sock.close()


def associated(sock: socket.socket) -> None:
    sock.sendall(associate_rq())
    kind, _ = read_pdu(sock)
    assert kind == 0x02, "A-ASSOCIATE-AC expected"


def closed_after_abort(sock: socket.socket) -> bool:
    kind, body = read_pdu(sock)
    assert kind == 0x07 and body[2] == 2, "an A-ABORT from the service provider"
    return sock.recv(1) == b""


def test_storescu_instances_are_spooled_byte_for_byte(tmp_path: Path) -> None:
    with receiving(tmp_path) as receiver:
        result = dcmtk(
            "storescu", "-aet", "CTSIM1", "-aec", "RTPLAN", "127.0.0.1", str(receiver.port),
            *map(str, CT_FILES[:3]),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        counts = dict(receiver.counts)
    assert counts["received"] == 3 and counts["associations"] == 1
    sent = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p.read_bytes() for p in CT_FILES}
    for path in spooled(tmp_path):
        raw = path.read_bytes()
        meta = dcmread(path, stop_before_pixels=True).file_meta
        original = sent[meta.MediaStorageSOPInstanceUID]
        assert raw[data_set_offset(raw) :] == original[data_set_offset(original) :]
        assert meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert "SourceApplicationEntityTitle" not in meta  # a calling AE is not evidence
        assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("option", "syntax"),
    [("-xi", "1.2.840.10008.1.2"), ("-xd", "1.2.840.10008.1.2.1.99")],
    ids=["implicit", "deflated"],
)
def test_a_syntax_the_sender_converts_to_is_spooled_as_sent(
    tmp_path: Path, option: str, syntax: str
) -> None:
    with receiving(tmp_path) as receiver:
        result = dcmtk(
            "storescu", option, "-aet", "CTSIM1", "-aec", "RTPLAN", "127.0.0.1",
            str(receiver.port), str(CT),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    assert_spooled_whole(tmp_path, syntax)


def test_a_big_endian_file_is_spooled_as_sent(tmp_path: Path) -> None:
    big = tmp_path / "big.dcm"
    ds = dcmread(CT)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    dcmwrite(big, ds, implicit_vr=False, little_endian=False, force_encoding=True)
    with receiving(tmp_path) as receiver:
        result = dcmtk(
            "storescu", "-aet", "CTSIM1", "-aec", "RTPLAN", "127.0.0.1", str(receiver.port),
            str(big),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    assert_spooled_whole(tmp_path, ExplicitVRBigEndian)


def assert_spooled_whole(tmp_path: Path, syntax: str) -> None:
    [path] = spooled(tmp_path)
    ds = dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == syntax
    assert ds.SOPInstanceUID == dcmread(CT, stop_before_pixels=True).SOPInstanceUID
    assert ds.pixel_array.shape == (ds.Rows, ds.Columns)


def test_echoscu_is_answered(tmp_path: Path) -> None:
    with receiving(tmp_path) as receiver:
        result = dcmtk(
            "echoscu", "-aet", "CTSIM1", "-aec", "RTPLAN", "127.0.0.1", str(receiver.port)
        )
    assert result.returncode == 0, result.stderr


def test_a_wrong_called_title_is_rejected_and_counted(tmp_path: Path) -> None:
    with receiving(tmp_path) as receiver:
        result = dcmtk(
            "storescu", "-aet", "CTSIM1", "-aec", "PACS", "127.0.0.1", str(receiver.port), str(CT)
        )
        counts = dict(receiver.counts)
    assert result.returncode != 0 and "Called AE Title Not Recognized" in result.stderr
    assert counts["associations_rejected"] == 1 and counts["received"] == 0
    assert spooled(tmp_path) == []


def test_unsupported_presentation_contexts_are_refused_one_by_one(tmp_path: Path) -> None:
    ae = AE(ae_title="CTSIM1")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.2.2.1")  # Study Root FIND: not ours
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", ["1.2.3.4.5"])  # MR, unknown syntax
    with receiving(tmp_path) as receiver:
        assoc = ae.associate("127.0.0.1", receiver.port, ae_title="RTPLAN")
        try:
            assert assoc.is_established
            accepted = [c.abstract_syntax for c in assoc.accepted_contexts]
            refused = {c.abstract_syntax: c.result for c in assoc.rejected_contexts}
            assert int(assoc.send_c_store(dcmread(CT)).Status) == 0x0000
        finally:
            assoc.release()
    assert accepted == ["1.2.840.10008.5.1.4.1.1.2"]
    assert refused == {"1.2.840.10008.5.1.4.1.2.2.1": 3, "1.2.840.10008.5.1.4.1.1.4": 4}


def test_garbage_instead_of_an_association_request_is_aborted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with receiving(tmp_path) as receiver, connected(receiver) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed_after_abort(sock)
    assert "unrecognized PDU type 0x47" in caplog.text
    assert "Traceback" not in caplog.text


def test_a_pdu_over_the_announced_maximum_is_aborted(tmp_path: Path) -> None:
    with receiving(tmp_path) as receiver, connected(receiver) as sock:
        associated(sock)
        sock.sendall(struct.pack(">BxI", 0x04, scp.MAX_PDU_LENGTH + 1))
        assert closed_after_abort(sock)


def test_an_abort_mid_instance_spools_nothing_and_the_next_sender_is_served(
    tmp_path: Path,
) -> None:
    raw = CT.read_bytes()
    with receiving(tmp_path) as receiver:
        with connected(receiver) as sock:
            associated(sock)
            half = raw[data_set_offset(raw) :][:4000]
            pdv = struct.pack(">IBB", len(half) + 2, 1, 0x00) + half  # data, not last
            command = store_command(dcmread(CT, stop_before_pixels=True).SOPInstanceUID)
            cmd_pdv = struct.pack(">IBB", len(command) + 2, 1, 0x03) + command
            sock.sendall(struct.pack(">BxI", 0x04, len(cmd_pdv)) + cmd_pdv)
            sock.sendall(struct.pack(">BxI", 0x04, len(pdv)) + pdv)
            sock.sendall(struct.pack(">BxI", 0x07, 4) + bytes((0, 0, 0, 0)))
            assert sock.recv(1) == b""  # the receiver closes after the peer's abort
        result = dcmtk(
            "storescu", "-aet", "CTSIM1", "-aec", "RTPLAN", "127.0.0.1", str(receiver.port), str(CT)
        )
        counts = dict(receiver.counts)
    assert result.returncode == 0, result.stderr
    assert counts["received"] == 1 and len(spooled(tmp_path)) == 1


def store_command(
    instance_uid: str, message_id: int = 7, sop_class: str = "1.2.840.10008.5.1.4.1.1.2"
) -> bytes:
    """A C-STORE-RQ command set (PS3.7 §9.3.1.1), Implicit VR Little Endian."""

    def element(tag: int, value: bytes) -> bytes:
        return struct.pack("<HHI", 0, tag, len(value)) + value

    def uid(text: str) -> bytes:
        raw = text.encode()
        return raw + b"\x00" * (len(raw) % 2)

    body = (
        element(0x0002, uid(sop_class))
        + element(0x0100, struct.pack("<H", 0x0001))
        + element(0x0110, struct.pack("<H", message_id))
        + element(0x0700, struct.pack("<H", 0))
        + element(0x0800, struct.pack("<H", 0x0000))
        + element(0x1000, uid(instance_uid))
    )
    return element(0x0000, struct.pack("<I", len(body))) + body


def test_data_sets_over_the_memory_budget_are_aborted_and_the_budget_returned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small, large = tmp_path / "small.dcm", tmp_path / "large.dcm"
    ds = dcmread(CT)
    ds.save_as(small)
    ds.add_new(0x00291010, "OB", bytes(256 * 1024))  # a large private element
    ds.save_as(large)
    # Held while it arrives and once more while it is joined and written: twice its size.
    budget = 3 * small.stat().st_size + 64 * 1024
    assert large.stat().st_size > budget
    monkeypatch.setattr(scp, "MAX_BUFFERED_BYTES", budget)
    with receiving(tmp_path) as receiver:
        args = ["-aet", "CTSIM1", "-aec", "RTPLAN", "127.0.0.1", str(receiver.port)]
        refused = dcmtk("storescu", *args, str(large))
        accepted = dcmtk("storescu", *args, str(small))
        counts = dict(receiver.counts)
        assert receiver._buffered == 0
    assert refused.returncode != 0 and accepted.returncode == 0, accepted.stderr
    assert counts["received"] == 1 and len(spooled(tmp_path)) == 1


def test_a_response_sent_as_a_request_is_aborted(tmp_path: Path) -> None:
    command = bytearray(store_command("1.2.3.4"))
    at = command.index(struct.pack("<HHIH", 0, 0x0100, 2, 0x0001))
    command[at + 8 : at + 10] = struct.pack("<H", 0x8001)  # C-STORE-RSP
    with receiving(tmp_path) as receiver, connected(receiver) as sock:
        associated(sock)
        pdv = struct.pack(">IBB", len(command) + 2, 1, 0x03) + bytes(command)
        sock.sendall(struct.pack(">BxI", 0x04, len(pdv)) + pdv)
        assert closed_after_abort(sock)


def test_one_association_too_many_is_rejected_as_transient(tmp_path: Path) -> None:
    with receiving(tmp_path) as receiver:
        sockets = [socket.create_connection(("127.0.0.1", receiver.port), timeout=10)]
        try:
            for sock in sockets:
                associated(sock)
            for _ in range(scp.MAX_ASSOCIATIONS - 1):
                sockets.append(socket.create_connection(("127.0.0.1", receiver.port), timeout=10))
                associated(sockets[-1])
            with connected(receiver) as extra:
                extra.sendall(associate_rq())
                kind, body = read_pdu(extra)
                assert (kind, body[1], body[2], body[3]) == (0x03, 2, 3, 2)
            sockets.pop().close()
            deadline = time.monotonic() + 10
            while receiver.counts["associations"] < scp.MAX_ASSOCIATIONS + 1:
                with connected(receiver) as again:
                    again.sendall(associate_rq())
                    if read_pdu(again)[0] == 0x02:
                        break
                assert time.monotonic() < deadline, "a closed association was not released"
                time.sleep(0.05)
        finally:
            for sock in sockets:
                sock.close()


def test_silence_before_the_association_request_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scp, "REQUEST_TIMEOUT", 0.3)
    with receiving(tmp_path) as receiver, connected(receiver) as sock:
        started = time.monotonic()
        assert closed_after_abort(sock)
    assert time.monotonic() - started < 5


def test_stop_ends_an_open_association_promptly(tmp_path: Path) -> None:
    receiver = Receiver(DicomSettings(listen_port=free_port()), Spool(tmp_path / "spool"))
    receiver.start()
    sock = socket.create_connection(("127.0.0.1", receiver.port), timeout=10)
    try:
        associated(sock)
        started = time.monotonic()
        receiver.stop()
        assert time.monotonic() - started < 5
        assert sock.recv(1) == b""
    finally:
        sock.close()


def test_the_receivers_log_names_no_patient_or_uid(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    ds = dcmread(CT, stop_before_pixels=True)
    with receiving(tmp_path, ae_title="RTPLAN", allowed_callers=("CTSIM1",)) as receiver:
        dcmtk(
            "storescu", "-aet", "OTHER", "-aec", "RTPLAN", "127.0.0.1", str(receiver.port), str(CT)
        )
        dcmtk(
            "storescu", "-aet", "CTSIM1", "-aec", "RTPLAN", "127.0.0.1", str(receiver.port), str(CT)
        )
        with connected(receiver) as sock:
            sock.sendall(b"\x01\x00\x00\x00\x00\x02zz")
            closed_after_abort(sock)
    text = caplog.text
    assert "calling AE title not on the allow-list" in text
    for secret in (str(ds.PatientName), str(ds.PatientID), ds.StudyInstanceUID, ds.SOPInstanceUID):
        assert secret not in text


def test_storescu_over_tls_with_a_client_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("ctsim1.example")
    files = {name: tmp_path / f"{name}.pem" for name in ("cert", "key", "ca", "ccert", "ckey")}
    server.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    ca.cert_pem.write_to_path(str(files["ca"]))
    client.cert_chain_pems[0].write_to_path(str(files["ccert"]))
    client.private_key_pem.write_to_path(str(files["ckey"]))
    tls = {"tls_cert": str(files["cert"]), "tls_key": str(files["key"]), "tls_ca": str(files["ca"])}
    with receiving(tmp_path, **tls) as receiver:
        address = ["-aet", "CTSIM1", "-aec", "RTPLAN", "127.0.0.1", str(receiver.port)]
        trusted = ["+cf", str(files["ca"])]
        sent = dcmtk(
            "storescu", "+tls", str(files["ckey"]), str(files["ccert"]), *trusted, *address,
            str(CT),
        )  # fmt: skip
        anonymous = dcmtk("storescu", "+tla", *trusted, *address, str(CT_FILES[1]))
        plain = dcmtk("storescu", *address, str(CT_FILES[2]))
        counts = dict(receiver.counts)
    assert sent.returncode == 0, sent.stderr
    assert anonymous.returncode != 0 and plain.returncode != 0
    assert counts["received"] == 1 and len(spooled(tmp_path)) == 1


def pdata(context_id: int, control: int, value: bytes) -> bytes:
    pdv = struct.pack(">IBB", len(value) + 2, context_id, control) + value
    return struct.pack(">BxI", 0x04, len(pdv)) + pdv


def store_raw(
    sock: socket.socket, data_set: bytes, instance_uid: str, message_id: int, **command: str
) -> int:
    """One C-STORE on context 1; the status of the C-STORE-RSP."""
    sock.sendall(pdata(1, 0x03, store_command(instance_uid, message_id, **command)))
    sock.sendall(pdata(1, 0x02, data_set))
    kind, body = read_pdu(sock)
    assert kind == 0x04, f"P-DATA-TF expected, got {kind:#04x}"
    command = body[6:]
    at = command.index(struct.pack("<HHI", 0, 0x0900, 2))
    status: int = struct.unpack_from("<H", command, at + 8)[0]
    return status


def explicit(tag: int, vr: bytes, value: bytes) -> bytes:
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, len(value)) + value


def test_a_sender_dripping_its_request_is_closed_at_the_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scp, "REQUEST_TIMEOUT", 1.0)
    request = associate_rq()
    with receiving(tmp_path) as receiver, connected(receiver) as sock:
        started = time.monotonic()
        with pytest.raises(OSError):  # a byte every 0.2 s restarts no per-read timeout
            for byte in request:
                sock.sendall(bytes((byte,)))
                time.sleep(0.2)
        assert time.monotonic() - started < 3


def test_a_flood_of_empty_fragments_counts_against_the_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scp, "MAX_INSTANCE_BYTES", 64 * 1024)
    with receiving(tmp_path) as receiver, connected(receiver) as sock:
        associated(sock)
        sock.sendall(pdata(1, 0x03, store_command("1.2.3.4")))
        empty = struct.pack(">IBB", 2, 1, 0x00)  # a data fragment with no bytes, not the last
        body = empty * 2000
        flood = struct.pack(">BxI", 0x04, len(body)) + body
        with contextlib.suppress(OSError):  # the receiver may close before all is sent
            for _ in range(20):
                sock.sendall(flood)
        assert closed_after_abort(sock)
        assert receiver._buffered == 0


@pytest.mark.parametrize(
    ("request_pdu", "answer"),
    [
        (associate_rq(contexts=()), 0x03),  # no presentation context: A-ASSOCIATE-RJ
        (associate_rq(contexts=(CT_STORAGE,), ids=(2,)), 0x07),  # even context ID: A-ABORT
        (associate_rq(contexts=(CT_STORAGE, CT_STORAGE), ids=(1, 1)), 0x07),  # repeated ID
    ],
    ids=["no-context", "even-id", "repeated-id"],
)
def test_a_malformed_context_list_is_refused(
    tmp_path: Path, request_pdu: bytes, answer: int
) -> None:
    with receiving(tmp_path) as receiver, connected(receiver) as sock:
        sock.sendall(request_pdu)
        kind, _ = read_pdu(sock)
        assert kind == answer


def test_stop_cuts_a_tls_handshake_in_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scp, "REQUEST_TIMEOUT", 60.0)
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    server.private_key_pem.write_to_path(str(key))
    settings = DicomSettings(listen_port=free_port(), tls_cert=str(cert), tls_key=str(key))
    receiver = Receiver(settings, Spool(tmp_path / "spool"))
    receiver.start()
    sock = socket.create_connection(("127.0.0.1", receiver.port), timeout=10)
    try:
        sock.sendall(b"\x16\x03\x01")  # the start of a ClientHello, and then nothing
        time.sleep(0.3)
        started = time.monotonic()
        receiver.stop()
        assert time.monotonic() - started < 5
    finally:
        sock.close()


def test_a_deflate_bomb_is_refused_and_the_association_goes_on(tmp_path: Path) -> None:
    sop = dcmread(CT, stop_before_pixels=True)
    header = explicit(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.2\x00")
    header += explicit(0x00080018, b"UI", uid_value(sop.SOPInstanceUID))
    header += explicit(0x0020000D, b"UI", uid_value(sop.StudyInstanceUID))
    zeros = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 600 * 1024 * 1024)
    inflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = inflater.compress(header + zeros)
    chunk = bytes(16 * 1024 * 1024)
    for _ in range(600 // 16):
        bomb += inflater.compress(chunk)
    bomb += inflater.compress(bytes(600 * 1024 * 1024 - 16 * 1024 * 1024 * (600 // 16)))
    bomb += inflater.flush()
    assert len(bomb) < 2 * 1024 * 1024  # 600 MiB in under 2 MiB on the wire
    deflated = b"1.2.840.10008.1.2.1.99"
    with receiving(tmp_path) as receiver, connected(receiver) as sock:
        sock.sendall(associate_rq(syntax=deflated))
        assert read_pdu(sock)[0] == 0x02
        assert store_raw(sock, bomb, sop.SOPInstanceUID, 1) == 0xC000
        honest = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        small = honest.compress(header) + honest.flush()
        assert store_raw(sock, small, sop.SOPInstanceUID, 2) == 0x0000
        counts = dict(receiver.counts)
    assert counts["refused"] == 1 and counts["received"] == 1


def test_a_data_set_pydicom_cannot_read_is_refused_and_the_association_goes_on(
    tmp_path: Path,
) -> None:
    sop = dcmread(CT, stop_before_pixels=True)
    instance = explicit(0x00080018, b"UI", uid_value(sop.SOPInstanceUID))
    study_as_uu = explicit(0x0020000D, b"UU", uid_value(sop.StudyInstanceUID))  # no such VR
    good = instance + explicit(0x0020000D, b"UI", uid_value(sop.StudyInstanceUID))
    with receiving(tmp_path) as receiver, connected(receiver) as sock:
        associated(sock)
        assert store_raw(sock, instance + study_as_uu, sop.SOPInstanceUID, 1) == 0xC000
        assert store_raw(sock, good, sop.SOPInstanceUID, 2) == 0x0000
        counts = dict(receiver.counts)
    assert counts["refused"] == 1 and counts["received"] == 1


def uid_value(uid: str) -> bytes:
    raw = uid.encode()
    return raw + b"\x00" * (len(raw) % 2)


def test_every_refused_c_store_is_counted(tmp_path: Path) -> None:
    """A request without its instance UID (C000) and one whose SOP class is not its
    context's (0122) are refused and counted, and the association goes on."""
    sop = dcmread(CT, stop_before_pixels=True)
    good = explicit(0x00080018, b"UI", uid_value(sop.SOPInstanceUID)) + explicit(
        0x0020000D, b"UI", uid_value(sop.StudyInstanceUID)
    )
    mr = "1.2.840.10008.5.1.4.1.1.4"
    with receiving(tmp_path) as receiver, connected(receiver) as sock:
        associated(sock)
        assert store_raw(sock, good, "", 1) == 0xC000
        assert store_raw(sock, good, sop.SOPInstanceUID, 2, sop_class=mr) == 0x0122
        assert store_raw(sock, good, sop.SOPInstanceUID, 3) == 0x0000
        counts = dict(receiver.counts)
    assert counts["refused"] == 2 and counts["received"] == 1
