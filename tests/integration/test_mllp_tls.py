"""MLLP over TLS (reliability row 24): verified, TLS >= 1.2, optional mTLS, never plaintext.

The server is the adapter's own MllpServer with a handler that records and ACKs; what matters
is that a refused handshake means the handler never ran (no message left the client).
"""

from __future__ import annotations

import ssl
import warnings
from collections.abc import Iterator

import pytest
import trustme

from adapter.errors import ConfigError, TransportError
from adapter.hl7.client import MllpClient, NoAnswer, NotSent, client_tls_context
from adapter.hl7.listener import MllpServer, server_tls_context
from tests.integration.mllp_support import deliver, order, run
from tests.peers.mllp_fault import build_ack

MSG = order(7)


class Recorder:
    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def __call__(self, message: bytes) -> bytes:
        self.messages.append(message)
        return build_ack(message)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("tls")
    server = ca.issue_cert("127.0.0.1", "localhost", "ris.test")
    client = ca.issue_cert("rtplan-adapter.test")
    other = trustme.CA()
    paths = {
        "ca": d / "ca.pem",
        "other_ca": d / "other.pem",
        "server": d / "server.pem",
        "client": d / "client.pem",
    }
    ca.cert_pem.write_to_path(str(paths["ca"]))
    other.cert_pem.write_to_path(str(paths["other_ca"]))
    server.private_key_and_cert_chain_pem.write_to_path(str(paths["server"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(paths["client"]))
    return {k: str(v) for k, v in paths.items()}


def serve_and_send(
    server_ctx: ssl.SSLContext | None, make_client: object, *, limit: float = 10.0
) -> tuple[Recorder, list[str]]:
    rec = Recorder()

    async def go() -> list[str]:
        async with MllpServer(rec, tls=server_ctx, handshake_timeout=2.0) as server:
            client = make_client(server.port)  # type: ignore[operator]
            async with client:
                return (await deliver(client, MSG, attempts=1)).history

    return rec, run(go(), limit=limit)


def tls_client(port: int, ctx: ssl.SSLContext, **kw: object) -> MllpClient:
    return MllpClient("127.0.0.1", port, connect_timeout=1.0, ack_timeout=1.0, tls=ctx, **kw)  # type: ignore[arg-type]


@pytest.fixture
def server_ctx(files: dict[str, str]) -> Iterator[ssl.SSLContext]:
    yield server_tls_context(files["server"])


def test_good_ca_is_accepted(files: dict[str, str], server_ctx: ssl.SSLContext) -> None:
    ctx = client_tls_context(files["ca"])
    rec, history = serve_and_send(server_ctx, lambda port: tls_client(port, ctx))
    assert history == ["delivered"] and rec.messages == [MSG]


def test_hostname_is_checked(files: dict[str, str], server_ctx: ssl.SSLContext) -> None:
    ctx = client_tls_context(files["ca"])
    rec, history = serve_and_send(
        server_ctx, lambda port: tls_client(port, ctx, server_hostname="ris.test")
    )
    assert history == ["delivered"]
    rec, history = serve_and_send(
        server_ctx, lambda port: tls_client(port, ctx, server_hostname="other-ris.test")
    )
    assert history == ["not_sent"] and rec.messages == []


def test_wrong_ca_is_refused(files: dict[str, str], server_ctx: ssl.SSLContext) -> None:
    ctx = client_tls_context(files["other_ca"])

    async def go() -> str:
        async with (
            MllpServer(Recorder(), tls=server_ctx) as server,
            tls_client(server.port, ctx) as client,
        ):
            with pytest.raises(NotSent) as info:
                await client.send(MSG)
            return str(info.value)

    assert "certificate" in run(go())


def test_plaintext_client_to_tls_server_gets_no_ack(server_ctx: ssl.SSLContext) -> None:
    rec, history = serve_and_send(
        server_ctx, lambda port: MllpClient("127.0.0.1", port, ack_timeout=1.0)
    )
    assert history == ["no_answer"] and rec.messages == []


def test_tls_client_to_plaintext_server_never_falls_back(files: dict[str, str]) -> None:
    ctx = client_tls_context(files["ca"])
    rec, history = serve_and_send(None, lambda port: tls_client(port, ctx))
    assert history == ["not_sent"] and rec.messages == []


def test_mtls(files: dict[str, str]) -> None:
    server_ctx = server_tls_context(files["server"], client_ca=files["ca"])
    with_cert = client_tls_context(files["ca"], certfile=files["client"])
    rec, history = serve_and_send(server_ctx, lambda port: tls_client(port, with_cert))
    assert history == ["delivered"] and rec.messages == [MSG]
    without = client_tls_context(files["ca"])
    rec, history = serve_and_send(server_ctx, lambda port: tls_client(port, without))
    # TLS 1.3 checks the client cert after the client's handshake ends: either way, no message
    assert history in (["not_sent"], ["no_answer"]) and rec.messages == []


def test_server_limited_to_tls11_is_refused(files: dict[str, str]) -> None:
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    old.load_cert_chain(files["server"])
    with warnings.catch_warnings():  # setting TLS 1.0/1.1 is deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    ctx = client_tls_context(files["ca"])
    rec, history = serve_and_send(old, lambda port: tls_client(port, ctx))
    assert history == ["not_sent"] and rec.messages == []


@pytest.mark.parametrize("weak", ["no-verify", "no-hostname", "tls10"])
def test_weak_client_contexts_are_refused(files: dict[str, str], weak: str) -> None:
    ctx = client_tls_context(files["ca"])
    if weak == "no-verify":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif weak == "no-hostname":
        ctx.check_hostname = False
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ssl.TLSVersion.TLSv1
    with pytest.raises(ConfigError):
        MllpClient("127.0.0.1", 1, tls=ctx)


def test_no_answer_and_not_sent_are_transport_errors() -> None:
    assert issubclass(NotSent, TransportError) and issubclass(NoAnswer, TransportError)
