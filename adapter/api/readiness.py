"""``GET /readyz``: every dependency of this process, checked at once (issue 11).

* the store answers (always);
* the FHIR server answers its CapabilityStatement (when ``fhir.base_url`` is set: reviews are
  mapped against it and Bundles delivered to it);
* the spool accepts a file (when the C-STORE receiver is on: a receiver that cannot spool
  answers every instance with a failure);
* when this process delivers (``serve.delivery``): the output folder accepts a file (with
  ``--out``), each HL7 receiver it sends to accepts a TCP connection (``hl7.mllp``: the order
  receiver and the note's MDM/ORU receivers), and the PACS label destinations accept one
  (``label.cstore``, ``label.stow_rs_url``).

A peer is "reachable" when it accepts a connection within ``TIMEOUT`` seconds; nothing is sent
to an HL7 or DICOM peer (a readiness probe every few seconds must not fill a RIS's log with
messages). The answer names the failed dependency by role and profile name, never a host, a
path or anything from the data.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Awaitable
from pathlib import Path
from urllib.parse import urlsplit

from adapter.config import Settings
from adapter.errors import ConfigError
from adapter.private import private_dir
from adapter.store.protocol import Store

TIMEOUT = 5.0


async def readiness_problems(
    settings: Settings,
    out_dir: Path | None,
    outbox: Store | None,
    fhir_ready: Awaitable[bool] | None = None,
    *,
    store_reachable: Awaitable[bool] | None = None,
) -> list[str]:
    """What is not ready, one short phrase each (empty: ready). ``fhir_ready``: the check of
    the configured FHIR server through the process's own client (``adapter.api.app``).
    ``store_reachable``: the API's check of the store off the event loop; without it
    ``outbox`` is asked here."""
    problems: list[str] = []
    if store_reachable is not None:
        if not await store_reachable:
            problems.append("store not reachable")
    else:
        try:
            if outbox is None:
                raise RuntimeError("not open")
            outbox.counts()
        except Exception:  # any store failure means not ready
            problems.append("store not reachable")
    if settings.dicom.listen_port and not _writable(spool_folder(settings, out_dir)):
        problems.append("spool not writable")
    checks: dict[str, Awaitable[bool]] = {}
    if fhir_ready is not None:
        checks["FHIR server not reachable"] = fhir_ready
    if settings.serve.delivery:
        if out_dir is not None and not _output_folder_writable(out_dir):
            problems.append("output folder not writable")
        for name, (host, port) in hl7_receivers(settings, out_dir).items():
            checks[f"HL7 receiver {name} not reachable"] = tcp_reachable(host, port)
        for role, (host, port) in pacs_peers(settings).items():
            checks[f"PACS {role} not reachable"] = tcp_reachable(host, port)
    results = await asyncio.gather(*checks.values())
    problems.extend(problem for problem, ok in zip(checks, results, strict=True) if not ok)
    return problems


def spool_folder(settings: Settings, out_dir: Path | None) -> Path:
    """The receiver's spool, as ``adapter.receive.process.spool_path`` resolves it (the API
    layer may not import the receiver's; ``tests/integration/test_readiness.py`` checks that
    the two agree)."""
    if settings.dicom.spool_dir:
        return Path(settings.dicom.spool_dir)
    return (out_dir / "spool") if out_dir is not None else Path(".rtplan") / "spool"


def hl7_receivers(settings: Settings, out_dir: Path | None) -> dict[str, tuple[str, int]]:
    """Profile name -> (host, port) of every receiver this process sends to over MLLP, as the
    delivery wiring resolves them (``adapter.jobs.deliver._hl7_deliverers``)."""
    if not settings.hl7.mllp:
        return {}
    from adapter.hl7.profiles import DOCUMENT_MESSAGES, load_profiles, receivers_dir
    from adapter.jobs.deliver import note_receivers

    profiles = load_profiles(receivers_dir(settings))
    names = [settings.hl7.receiver, *note_receivers(settings, out_dir)]
    found: dict[str, tuple[str, int]] = {}
    for name in names:
        profile = profiles.get(name)
        if profile is None:
            found[name] = ("", 0)  # no such profile: reported as not reachable
            continue
        conn = profile.connection
        if profile.message in DOCUMENT_MESSAGES:
            found[name] = (conn.host, conn.port)
        else:
            found[name] = (settings.hl7.host or conn.host, settings.hl7.port or conn.port)
    return found


def pacs_peers(settings: Settings) -> dict[str, tuple[str, int]]:
    """The PACS label destinations (``label.cstore``, ``label.stow_rs_url``) when labelling."""
    label = settings.label
    found: dict[str, tuple[str, int]] = {}
    if not label.enabled:
        return found
    if label.cstore:
        _, _, address = label.cstore.partition("@")
        host, _, port = address.rpartition(":")
        found["C-STORE"] = (host, int(port) if port.isdigit() else 0)
    if label.stow_rs_url:
        parts = urlsplit(label.stow_rs_url)
        default = 443 if parts.scheme == "https" else 80
        try:
            port_ = parts.port or default
        except ValueError:
            port_ = 0
        found["STOW-RS"] = (parts.hostname or "", port_)
    return found


async def tcp_reachable(host: str, port: int, timeout: float = TIMEOUT) -> bool:
    """The peer accepts a TCP connection within ``timeout``; the connection is closed at once."""
    if not host or not 0 < port < 65536:
        return False
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _output_folder_writable(out_dir: Path) -> bool:
    """The output folder accepts a file. One not there yet is made first (0700), as the first
    output would make it: on SQLite the store's file made it at start-up, but with a database
    server as the store nothing is written there before the first output."""
    try:
        private_dir(out_dir)
    except ConfigError:
        return False
    return _writable(out_dir)


def _writable(folder: Path) -> bool:
    """A file can be created (and fsynced) in ``folder``; it is removed again."""
    try:
        handle, name = tempfile.mkstemp(prefix=".ready-", dir=folder)
    except OSError:
        return False
    try:
        os.fsync(handle)
    except OSError:
        return False
    finally:
        os.close(handle)
        with contextlib.suppress(OSError):
            Path(name).unlink()
    return True
