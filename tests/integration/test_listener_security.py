"""The MLLP listener of ``rtplan serve`` hears only trusted senders (issue 14).

Each test runs the real service (listener, worker, escalation check) in-process on a free
loopback port, with an HL7 order already in its outbox, and talks to it over real sockets:
a forged result, a result from another receiver, a reused control id, a peer address the
profiles do not list, TLS with and without client certificates, and the resource limits
(200 connections, oversized frames, idle connections, a locked database).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import sqlite3
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import trustme

from adapter.config import DEFAULT_MAPPINGS_DIR, Hl7Settings, OutboxSettings, Settings
from adapter.hl7.mllp import Framer, frame
from adapter.hl7.model import OrderPatient, OrderRequest, PatientIdentifier
from adapter.service.escalate import Metrics, escalate_due
from adapter.service.serve import serve
from adapter.store.db import open_database
from adapter.store.location import store_location
from adapter.store.outbox import Outbox
from tests.peers.launch import free_port
from tests.support import enqueue_order

pytestmark = pytest.mark.store  # every test here reaches the store: both backends

PLACER = "RTPO0001"
FHIR_CONTEXT = {  # what an order row carries for the FHIR side of a result (review/orders.py)
    "subject": {"reference": "Patient?identifier=HOSP-MRN|P1"},
    "imaging_study": {"reference": "ImagingStudy?identifier=urn:dicom:uid|urn:oid:1.2.3"},
    "service_request": f"ServiceRequest?identifier=urn:rtplan:placer-order|{PLACER}",
    "radiology_task": None,
}
MiB = 1024 * 1024


def oru(control: str, text: str, *, sender: str = "RIS|RADIOLOGY", placer: str = PLACER) -> bytes:
    segments = [
        f"MSH|^~\\&|{sender}|RTPLAN|ONCOLOGY|20260305101500+0000||ORU^R01^ORU_R01|{control}|P|2.5.1",
        "PID|||RTP0001^^^HOSP-MRN^MR",
        f"ORC|RE|{placer}^RTPLAN|F123^RIS||CM",
        f"OBR|1|{placer}^RTPLAN|F123^RIS|RTPLANREVIEW^Radiologist review^L|||20260305100000+0000"
        + "|" * 18
        + "F",
        f"OBX|1|TX|18748-4^Diagnostic imaging study^LN||{text}||||||F",
    ]
    return ("\r".join(segments) + "\r").encode()


def settings_for(tmp_path: Path, **hl7: object) -> Settings:
    base = Settings(
        hl7=Hl7Settings(listen_port=free_port(), escalation_check_seconds=3600.0),
        outbox=OutboxSettings(path=str(tmp_path / "o.sqlite")),
    )
    return replace(base, hl7=replace(base.hl7, **hl7))  # type: ignore[arg-type]


def with_order(settings: Settings) -> None:
    with Outbox(store_location(settings)) as outbox:
        order = OrderRequest(
            "NW", PLACER, "RTPLAN", OrderPatient((PatientIdentifier("P1", "HOSP-MRN"),)), "1.2.3"
        )
        enqueue_order(
            outbox,
            target="default-ris",
            key="study:1.2.3",
            label="o1",
            payload={"profile": "default-ris", "order": order.to_json(), "fhir": FHIR_CONTEXT},
        )


def receivers_with(tmp_path: Path, inbound: str) -> str:
    """A copy of the shipped receiver profiles whose default-ris gets ``inbound``."""
    folder = tmp_path / "receivers"
    shutil.copytree(DEFAULT_MAPPINGS_DIR / "receivers", folder)
    profile = folder / "default-ris.yaml"
    profile.write_text(profile.read_text() + inbound)
    return str(folder)


@contextlib.asynccontextmanager
async def running(settings: Settings, out: Path) -> AsyncIterator[None]:
    stop, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(settings, out, stop=stop, started=started))
    await asyncio.wait_for(started.wait(), 30)
    try:
        yield
    finally:
        stop.set()
        await task


async def exchange(
    port: int, message: bytes, *, tls: ssl.SSLContext | None = None, timeout: float = 10.0
) -> bytes:
    """Send one framed message; return the ACK, or b"" when the connection was closed."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls, server_hostname="localhost" if tls else None
    )
    framer = Framer()
    try:
        writer.write(frame(message))
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return b""
                frames = framer.feed(chunk)
                if frames:
                    return frames[0]
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def result_rows(outbox: Outbox) -> list[str]:
    return [r.label for r in outbox.rows() if r.label.startswith("RadiologyResult")]


def stored_size(settings: Settings) -> int:
    """Bytes a refused frame would take if it were kept: the SQLite file; on PostgreSQL the
    inbound log's table with its TOAST data and indexes (where such a frame would land)."""
    location = store_location(settings)
    if isinstance(location, Path):
        return location.stat().st_size
    db = open_database(location)
    try:
        return int(db.scalar("SELECT pg_total_relation_size('inbound')"))
    finally:
        db.close()


def inbound_rows(settings: Settings) -> list[tuple[str, str, str, bytes]]:
    db = open_database(store_location(settings))
    try:
        rows = db.execute("SELECT kind, status, detail, message FROM inbound ORDER BY id")
        return [(r[0], r[1], r[2], bytes(r[3])) for r in rows]
    finally:
        db.close()


def test_forged_result_is_refused_with_ar_and_nothing_written(tmp_path: Path) -> None:
    """The issue's finding: ORU^R01 from EVIL^NET for a real placer number."""
    settings = settings_for(tmp_path)
    with_order(settings)
    forged = oru("EVIL1", "No abnormality. Discharge.", sender="EVIL|NET")

    async def go() -> tuple[bytes, bytes]:
        async with running(settings, tmp_path / "out"):
            refused = await exchange(settings.hl7.listen_port, forged)
            genuine = await exchange(settings.hl7.listen_port, oru("OK1", "Metastasis in T7."))
            return refused, genuine

    refused, genuine = asyncio.run(go())
    assert b"MSA|AR|EVIL1" in refused
    assert b"MSA|AA|OK1" in genuine
    rows = inbound_rows(settings)
    kind, status, detail, message = rows[0]
    assert (kind, status, message) == ("refused", "refused", b"")
    assert hashlib.sha256(forged).hexdigest() in detail and f"{len(forged)} bytes" in detail
    assert "No abnormality" not in detail
    with Outbox(store_location(settings)) as outbox:
        labels = result_rows(outbox)
    assert labels and all("OK1" in label for label in labels)  # only the genuine result


def test_a_result_is_accepted_only_from_the_receiver_its_order_went_to(tmp_path: Path) -> None:
    """IMGMGR^RADIOLOGY is trusted (imaging-procedure-control), but the order went to
    default-ris: AR, nothing written."""
    settings = settings_for(tmp_path)
    with_order(settings)

    async def go() -> bytes:
        async with running(settings, tmp_path / "out"):
            return await exchange(
                settings.hl7.listen_port, oru("X1", "text", sender="IMGMGR|RADIOLOGY")
            )

    assert b"MSA|AR|X1" in asyncio.run(go())
    with Outbox(store_location(settings)) as outbox:
        assert result_rows(outbox) == []
    assert [r[1] for r in inbound_rows(settings)] == ["refused"]


def test_reused_control_id_with_other_content_is_ae_and_escalated(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    with_order(settings)

    async def go() -> tuple[bytes, bytes, bytes]:
        async with running(settings, tmp_path / "out"):
            port = settings.hl7.listen_port
            first = await exchange(port, oru("C1", "Metastasis in T7."))
            again = await exchange(port, oru("C1", "Metastasis in T7."))  # a true resend
            other = await exchange(port, oru("C1", "No metastasis."))
            return first, again, other

    first, again, other = asyncio.run(go())
    assert b"MSA|AA|C1" in first and b"MSA|AA|C1" in again
    assert b"MSA|AE|C1" in other and b"ERR|" in other and b"205" in other
    with Outbox(store_location(settings)) as outbox:
        before = len(result_rows(outbox))
        escalate_due(outbox, [], Metrics())  # unless the service's own check already did
        fired = outbox.timers().fired()
        assert [(t.kind, t.key) for t in fired] == [("conflict", PLACER)]  # once
        assert len(result_rows(outbox)) == before  # the stored message stands, once


def test_unreadable_and_unknown_charset_are_refused_and_stored_by_hash_only(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    unsupported = b"MSH|^~\\&|RIS|RADIOLOGY|C|D|x||ZZZ^Z01|G1|P|2.5\r" + b"ZZZ|" + b"x" * 500_000
    charset = oru("K1", "text").replace(b"|P|2.5.1", b"|P|2.5.1||||||KLINGON", 1)

    async def go() -> tuple[bytes, bytes]:
        async with running(settings, tmp_path / "out"):
            port = settings.hl7.listen_port
            return await exchange(port, unsupported), await exchange(port, charset)

    first, second = asyncio.run(go())
    assert b"MSA|AR|G1" in first
    assert b"MSA|AR|K1" in second and b"ERR||MSH^1^18|103" in second
    rows = inbound_rows(settings)
    assert [r[0] for r in rows] == ["unreadable", "unreadable"]
    assert all(r[3] == b"" for r in rows)
    assert stored_size(settings) < 200_000  # never the 500 KB frame


def test_a_peer_address_its_profile_does_not_list_is_refused(tmp_path: Path) -> None:
    """RIS^RADIOLOGY may send only from 10.66.0.0/16. Another profile still allows 127.0.0.1,
    so the connection is kept, but the message is answered AR and recorded by hash."""
    folder = receivers_with(tmp_path, "inbound:\n  peers: [10.66.0.0/16]\n")
    settings = settings_for(tmp_path, receivers_dir=folder)
    with_order(settings)

    async def go() -> bytes:
        async with running(settings, tmp_path / "out"):
            return await exchange(settings.hl7.listen_port, oru("P1", "text"))

    assert b"MSA|AR|P1" in asyncio.run(go())
    rows = inbound_rows(settings)
    assert [(r[1], r[3]) for r in rows] == [("refused", b"")]
    assert "peer address not allowed" in rows[0][2]


def test_an_address_no_profile_lists_is_closed_before_it_can_send(tmp_path: Path) -> None:
    folder = receivers_with(tmp_path, "inbound:\n  peers: [10.66.0.0/16]\n")
    for other in Path(folder).glob("*.yaml"):
        if other.name != "default-ris.yaml":
            other.unlink()
    settings = settings_for(tmp_path, receivers_dir=folder)
    with_order(settings)

    async def go() -> bytes:
        async with running(settings, tmp_path / "out"):
            try:
                return await exchange(settings.hl7.listen_port, oru("P1", "text"))
            except (ConnectionError, OSError):
                return b""

    assert asyncio.run(go()) == b""
    assert inbound_rows(settings) == []


def _tls_files(tmp_path: Path) -> tuple[trustme.CA, Path, Path]:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    server.cert_chain_pems[0].write_to_path(str(cert))
    for blob in server.cert_chain_pems[1:]:
        blob.write_to_path(str(cert), append=True)
    server.private_key_pem.write_to_path(str(key))
    return ca, cert, key


def test_tls_with_client_certificates(tmp_path: Path) -> None:
    """A client certificate signed by the configured CA is trusted from any address; without
    one the handshake fails; the profile's peers do not include 127.0.0.1."""
    ca, cert, key = _tls_files(tmp_path)
    ca_file = tmp_path / "client-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    folder = receivers_with(tmp_path, "inbound:\n  peers: [10.66.0.0/16]\n")
    for profile in Path(folder).glob("*.yaml"):
        if profile.name != "default-ris.yaml":
            profile.unlink()
    settings = settings_for(
        tmp_path,
        receivers_dir=folder,
        listen_tls_cert=str(cert),
        listen_tls_key=str(key),
        listen_tls_client_ca=str(ca_file),
    )
    with_order(settings)
    with_cert = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(with_cert)
    ca.issue_cert("ris.example.org").configure_cert(with_cert)
    without_cert = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(without_cert)
    plain_port = settings.hl7.listen_port

    async def go() -> tuple[bytes, bytes, bytes, bytes]:
        async with running(settings, tmp_path / "out"):
            accepted = await exchange(plain_port, oru("T1", "text"), tls=with_cert)
            forged = await exchange(plain_port, oru("T2", "text", sender="EVIL|NET"), tls=with_cert)
            try:
                anonymous = await exchange(plain_port, oru("T3", "text"), tls=without_cert)
            except (ssl.SSLError, ConnectionError, OSError):
                anonymous = b""
            try:
                cleartext = await exchange(plain_port, oru("T4", "text"), timeout=5)
            except (ConnectionError, OSError):
                cleartext = b""
            return accepted, forged, anonymous, cleartext

    accepted, forged, anonymous, cleartext = asyncio.run(go())
    assert b"MSA|AA|T1" in accepted
    assert b"MSA|AR|T2" in forged  # a certificate does not make any MSH-3/MSH-4 acceptable
    assert anonymous == b"" and cleartext == b""


def test_tls_without_client_certificates_still_checks_peer_addresses(tmp_path: Path) -> None:
    ca, cert, key = _tls_files(tmp_path)
    allowed = settings_for(tmp_path, listen_tls_cert=str(cert), listen_tls_key=str(key))
    with_order(allowed)
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)

    async def go() -> bytes:
        async with running(allowed, tmp_path / "out"):
            return await exchange(allowed.hl7.listen_port, oru("S1", "text"), tls=client)

    assert b"MSA|AA|S1" in asyncio.run(go())

    other = tmp_path / "other"
    other.mkdir()
    folder = receivers_with(other, "inbound:\n  peers: [10.66.0.0/16]\n")
    for profile in Path(folder).glob("*.yaml"):
        if profile.name != "default-ris.yaml":
            profile.unlink()
    refused = settings_for(
        other, receivers_dir=folder, listen_tls_cert=str(cert), listen_tls_key=str(key)
    )

    async def go_refused() -> bytes:
        async with running(refused, other / "out"):
            try:
                return await exchange(refused.hl7.listen_port, oru("S2", "text"), tls=client)
            except (ssl.SSLError, ConnectionError, OSError):
                return b""

    assert asyncio.run(go_refused()) == b""


def test_200_connections_and_20_oversized_frames_stay_bounded(tmp_path: Path) -> None:
    """With the default limits: memory bounded, the database does not grow with the junk,
    and a genuine result is still answered."""
    settings = settings_for(tmp_path)
    with_order(settings)
    process = psutil.Process()
    port = settings.hl7.listen_port

    async def flood(size: int) -> None:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x0bMSH|^~\\&|RIS|RADIOLOGY|")
            chunk = b"x" * MiB
            for _ in range(size // MiB):  # never ends the frame
                writer.write(chunk)
                await writer.drain()
            writer.close()
        except (ConnectionError, OSError):
            return  # the listener closed us: expected

    async def go() -> tuple[int, int, bytes, int]:
        async with running(settings, tmp_path / "out"):
            baseline = process.memory_info().rss
            peak = baseline
            idle = []
            for _ in range(200):
                idle.append(await asyncio.open_connection("127.0.0.1", port))

            async def sample() -> None:
                nonlocal peak
                while True:
                    peak = max(peak, process.memory_info().rss)
                    await asyncio.sleep(0.05)

            sampler = asyncio.create_task(sample())
            await asyncio.gather(*(flood(15 * MiB) for _ in range(20)))
            answer = await exchange(port, oru("V1", "Metastasis in T7."))
            sampler.cancel()
            closed = 0
            for reader, writer in idle:
                with contextlib.suppress(TimeoutError, ConnectionError, OSError):
                    async with asyncio.timeout(2):
                        if await reader.read(1) == b"":
                            closed += 1
                writer.close()
            return baseline, peak, answer, closed

    baseline, peak, answer, closed = asyncio.run(go())
    assert b"MSA|AA|V1" in answer
    assert closed >= 200 - 32  # the cap held: at most 32 of the idle connections kept
    # 20 x 15 MiB were sent; at most one frame (1 MiB) per connection is ever buffered.
    assert peak - baseline < 120 * MiB, f"RSS grew {(peak - baseline) // MiB} MiB"
    assert stored_size(settings) < 2 * MiB


def test_an_idle_connection_is_closed(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, listen_idle_timeout=0.3)

    async def go() -> bytes:
        async with running(settings, tmp_path / "out"):
            reader, writer = await asyncio.open_connection("127.0.0.1", settings.hl7.listen_port)
            async with asyncio.timeout(10):
                data = await reader.read(10)
            writer.close()
            return data

    assert asyncio.run(go()) == b""


@pytest.mark.sqlite_only(reason="holds SQLite's one write lock from another connection")
def test_a_locked_database_does_not_freeze_the_event_loop(tmp_path: Path) -> None:
    """Another process holding the write lock delays the ACK, not the listener."""
    settings = settings_for(tmp_path)
    with_order(settings)

    async def go() -> tuple[bytes, int]:
        async with running(settings, tmp_path / "out"):
            blocker = sqlite3.connect(settings.outbox.path, isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            ticks = 0

            async def ticker() -> None:
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            counting = asyncio.create_task(ticker())
            pending = asyncio.create_task(
                exchange(settings.hl7.listen_port, oru("L1", "text"), timeout=30)
            )
            await asyncio.sleep(1.0)
            during = ticks
            blocker.execute("COMMIT")
            blocker.close()
            answer = await pending
            counting.cancel()
            return answer, during

    answer, ticks = asyncio.run(go())
    assert b"MSA|AA|L1" in answer
    assert ticks > 20  # the loop kept running while the store waited for the lock


def test_rtplan_serve_with_tls_from_the_settings_file(tmp_path: Path) -> None:
    """docs/configuration.md keys, as a user writes them: ``rtplan --config FILE serve``
    speaks TLS only, answers a trusted sender, and stops cleanly on SIGTERM."""
    import os
    import signal
    import subprocess
    import sys
    import time

    ca, cert, key = _tls_files(tmp_path)
    port = free_port()
    config = tmp_path / "rtplan.yaml"
    config.write_text(
        "outbox:\n"
        f"  path: {tmp_path / 'o.sqlite'}\n"
        "hl7:\n"
        f"  listen_port: {port}\n"
        f"  listen_tls_cert: {cert}\n"
        f"  listen_tls_key: {key}\n"
        "  listen_max_frame_bytes: 65536\n"
        "  listen_max_connection_bytes: 131072\n"
        "  listen_max_connections: 4\n"
        "  listen_idle_timeout: 30\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "adapter.cli", "--config", str(config), "serve"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(client)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                answer = asyncio.run(exchange(port, oru("Y1", "text"), tls=client))
                break
            except OSError:
                assert process.poll() is None, process.communicate()[1]
                assert time.monotonic() < deadline, "rtplan serve did not start"
                time.sleep(0.3)
        try:
            cleartext = asyncio.run(exchange(port, oru("Y2", "text"), timeout=5))
        except (ConnectionError, OSError, TimeoutError):
            cleartext = b""
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert b"MSA|AE|Y1" in answer and b"204" in answer  # trusted sender, no such order
    assert cleartext == b""  # no plaintext on a TLS listener
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
