"""``rtplan hl7 preview``: show the order message a receiver would get, for people to read.

Nothing is sent or stored. MSH-10 is a fixed ``PREVIEW`` and MSH-7 the time given (the CLI passes
its clock), so two previews of the same order differ only in the time.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from adapter.errors import ConfigError
from adapter.hl7.messages import build_order
from adapter.hl7.model import OrderRequest
from adapter.hl7.profiles import load_profiles

PREVIEW_CONTROL_ID = "PREVIEW"


def preview(
    order: OrderRequest | dict[str, Any],
    profile_name: str,
    profiles_folder: Path,
    *,
    now: datetime,
    control_id: str = PREVIEW_CONTROL_ID,
) -> str:
    """Render ``order`` for receiver ``profile_name`` with each segment on its own line.

    Parameters:
        order: an :class:`OrderRequest` or its ``to_json()`` form (an outbox payload).
        profile_name: a file name under ``profiles_folder`` without ``.yaml``.
        profiles_folder: usually ``mappings/receivers``.
        now: MSH-7.

    Raises:
        ConfigError: no such profile (the message lists the known ones).
        MessageBuildError: the order cannot be rendered for that receiver.
    """
    profiles = load_profiles(profiles_folder)
    if profile_name not in profiles:
        known = ", ".join(sorted(profiles)) or "none"
        raise ConfigError("hl7.receiver", f"no receiver profile {profile_name!r} (known: {known})")
    profile = profiles[profile_name]
    request = order if isinstance(order, OrderRequest) else OrderRequest.from_json(order)
    raw = build_order(request, profile, control_id=control_id, now=now)
    return raw.decode(profile.codec).replace("\r", "\n")
