"""Settings that would break the service or leak secrets are refused at start-up, with one
line naming the key (issue 14); the documented bearer variable is not an override (issue 8)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from adapter.config import is_loopback, load_settings
from adapter.errors import ConfigError
from adapter.hl7.listener import Peer
from adapter.hl7.profiles import load_profiles, parse_profile
from adapter.hl7.trust import TrustPolicy
from adapter.mapping.fhir_text import without_control_characters
from adapter.ratelimit import RateLimitedWarning
from tests.store_backend import StoreUnderTest
from tests.support import ROOT

RECEIVERS = ROOT / "mappings" / "receivers"


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"RTPLAN_HL7__ESCALATION_CHECK_SECONDS": "0"}, "hl7.escalation_check_seconds"),
        ({"RTPLAN_HL7__ESCALATION_CHECK_SECONDS": "-5"}, "hl7.escalation_check_seconds"),
        ({"RTPLAN_FHIR__READ_TIMEOUT": "nan"}, "fhir.read_timeout"),
        ({"RTPLAN_FHIR__CONNECT_TIMEOUT": "inf"}, "fhir.connect_timeout"),
        ({"RTPLAN_FHIR__DEADLINE": "-1"}, "fhir.deadline"),
        ({"RTPLAN_FHIR__MAX_WAIT": "nan"}, "fhir.max_wait"),
        ({"RTPLAN_FHIR__INITIAL_WAIT": "0"}, "fhir.initial_wait"),
        ({"RTPLAN_FHIR__MAX_RETRY_SECONDS": "inf"}, "fhir.max_retry_seconds"),
        ({"RTPLAN_OUTBOX__LEASE_SECONDS": "-300"}, "outbox.lease_seconds"),
        ({"RTPLAN_OUTBOX__LEASE_SECONDS": "0"}, "outbox.lease_seconds"),
        ({"RTPLAN_FHIR__CONCURRENCY": "100000"}, "fhir.concurrency"),
        ({"RTPLAN_FHIR__MAX_ATTEMPTS": "0"}, "fhir.max_attempts"),
        ({"RTPLAN_HL7__LISTEN_PORT": "99999"}, "hl7.listen_port"),
        ({"RTPLAN_HL7__PORT": "-1"}, "hl7.port"),
        ({"RTPLAN_INGEST__WORKERS": "100000"}, "ingest.workers"),
        ({"RTPLAN_HL7__LISTEN_MAX_CONNECTIONS": "0"}, "hl7.listen_max_connections"),
        ({"RTPLAN_HL7__LISTEN_MAX_FRAME_BYTES": "10"}, "hl7.listen_max_frame_bytes"),
        ({"RTPLAN_HL7__LISTEN_IDLE_TIMEOUT": "nan"}, "hl7.listen_idle_timeout"),
        ({"RTPLAN_HL7__LISTEN_TLS_CERT": "/x.pem"}, "hl7.listen_tls_cert"),
        ({"RTPLAN_HL7__LISTEN_TLS_CLIENT_CA": "/ca.pem"}, "hl7.listen_tls_client_ca"),
        (
            {"RTPLAN_FHIR__INITIAL_WAIT": "10", "RTPLAN_FHIR__MAX_WAIT": "5"},
            "fhir.max_wait",
        ),
        (
            {
                "RTPLAN_HL7__LISTEN_MAX_FRAME_BYTES": "4096",
                "RTPLAN_HL7__LISTEN_MAX_CONNECTION_BYTES": "2048",
            },
            "hl7.listen_max_connection_bytes",
        ),
    ],
)
def test_out_of_range_settings_name_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env=env)
    assert caught.value.key == key


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"RTPLAN_FHIR__BASE_URL": "http://ehr.example.org/fhir"}, "fhir.base_url"),
        ({"RTPLAN_FHIR__BASE_URL": "http://10.1.2.3/fhir"}, "fhir.base_url"),
        ({"RTPLAN_FHIR__TOKEN_URL": "http://auth.example.org/token"}, "fhir.token_url"),
        ({"RTPLAN_FHIR__TOKEN_URL": "ftp://auth.example.org/token"}, "fhir.token_url"),
    ],
)
def test_plain_http_to_a_remote_host_is_refused(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env=env)
    assert caught.value.key == key and "http" in caught.value.problem


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/fhir",
        "http://127.9.9.9/fhir",
        "http://[::1]:8080/fhir",
        "http://localhost:8103/fhir/R4",
        "https://ehr.example.org/fhir",
    ],
)
def test_https_or_loopback_is_accepted(url: str) -> None:
    assert load_settings(None, env={"RTPLAN_FHIR__BASE_URL": url}).fhir.base_url == url


def test_allow_insecure_http_is_loud(caplog: pytest.LogCaptureFixture) -> None:
    env = {
        "RTPLAN_FHIR__BASE_URL": "http://ehr.example.org/fhir",
        "RTPLAN_FHIR__ALLOW_INSECURE_HTTP": "true",
    }
    with caplog.at_level(logging.WARNING):
        settings = load_settings(None, env=env)
    assert settings.fhir.allow_insecure_http is True
    assert any("SECURITY" in r.message and "fhir.base_url" in r.message for r in caplog.records)


def test_loopback_names() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"]))
    assert not any(map(is_loopback, ["10.0.0.1", "ris.example.org", "::2", "128.0.0.1", ""]))


def test_the_documented_bearer_variable_is_not_an_override() -> None:
    """docs/delivery.md: ``auth: bearer``, the token in ``RTPLAN_FHIR_TOKEN``."""
    settings = load_settings(
        None, env={"RTPLAN_FHIR_TOKEN": "secret-token", "RTPLAN_FHIR__AUTH": "bearer"}
    )
    assert settings.fhir.auth == "bearer" and settings.fhir.token_env == "RTPLAN_FHIR_TOKEN"
    assert "secret-token" not in repr(settings)


def test_a_renamed_token_variable_is_not_an_override_either(tmp_path: Path) -> None:
    path = tmp_path / "rtplan.yaml"
    path.write_text("fhir:\n  auth: bearer\n  token_env: RTPLAN_EHR_TOKEN\n")
    settings = load_settings(path, env={"RTPLAN_EHR_TOKEN": "x"})
    assert settings.fhir.token_env == "RTPLAN_EHR_TOKEN"
    with pytest.raises(ConfigError):  # a typo is still caught
        load_settings(path, env={"RTPLAN_FHIR_TOKEM": "x"})


def _smart(tmp_path: Path, mode: int) -> dict[str, str]:
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(mode)
    return {
        "RTPLAN_FHIR__AUTH": "smart",
        "RTPLAN_FHIR__TOKEN_URL": "https://ehr.example.org/token",
        "RTPLAN_FHIR__CLIENT_ID": "rtplan",
        "RTPLAN_FHIR__PRIVATE_KEY": str(key),
        "RTPLAN_FHIR__KEY_ID": "k1",
    }


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_smart_key_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env=_smart(tmp_path, mode))
    assert caught.value.key == "fhir.private_key" and "chmod 600" in caught.value.problem


def test_a_private_smart_key_is_accepted(tmp_path: Path) -> None:
    assert load_settings(None, env=_smart(tmp_path, 0o600)).fhir.auth == "smart"


# -- MLLP TLS defaults in the shipped receiver profiles ------------------------------------


def test_shipped_profiles_use_tls_for_any_non_loopback_host() -> None:
    profiles = load_profiles(RECEIVERS)
    for profile in profiles.values():
        tls = profile.connection.tls
        assert tls.enabled is not False, f"{profile.name} opts out of TLS"
        assert tls.on_for("ris.hospital.example") is True
    assert profiles["default-ris"].connection.tls.on_for("127.0.0.1") is False
    assert profiles["swfb-ris"].connection.tls.on_for("127.0.0.1") is True  # asked for it


def test_tls_opt_out_is_explicit() -> None:
    data = {
        "name": "plain-ris",
        "sending": {"application": "RTPLAN"},
        "receiving": {"application": "RIS"},
        "connection": {"host": "ris.example.org", "tls": {"enabled": False}},
    }
    assert parse_profile(data, "plain-ris.yaml").connection.tls.on_for("ris.example.org") is False


# -- the allow-list -----------------------------------------------------------------------


def _policy() -> TrustPolicy:
    profiles = load_profiles(RECEIVERS)
    return TrustPolicy(profiles.values(), {"default-ris": "10.20.30.40"})


def test_trust_by_sender_and_address() -> None:
    policy = _policy()
    local = Peer("127.0.0.1", 5000)
    assert policy.check("RIS", "RADIOLOGY", local).receivers == {"default-ris"}
    assert policy.check("IMGMGR", "RADIOLOGY", local).receivers == {"imaging-procedure-control"}
    assert not policy.check("EVIL", "NET", local).trusted
    assert not policy.check("RIS", "ELSEWHERE", local).trusted
    assert not policy.check("", "", local).trusted
    # hl7.host counts as the configured receiver's address; IPv4-mapped IPv6 is understood.
    assert policy.check("RIS", "RADIOLOGY", Peer("::ffff:10.20.30.40", 1)).trusted
    assert not policy.check("RIS", "RADIOLOGY", Peer("10.20.30.41", 1)).trusted
    # A verified client certificate stands in for the address, not for the sender pair.
    assert policy.check("RIS", "RADIOLOGY", Peer("192.0.2.1", 1, True, True)).trusted
    assert not policy.check("EVIL", "NET", Peer("192.0.2.1", 1, True, True)).trusted
    assert policy.may_connect(local) and not policy.may_connect(Peer("192.0.2.1", 1))


def test_profile_inbound_senders_and_peers_from_yaml() -> None:
    data = {
        "name": "r",
        "sending": {"application": "RTPLAN"},
        "receiving": {"application": "RIS", "facility": "RADIOLOGY"},
        "inbound": {
            "senders": [{"application": "RIS", "facility": "RADIOLOGY"}, {"application": "PACS"}],
            "peers": ["10.1.0.0/16", "192.0.2.7"],
        },
    }
    profile = parse_profile(data, "r.yaml")
    policy = TrustPolicy([profile], {})
    assert policy.check("PACS", "ANYWHERE", Peer("10.1.2.3", 1)).receivers == {"r"}
    assert policy.check("RIS", "RADIOLOGY", Peer("192.0.2.7", 1)).trusted
    assert not policy.check("RIS", "RADIOLOGY", Peer("192.0.2.8", 1)).trusted


def test_profile_inbound_section_is_validated() -> None:
    base = {"name": "r", "sending": {"application": "A"}, "receiving": {"application": "B"}}
    for inbound, key in [
        ({"senders": []}, "inbound.senders"),
        ({"senders": [{"app": "X"}]}, "inbound.senders[0].app"),
        ({"peers": "10.0.0.1"}, "inbound.peers"),
        ({"peers": ["10.0.0.0/33"]}, "inbound.peers"),
        ({"colour": "red"}, "inbound.colour"),
    ]:
        with pytest.raises(ConfigError) as caught:
            parse_profile({**base, "inbound": inbound}, "r.yaml")
        assert caught.value.problem and key in str(caught.value)


def test_unmatched_ack_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    limiter = RateLimitedWarning(logging.getLogger("test.ratelimit"), interval=3600.0)
    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        for n in range(5000):
            limiter.warn("inbound ACK %s for no message of ours", f"C{n}")
    assert len(caplog.records) == 1 and limiter.suppressed == 4999


def test_control_characters_never_reach_fhir() -> None:
    bundle = {"entry": [{"resource": {"description": "CT\x00CHEST\x1b[31m", "n": 3}}]}
    clean = without_control_characters(bundle)
    assert clean == {"entry": [{"resource": {"description": "CTCHEST[31m", "n": 3}}]}
    assert without_control_characters("line\r\nnext\ttab") == "line\r\nnext\ttab"


@pytest.mark.store
def test_orders_to_a_remote_ris_use_tls_with_the_default_profile(
    tmp_path: Path, store: StoreUnderTest
) -> None:
    """The issue's finding: the default RIS profile sent PID in clear. Pointed at a remote
    host (``hl7.host``), it now connects with TLS; at loopback it stays plain TCP."""
    import asyncio
    from contextlib import AsyncExitStack

    from adapter.config import Hl7Settings, Settings
    from adapter.hl7.deliverer import Hl7Deliverer
    from adapter.jobs.deliver import _hl7_deliverers
    from adapter.store.outbox import Outbox

    async def client_tls(host: str) -> bool:
        settings = Settings(hl7=Hl7Settings(mllp=True, host=host, port=2575))
        with Outbox(store.at(tmp_path / "o.sqlite")) as outbox:
            async with AsyncExitStack() as stack:
                found = await _hl7_deliverers(stack, outbox, settings, {"default-ris"}, None)
                deliverer = found[("hl7", "default-ris")]
                assert isinstance(deliverer, Hl7Deliverer)
                return deliverer.client.tls is not None

    assert asyncio.run(client_tls("ris.hospital.example")) is True
    assert asyncio.run(client_tls("127.0.0.1")) is False
