"""Deliver ``dicom-kos`` outbox rows: C-STORE to an archive, STOW-RS to DICOMweb, or files.

Every attempt first checks the stored document's title again (the verdict of
:func:`adapter.label.titles.refuse_rejection_title`, from the raw bytes by
``adapter.label.raw_title`` when they allow it, else decoded by pydicom): a document whose title
is a rejection title, or is not on the allow-list, is a dead letter and is never sent.

Answers, as values:

========================================  =====================================================
C-STORE 0x0000, warnings 0xB000/B006/B007  delivered (the warning is kept on the row)
C-STORE 0xA7xx (out of resources)          retry
other C-STORE failures (0xA9xx, 0xCxxx)    dead, with the status code
association rejected (permanent)          dead, with the reason (e.g. called AE not recognised)
no association, transient rejection,       retry: the same SOP Instance UID is resent, and an
abort, no response                         archive that already has it keeps one copy
STOW-RS 200 with the instance referenced   delivered
STOW-RS 202/409 with the instance failed   dead, with the Failure Reason (0008,1197)
STOW-RS 408, 429, 5xx, no connection       retry (Retry-After honoured up to the cap)
STOW-RS other 4xx                          dead, with the status
========================================  =====================================================
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import ssl
import uuid
from collections.abc import Iterable
from contextlib import AsyncExitStack
from io import BytesIO
from pathlib import Path
from typing import Any

from adapter.config import LabelSettings, Settings
from adapter.label.kos_payload import KosPayload
from adapter.label.raw_title import Defer as RawDefer
from adapter.label.raw_title import checked_title
from adapter.label.service import DIMSE_PREFIX, KOS_FILES, PACS, label_targets
from adapter.label.titles import RejectionTitleRefused, load_vocabulary, refuse_rejection_title
from adapter.outbox.worker import Attempt, Deliverer, Verdict
from adapter.store import payloads
from adapter.store.outbox import Row
from adapter.tables import load_tables

log = logging.getLogger(__name__)
# pynetdicom's DEBUG output dumps PDUs and, for some services, identifiers: keep it at WARNING.
logging.getLogger("pynetdicom").setLevel(logging.WARNING)

_WARNINGS = frozenset({0xB000, 0xB006, 0xB007})
# DICOM JSON tags of a STOW-RS response (PS3.18 Store Instances response).
DICOM_JSON_REFERENCED = "00081199"
DICOM_JSON_FAILED = "00081198"
DICOM_JSON_SOP_INSTANCE = "00081155"
DICOM_JSON_FAILURE_REASON = "00081197"


def kos_payload(row: Row) -> KosPayload:
    """The row's typed payload (``adapter.label.kos_payload``).

    Raises:
        PayloadError: the payload is not a KOS row's (names the field).
    """
    return payloads.read_as(KosPayload, row.kind, row.payload)


def checked_document(row: Row, allowed: Iterable[str]) -> tuple[bytes, Any]:
    """The row's KOS bytes and Dataset, after the pre-send title check.

    Raises:
        RejectionTitleRefused: the title is a rejection title or not allowed.
    """
    from pydicom import dcmread  # only when a label row is delivered

    kos = kos_payload(row)
    data = kos.document
    ds = dcmread(BytesIO(data))
    refuse_rejection_title(ds, allowed)
    if str(ds.SOPInstanceUID) != kos.sop_instance_uid:
        raise RejectionTitleRefused("the stored document is not the row's KOS")
    return data, ds


def checked_bytes(row: Row, allowed: Iterable[str]) -> bytes:
    """The row's KOS bytes after the same pre-send check as :func:`checked_document`, read
    from the bytes (``adapter.label.raw_title``) when they allow it, else with pydicom.

    Raises:
        RejectionTitleRefused: the title is a rejection title or not allowed.
    """
    kos = kos_payload(row)
    data = kos.document
    try:
        sop_instance_uid = checked_title(data, allowed)
    except RawDefer:
        return checked_document(row, allowed)[0]
    if sop_instance_uid != kos.sop_instance_uid:
        raise RejectionTitleRefused("the stored document is not the row's KOS")
    return data


def _refused(exc: RejectionTitleRefused) -> Attempt:
    log.error("label KOS refused before sending: %s", exc)
    return Attempt(Verdict.DEAD, f"refused before sending: {exc}")


class KosFileDeliverer:
    """The embedded default: each KOS as ``<dir>/dicom/<label>.dcm`` (private, atomic)."""

    def __init__(self, out_dir: Path, allowed: frozenset[str]) -> None:
        self.folder = out_dir / "dicom"
        self.allowed = allowed

    async def deliver(self, row: Row) -> Attempt:
        try:
            data = checked_bytes(row, self.allowed)
        except RejectionTitleRefused as exc:
            return _refused(exc)
        target = self.folder / f"{row.label}.dcm"
        try:
            await asyncio.to_thread(self._write, target, data)  # fsynced: off the event loop
        except OSError as exc:
            return Attempt(Verdict.RETRY, f"cannot write the KOS file: {exc.strerror}")
        return Attempt(Verdict.DELIVERED, result={"file": str(target)})

    def _write(self, target: Path, data: bytes) -> None:
        tmp = target.with_name(f".{target.name}.tmp")
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(target)


class CStoreDeliverer:
    """C-STORE to one archive AE with pynetdicom (one association per row)."""

    def __init__(
        self,
        called_ae: str,
        host: str,
        port: int,
        *,
        calling_ae: str,
        allowed: frozenset[str],
        timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.called_ae, self.host, self.port = called_ae, host, port
        self.calling_ae = calling_ae
        self.allowed = allowed
        self.timeout = timeout
        self.tls = tls

    async def deliver(self, row: Row) -> Attempt:
        try:
            _, ds = checked_document(row, self.allowed)
        except RejectionTitleRefused as exc:
            return _refused(exc)
        return await asyncio.to_thread(self._send, ds)

    def _send(self, ds: Any) -> Attempt:
        from pynetdicom import AE
        from pynetdicom.sop_class import KeyObjectSelectionDocumentStorage  # type: ignore

        # Connect once ourselves first: when the archive is down, pynetdicom 3.0.4 leaks the
        # socket of the refused connection (its shutdown() on an unconnected socket raises
        # before close()), and a down archive is the commonest failure there is.
        try:
            socket.create_connection((self.host, self.port), timeout=self.timeout).close()
        except OSError as exc:
            why = type(exc).__name__
            return Attempt(Verdict.RETRY, f"C-STORE {self.called_ae}: no association ({why})")
        ae = AE(ae_title=self.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        ae.connection_timeout = self.timeout
        ae.add_requested_context(KeyObjectSelectionDocumentStorage)
        tls_args = (self.tls, self.host) if self.tls is not None else None
        assoc = ae.associate(self.host, self.port, ae_title=self.called_ae, tls_args=tls_args)
        if not assoc.is_established:
            _close_socket(assoc)
            if not assoc.is_rejected:
                return Attempt(Verdict.RETRY, f"C-STORE {self.called_ae}: no association")
            answer = getattr(assoc.acceptor, "primitive", None)
            why = f"association rejected: {getattr(answer, 'reason_str', 'no reason given')}"
            if getattr(answer, "result", None) == 0x01:  # rejected-permanent: a value, not noise
                return Attempt(Verdict.DEAD, f"C-STORE {self.called_ae}: {why}")
            return Attempt(Verdict.RETRY, f"C-STORE {self.called_ae}: {why} (transient)")
        try:
            status = assoc.send_c_store(ds)
        finally:
            if assoc.is_established:
                assoc.release()
            _close_socket(assoc)
        code = getattr(status, "Status", None)
        if code is None:
            return Attempt(Verdict.RETRY, f"C-STORE {self.called_ae}: no response")
        result = {"status": f"0x{code:04X}", "ae": self.called_ae}
        if code == 0x0000 or code in _WARNINGS:
            return Attempt(Verdict.DELIVERED, result=result)
        if 0xA700 <= code <= 0xA7FF:
            return Attempt(Verdict.RETRY, f"C-STORE status 0x{code:04X} (out of resources)")
        return Attempt(Verdict.DEAD, f"C-STORE refused: status 0x{code:04X}", result=result)


def _close_socket(assoc: Any) -> None:
    """Close the association's TCP socket. pynetdicom 3.0.4 leaves it open when the peer drops
    the connection during association negotiation (e.g. plain DICOM to a TLS-only port)."""
    transport = getattr(getattr(assoc, "dul", None), "socket", None)
    raw = getattr(transport, "socket", None)
    if raw is not None:
        raw.close()


class StowDeliverer:
    """STOW-RS ``POST <base>/studies`` with one ``application/dicom`` part (httpx)."""

    def __init__(self, base_url: str, client: Any, allowed: frozenset[str]) -> None:
        self.url = f"{base_url}/studies"
        self.client = client
        self.allowed = allowed

    async def deliver(self, row: Row) -> Attempt:
        import httpx

        try:
            data = checked_bytes(row, self.allowed)
        except RejectionTitleRefused as exc:
            return _refused(exc)
        boundary = uuid.uuid4().hex
        body = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + data
            + f"\r\n--{boundary}--\r\n".encode()
        )
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        try:
            response = await self.client.post(self.url, content=body, headers=headers)
        except httpx.ConnectError:
            return Attempt(Verdict.RETRY, "STOW-RS: cannot connect")
        except httpx.HTTPError as exc:
            return Attempt(Verdict.RETRY, f"STOW-RS: no answer ({type(exc).__name__})")
        return _judge_stow(response, kos_payload(row).sop_instance_uid)


def _judge_stow(response: Any, sop_uid: str) -> Attempt:
    status = response.status_code
    if status in (408, 429) or status >= 500:
        after = response.headers.get("Retry-After", "")
        wait = float(after) if after.isdigit() else None
        return Attempt(Verdict.RETRY, f"STOW-RS HTTP {status}", retry_after=wait)
    try:
        body = response.json() if response.content else {}
    except ValueError:
        body = {}
    referenced = _sop_uids(body, DICOM_JSON_REFERENCED)
    failed = _failures(body)
    result = {"http": status}
    if status == 200 and (sop_uid in referenced or not body):
        return Attempt(Verdict.DELIVERED, result=result)
    if sop_uid in failed:
        reason = f"STOW-RS HTTP {status}: failure reason {failed[sop_uid]}"
        return Attempt(Verdict.DEAD, reason, result=result)
    return Attempt(Verdict.DEAD, f"STOW-RS HTTP {status}", result=result)


def _items(body: Any, tag: str) -> list[Any]:
    if not isinstance(body, dict):
        return []
    element = body.get(tag)
    value = element.get("Value") if isinstance(element, dict) else None
    return value if isinstance(value, list) else []


def _sop_uids(body: Any, tag: str) -> set[str]:
    uids = set()
    for item in _items(body, tag):
        for uid in _items(item, DICOM_JSON_SOP_INSTANCE):
            uids.add(str(uid))
    return uids


def _failures(body: Any) -> dict[str, str]:
    found = {}
    for item in _items(body, DICOM_JSON_FAILED):
        reasons = _items(item, DICOM_JSON_FAILURE_REASON)
        for uid in _items(item, DICOM_JSON_SOP_INSTANCE):
            found[str(uid)] = f"0x{int(reasons[0]):04X}" if reasons else "unknown"
    return found


def _client_tls(label: LabelSettings) -> ssl.SSLContext:
    """Verification always on, TLS 1.2 or later (as for FHIR and MLLP)."""
    context = ssl.create_default_context(cafile=label.ca_bundle or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if label.client_cert:
        context.load_cert_chain(label.client_cert, label.client_key or None)
    return context


# The allow-list by mappings folder, with a digest of the table files it was read from. The
# C-STORE receiver and the DICOMweb back-load deliver once per study, each time building the
# label deliverers again: parsing every table for that (25-50 ms) cost about as much as
# building the KOS, while hashing the files costs about a millisecond. Any change to a table
# file's bytes (or a file added or removed) parses them again.
_ALLOWED: dict[str, tuple[str, frozenset[str]]] = {}


def allowed_titles(folder: Path) -> frozenset[str]:
    """The title allow-list of the tables in ``folder`` (checked as ``load_vocabulary`` does).

    Raises:
        MappingTableError: as :func:`adapter.tables.load_tables` and
            :func:`adapter.label.titles.load_vocabulary`.
    """
    digest = hashlib.sha256()
    try:
        for path in sorted(folder.glob("*.yaml")):
            digest.update(path.name.encode(errors="surrogateescape") + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    except OSError:
        return load_vocabulary(load_tables(folder)).allowed_titles  # it words the problem
    key = str(folder)
    known = _ALLOWED.get(key)
    if known is not None and known[0] == digest.hexdigest():
        return known[1]
    allowed = load_vocabulary(load_tables(folder)).allowed_titles
    _ALLOWED[key] = (digest.hexdigest(), allowed)
    return allowed


def parse_dimse_target(target: str) -> tuple[str, str, int]:
    """``dimse:AE@host:port`` -> (AE, host, port)."""
    ae, _, address = target.removeprefix(DIMSE_PREFIX).partition("@")
    host, _, port = address.rpartition(":")
    return ae, host, int(port)


async def pacs_deliverers(
    stack: AsyncExitStack,
    settings: Settings,
    waiting: Iterable[tuple[str, str]],
    out_dir: Path | None,
) -> dict[tuple[str, str], Deliverer]:
    """Deliverers for the label destinations that are configured or still have rows."""
    wanted = dict.fromkeys(
        [*label_targets(settings, out_dir), *[w for w in waiting if w[0] in (KOS_FILES, PACS)]]
    )
    if not wanted:
        return {}
    allowed = allowed_titles(settings.mappings_dir)
    label = settings.label
    found: dict[tuple[str, str], Deliverer] = {}
    for destination, target in wanted:
        if destination == KOS_FILES:
            found[(destination, target)] = KosFileDeliverer(Path(target), allowed)
        elif target.startswith(DIMSE_PREFIX):
            ae, host, port = parse_dimse_target(target)
            tls = _client_tls(label) if label.tls else None
            found[(destination, target)] = CStoreDeliverer(
                ae,
                host,
                port,
                calling_ae=label.calling_ae,
                allowed=allowed,
                timeout=label.timeout,
                tls=tls,
            )
        else:
            import httpx

            verify: ssl.SSLContext | bool = (
                _client_tls(label) if target.startswith("https:") else True
            )
            client = await stack.enter_async_context(
                httpx.AsyncClient(timeout=label.timeout, verify=verify)
            )
            found[(destination, target)] = StowDeliverer(target, client, allowed)
    return found
