"""pytest plugin: the fault-injecting FHIR peer (tests/peers/fault_fhir.py).

Load with ``-p tests.peers.fault_fixture`` or ``pytest_plugins = ["tests.peers.fault_fixture"]``.

* ``fault_fhir``: a started ``FaultServer`` (plain HTTP, no auth), stopped after the test.
* ``fault_fhir_factory``: ``fault_fhir_factory(**FaultServer kwargs)`` starts more servers
  (``require_bearer=True``, ``tls=...``, ``token_ttl_s=2`` ...); all are stopped after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.peers.fault_fhir import FaultServer


@pytest.fixture
def fault_fhir() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


@pytest.fixture
def fault_fhir_factory() -> Iterator[Callable[..., FaultServer]]:
    started: list[FaultServer] = []

    def make(**kwargs: Any) -> FaultServer:
        server = FaultServer(**kwargs).start()
        started.append(server)
        return server

    yield make
    for server in reversed(started):
        server.stop()
