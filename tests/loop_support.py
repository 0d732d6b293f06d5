"""Counting event loops and FHIR clients in a test process (issue 8: one of each per process).

:func:`count_loops_and_clients` patches ``asyncio.new_event_loop`` (both names: ``asyncio.run``
reaches it through ``asyncio.events``) and ``FhirClient.__init__`` for the test, and returns
the lists they append to: every event loop created from then on, and the base URL of every
FHIR client constructed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from adapter.fhir.client import FhirClient


def count_loops_and_clients(monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], list[str]]:
    loops: list[Any] = []
    clients: list[str] = []
    new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.events.new_event_loop

    def counting_loop() -> asyncio.AbstractEventLoop:
        loop = new_loop()
        loops.append(loop)
        return loop

    init = FhirClient.__init__

    def counting_init(self: FhirClient, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        clients.append(self.base_url)

    monkeypatch.setattr(asyncio.events, "new_event_loop", counting_loop)
    monkeypatch.setattr(asyncio, "new_event_loop", counting_loop)
    monkeypatch.setattr(FhirClient, "__init__", counting_init)
    return loops, clients
