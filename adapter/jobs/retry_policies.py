"""Each destination's retry policy, from its own settings (issue 8).

One retry mechanism applies them all (:class:`adapter.outbox.worker.Worker`); this module only
says which numbers each destination uses:

- the FHIR server: ``fhir.max_attempts``, ``fhir.max_retry_seconds``, ``fhir.initial_wait``,
  ``fhir.max_wait``, ``fhir.max_retry_after``;
- each HL7 receiver over MLLP (orders, and the review note's MDM/ORU receivers): its profile's
  ``connection.max_resends`` (at most ``1 + max_resends`` attempts), ``resend_wait``,
  ``max_resend_wait`` and ``give_up_after``;
- the PACS label (C-STORE, STOW-RS): ``label.max_attempts``, ``label.max_retry_seconds``,
  ``label.initial_wait``, ``label.max_wait`` (a STOW-RS ``Retry-After`` is capped by
  ``fhir.max_retry_after``).

Files written into the output folder keep the worker's default policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from adapter.config import FhirSettings, LabelSettings
from adapter.outbox.worker import RetryPolicy

if TYPE_CHECKING:  # types only: the HL7 profiles are not loaded unless a receiver is used
    from adapter.hl7.profiles import Connection, ReceiverProfile


def fhir_policy(fhir: FhirSettings) -> RetryPolicy:
    return RetryPolicy.backoff(
        max_attempts=fhir.max_attempts,
        max_seconds=fhir.max_retry_seconds,
        initial_wait=fhir.initial_wait,
        max_wait=fhir.max_wait,
        max_retry_after=fhir.max_retry_after,
    )


def receiver_policy(connection: Connection) -> RetryPolicy:
    return RetryPolicy.backoff(
        max_attempts=1 + connection.max_resends,
        max_seconds=connection.give_up_after.total_seconds(),
        initial_wait=connection.resend_wait.total_seconds(),
        max_wait=connection.max_resend_wait.total_seconds(),
    )


def receiver_policies(
    destination: str, profiles: Mapping[str, ReceiverProfile], names: Iterable[str]
) -> dict[tuple[str, str], RetryPolicy]:
    """``(destination, profile name)`` -> that receiver's policy, for the profiles that exist."""
    return {
        (destination, name): receiver_policy(profiles[name].connection)
        for name in names
        if name in profiles
    }


def label_policy(label: LabelSettings, fhir: FhirSettings) -> RetryPolicy:
    return RetryPolicy.backoff(
        max_attempts=label.max_attempts,
        max_seconds=label.max_retry_seconds,
        initial_wait=label.initial_wait,
        max_wait=label.max_wait,
        max_retry_after=fhir.max_retry_after,
    )
