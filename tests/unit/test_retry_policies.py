"""Per-destination retry policies (issue 8): the numbers each destination's settings give, and
which policy the one worker applies to a row."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import tenacity

from adapter.config import FhirSettings, LabelSettings, load_settings
from adapter.errors import ConfigError
from adapter.hl7.profiles import Connection, load_profiles, parse_profile
from adapter.jobs.retry_policies import (
    fhir_policy,
    label_policy,
    receiver_policies,
    receiver_policy,
)
from adapter.outbox.worker import RetryPolicy, Worker
from adapter.store.outbox import Outbox
from tests.store_backend import StoreUnderTest
from tests.support import ROOT


def _state(attempts: int, seconds: float) -> tenacity.RetryCallState:
    state = tenacity.RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempts
    state.start_time = 0.0
    state.outcome_timestamp = seconds
    return state


def _attempts_allowed(policy: RetryPolicy, limit: int = 1000) -> int:
    """How many attempts a row gets when each one fails at once."""
    attempts = 1
    while attempts < limit and not policy.stop(_state(attempts, 0.0)):
        attempts += 1
    return attempts


def test_a_receiver_gets_one_attempt_plus_its_resends() -> None:
    assert _attempts_allowed(receiver_policy(Connection(max_resends=0))) == 1
    assert _attempts_allowed(receiver_policy(Connection(max_resends=3))) == 4
    assert _attempts_allowed(receiver_policy(Connection(max_resends=5))) == 6


def test_a_receivers_waits_and_give_up_window() -> None:
    policy = receiver_policy(
        Connection(
            max_resends=50,
            resend_wait=timedelta(seconds=2),
            max_resend_wait=timedelta(seconds=10),
            give_up_after=timedelta(minutes=5),
        )
    )
    first = policy.wait(_state(1, 0.0))
    assert 2.0 <= first <= 4.0  # 2 s, plus up to 2 s of jitter
    assert policy.wait(_state(20, 0.0)) == 10.0  # capped
    assert not policy.stop(_state(3, 299.0)) and policy.stop(_state(3, 300.0))


def test_fhir_and_label_policies_follow_their_own_settings() -> None:
    fhir = FhirSettings(max_attempts=7, max_retry_seconds=60.0)
    label = LabelSettings(max_attempts=2, max_retry_seconds=30.0, initial_wait=0.5, max_wait=0.5)
    assert _attempts_allowed(fhir_policy(fhir)) == 7
    assert _attempts_allowed(label_policy(label, fhir)) == 2
    assert label_policy(label, fhir).wait(_state(9, 0.0)) == 0.5
    assert label_policy(label, fhir).max_retry_after == fhir.max_retry_after
    assert label_policy(label, fhir).stop(_state(1, 30.0))


def test_the_shipped_profiles_give_their_own_counts() -> None:
    profiles = load_profiles(ROOT / "mappings" / "receivers")
    policies = receiver_policies("hl7", profiles, ["default-ris", "imaging-procedure-control"])
    assert _attempts_allowed(policies[("hl7", "default-ris")]) == 4  # max_resends: 3
    assert _attempts_allowed(policies[("hl7", "imaging-procedure-control")]) == 6  # 5
    assert receiver_policies("hl7", profiles, ["no-such-profile"]) == {}


@pytest.mark.store
def test_the_worker_prefers_the_targets_policy(tmp_path: Path, store: StoreUnderTest) -> None:
    ris = RetryPolicy.backoff(max_attempts=2, max_seconds=60, initial_wait=1, max_wait=1)
    fhir = RetryPolicy.backoff(max_attempts=40, max_seconds=3600, initial_wait=1, max_wait=300)
    with Outbox(store.at(tmp_path / "o.sqlite")) as outbox:
        worker = Worker(
            outbox, {}, {"hl7": fhir, "fhir": fhir}, target_policies={("hl7", "default-ris"): ris}
        )
        assert worker.policy_for("hl7", "default-ris") is ris
        assert worker.policy_for("hl7", "document-oru") is fhir  # no own policy: the destination's
        assert _attempts_allowed(worker.policy_for("files", "/out")) == 10  # the default


def _profile(**connection: Any) -> dict[str, Any]:
    return {
        "name": "r",
        "sending": {"application": "RTPLAN"},
        "receiving": {"application": "RIS"},
        "connection": connection,
    }


def test_profile_resend_keys_are_read_and_checked() -> None:
    profile = parse_profile(
        _profile(max_resends=2, resend_wait="500ms", max_resend_wait="1m", give_up_after="2h"),
        "r.yaml",
    )
    c = profile.connection
    assert (c.max_resends, c.resend_wait, c.max_resend_wait, c.give_up_after) == (
        2,
        timedelta(milliseconds=500),
        timedelta(minutes=1),
        timedelta(hours=2),
    )
    for bad, key in [
        ({"resend_wait": "soon"}, "connection.resend_wait"),
        ({"resend_wait": "10s", "max_resend_wait": "5s"}, "connection.max_resend_wait"),
        ({"give_up_after": "0s"}, "connection.give_up_after"),
        ({"max_resends": 101}, "connection.max_resends"),
        ({"resends": 3}, "connection.resends"),
    ]:
        with pytest.raises(ConfigError) as caught:
            parse_profile(_profile(**bad), "r.yaml")
        assert key in str(caught.value)


def test_label_wait_rule() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env={"RTPLAN_LABEL__INITIAL_WAIT": "10", "RTPLAN_LABEL__MAX_WAIT": "5"})
    assert caught.value.key == "label.max_wait"
