"""Shared pytest configuration: the real and fake peers, each a plugin module.

The peers are started by their fixtures (once per session for real servers), bound to
127.0.0.1 on free ports, and stopped by the PID we started. A missing peer FAILS the run:
nothing is skipped.
"""

import pytest

pytest_plugins = [
    "tests.peers.medplum_fixture",
    "tests.peers.hapi_fixture",
    "tests.peers.fault_fixture",
    "tests.peers.mllp_fixture",
    "tests.peers.hl7v2_validator_fixture",
    "tests.peers.fhir_validator_fixture",
    "tests.peers.orthanc_fixture",
    "tests.peers.postgres_fixture",
    "tests.store_backend",
]
FHIR_SERVERS = ["medplum", "hapi"]


@pytest.fixture(params=FHIR_SERVERS)
def fhir_url(request: pytest.FixtureRequest) -> str:
    """The base URL of each real FHIR server in turn (a fresh or reset store per test)."""
    return str(request.getfixturevalue(request.param))
