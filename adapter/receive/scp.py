"""The DICOM C-STORE receiver: instances from a CT simulator or a PACS to the spool.

Each instance is written as the bytes received (file meta plus the data set exactly as sent,
never decoded and re-encoded) and fsynced before the success status is sent. If it cannot be
written the answer is ``0xA700`` (out of resources), so the sender keeps it and retries; a data
set without its UIDs is ``0xC000`` (cannot understand). A duplicate SOP Instance UID is answered
with success and dropped.

Associations are accepted only for our AE title and, when ``dicom.allowed_callers`` is set, from
those calling AE titles; other callers get A-ASSOCIATE-RJ.

Why not pynetdicom here (it was, until measured): its acceptor runs two threads per association
that poll queues with fixed 1 ms sleeps and decode every PDU into objects, and it reached 0.17x
dcmtk's ``storescp`` on the same study (``docs/benchmarks.md``). This receiver is one thread per
association doing blocking reads, which is how ``storescp`` works; it needs only the acceptor's
half of the upper layer (``pdu.py``) and three DIMSE messages (``dimse.py``). pynetdicom stays
the SCU that sends labels to PACS and the test senders that check this receiver.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import socketserver
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Final

from pydicom import uid as sop

from adapter.config import DicomSettings
from adapter.dicom.limits import (
    DEFLATED_TS,
    IMPLICIT_LE_TS,
    Problem,
    ReadLimits,
    check_inflated_size,
)
from adapter.label.plan import IMPLEMENTATION_CLASS_UID
from adapter.receive import dimse, pdu
from adapter.receive.pdu import PduError
from adapter.receive.scan import scan_identity
from adapter.receive.spool import NotStorable, Spool, identify

log = logging.getLogger(__name__)

# CT, MR, PET, their enhanced and legacy-converted forms, and the RT objects a planning study
# carries (structure set, plan, dose, image, registration).
STORAGE_CLASSES: Final[tuple[str, ...]] = tuple(
    str(uid)
    for uid in (
        sop.CTImageStorage,
        sop.EnhancedCTImageStorage,
        sop.LegacyConvertedEnhancedCTImageStorage,
        sop.MRImageStorage,
        sop.EnhancedMRImageStorage,
        sop.EnhancedMRColorImageStorage,
        sop.LegacyConvertedEnhancedMRImageStorage,
        sop.PositronEmissionTomographyImageStorage,
        sop.EnhancedPETImageStorage,
        sop.LegacyConvertedEnhancedPETImageStorage,
        sop.RTImageStorage,
        sop.RTDoseStorage,
        sop.RTStructureSetStorage,
        sop.RTPlanStorage,
        sop.RTIonPlanStorage,
        sop.RTBeamsTreatmentRecordStorage,
        sop.RTTreatmentSummaryRecordStorage,
        sop.SpatialRegistrationStorage,
        sop.DeformableSpatialRegistrationStorage,
    )
)
# Uncompressed (implicit/explicit little endian, explicit big endian, deflated) and the usual
# compressed syntaxes: we store the bytes, so no codec is needed to accept them.
TRANSFER_SYNTAXES: Final[tuple[str, ...]] = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
VERIFICATION: Final = "1.2.840.10008.1.1"
_READ_LIMITS: Final = ReadLimits()  # the same bounds as file ingest
SUCCESS: Final = 0x0000
OUT_OF_RESOURCES: Final = 0xA700
CANNOT_UNDERSTAND: Final = 0xC000
SOP_CLASS_NOT_SUPPORTED: Final = 0x0122
UNRECOGNIZED_OPERATION: Final = 0x0211
COUNTERS: Final = (
    "associations",
    "associations_rejected",
    "received",
    "duplicates",
    "refused",
    "failed",
)

IMPLEMENTATION_VERSION: Final = "RTPLAN_SCP_1"
MAX_PDU_LENGTH: Final = 1024 * 1024
"""The largest P-DATA-TF we accept (announced in the A-ASSOCIATE-AC): larger PDUs mean fewer
reads per image; bounded, because a caller may send PDUs up to the size we announce."""
MAX_INSTANCE_BYTES: Final = 1024**3
"""An instance is held in memory until it is on disk; a larger one aborts the association
(an enhanced CT of 1,000 512x512 frames is 0.5 GiB)."""
MAX_BUFFERED_BYTES: Final = 3 * 1024**3
"""Data sets held in memory across all associations at once: an association whose next
fragment would pass it is aborted (its sender re-sends later) rather than the process running
out of memory."""
MAX_ASSOCIATIONS: Final = 16
"""Associations at once; one more is rejected as transient ("local limit exceeded")."""
MAX_REQUEST_LENGTH: Final = 64 * 1024
"""An A-ASSOCIATE-RQ is a few hundred bytes per presentation context."""
REQUEST_TIMEOUT: Final = 30.0
"""The TLS handshake and the whole A-ASSOCIATE-RQ must arrive within this from the connection
(the ARTIM timer, PS3.8 §9.1.5)."""
IDLE_TIMEOUT: Final = 60.0
"""An established association must send each PDU, whole, within this; else it is aborted."""
FRAGMENT_OVERHEAD: Final = 256
"""What holding one received fragment costs beyond its bytes (the view and its list slot),
counted in the limits so that a flood of empty fragments is bounded too."""

_SUPPORTED: Final[dict[str, tuple[str, ...]]] = {
    **dict.fromkeys(STORAGE_CLASSES, TRANSFER_SYNTAXES),
    VERIFICATION: (IMPLICIT_LE_TS,),  # the only syntax Verification has
}


class Receiver:
    """A running (or startable) C-STORE SCP writing into a :class:`Spool`."""

    def __init__(
        self,
        settings: DicomSettings,
        spool: Spool,
        *,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.spool = spool
        self.on_stored = on_stored
        # Every counter exists from the start (a scrape shows 0, not nothing).
        self.counts: Counter[str] = Counter(dict.fromkeys(COUNTERS, 0))
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._open: set[_Association] = set()
        self._stopping = False
        self._buffered = 0  # bytes of data sets held by all associations

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Listen on ``dicom.listen_host:listen_port`` (threads; returns at once)."""
        server = _Server((self.settings.listen_host, self.settings.listen_port), self)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="dicom-receiver", daemon=True
        )
        self._thread.start()
        log.info(
            "DICOM receiver %s on %s:%d",
            self.settings.ae_title,
            self.settings.listen_host,
            self.port,
        )

    def stop(self) -> None:
        """Stop accepting and end the associations in progress (their unanswered instances
        are re-sent by the caller); returns when their threads have finished."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._lock:
            self._stopping = True  # one accepted during shutdown() is closed at once
        server.shutdown()
        with self._lock:
            for association in self._open:
                association.cut()
        server.server_close()  # joins the association threads (block_on_close)
        if self._thread is not None:
            self._thread.join()

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.settings.tls_cert:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        if self.settings.tls_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.settings.tls_ca)
        return context

    def bump(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def admit(self, association: _Association) -> str | None:
        """Register a connection; why not, when the receiver is stopping or full."""
        with self._lock:
            if self._stopping:
                return "the receiver is stopping"
            if len(self._open) >= MAX_ASSOCIATIONS:
                return f"{MAX_ASSOCIATIONS} associations already open"
            self._open.add(association)
            return None

    def reserve(self, size: int) -> bool:
        """Count ``size`` more bytes held in memory; False if that passes the budget."""
        with self._lock:
            if self._buffered + size > MAX_BUFFERED_BYTES:
                return False
            self._buffered += size
            return True

    def release(self, size: int) -> None:
        with self._lock:
            self._buffered -= size

    def closed(self, association: _Association) -> None:
        with self._lock:
            self._open.discard(association)

    def store(
        self, raw: bytes, instance_uid: str, *, data_set_at: int, transfer_syntax: str
    ) -> int:
        """Spool one received Part 10 instance (its data set at ``raw[data_set_at:]``); the
        status to answer."""
        try:
            if transfer_syntax == DEFLATED_TS:
                _check_inflation(raw, data_set_at)  # pydicom would inflate it all in memory
            identity = scan_identity(raw, data_set_at, transfer_syntax) or identify(raw)
        except NotStorable as exc:
            self.bump("refused")
            log.warning("C-STORE refused: %s", exc)
            return CANNOT_UNDERSTAND
        if identity.sop_instance_uid != instance_uid:
            self.bump("refused")
            log.warning("C-STORE refused: SOP Instance UID differs from the request's")
            return CANNOT_UNDERSTAND
        try:
            new = self.spool.store(raw, identity)
        except OSError as exc:
            self.bump("failed")
            log.error("C-STORE not stored: %s", exc.strerror or type(exc).__name__)
            return OUT_OF_RESOURCES
        self.bump("received" if new else "duplicates")
        if new and self.on_stored is not None:
            self.on_stored()
        return SUCCESS


def _check_inflation(raw: bytes, data_set_at: int) -> None:
    """A deflated data set inflates within ingest's limits (``ReadLimits``), or is refused."""
    try:
        check_inflated_size(raw, data_set_at, _READ_LIMITS)
    except Problem as exc:
        raise NotStorable(exc.reason) from None


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    request_queue_size = 64  # connections waiting to be accepted (a modality burst)
    daemon_threads = False  # stop() waits for each association's thread
    block_on_close = True

    def __init__(self, address: tuple[str, int], receiver: Receiver) -> None:
        self.receiver = receiver
        self.tls = receiver.tls_context()
        super().__init__(address, _Association)


class _Closed(Exception):
    """The peer closed the connection (or it was shut down by stop())."""


class _Association(socketserver.BaseRequestHandler):
    """One association, on its own thread: blocking reads, one PDU at a time."""

    server: _Server
    request: socket.socket

    def setup(self) -> None:
        self.receiver = self.server.receiver
        self.settings = self.receiver.settings
        self.sock: socket.socket = self.request
        self.peer_max = 0
        self.accepted: dict[int, tuple[str, str]] = {}  # context id -> (abstract, transfer)
        self.calling_ae = ""
        self.held = 0  # bytes of the current data set counted in the receiver's memory budget
        self.deadline = 0.0  # time.monotonic() by which the bytes being read must have arrived

    def handle(self) -> None:
        refusal = self.receiver.admit(self)
        if refusal is not None:
            self._reject_busy(refusal)
            return
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # One deadline for the TLS handshake and the whole A-ASSOCIATE-RQ: a sender that
            # drips a byte at a time does not keep the connection (and a slot) for longer.
            self.deadline = time.monotonic() + REQUEST_TIMEOUT
            if self.server.tls is not None and not self._handshake(self.server.tls):
                return
            if self._associate():
                self._serve()
        except PduError as exc:
            log.warning("DICOM association aborted: %s", exc)
            self._send_quietly(pdu.abort(exc.reason))
        except _Closed:
            pass
        except TimeoutError:
            log.warning("DICOM association aborted: no PDU within the time limit")
            self._send_quietly(pdu.abort(0))
        except OSError as exc:
            log.warning("DICOM association ended: %s", exc.strerror or type(exc).__name__)
        except Exception as exc:  # a fault of ours: the caller keeps its instance and retries
            log.error("DICOM association failed: %s", type(exc).__name__)
            self._send_quietly(pdu.abort(0))
        finally:
            self.receiver.closed(self)

    def finish(self) -> None:
        if self.sock is not self.request:
            self.sock.close()  # the TLS socket; socketserver closes only the one it accepted

    def cut(self) -> None:
        """End the connection from another thread (stop()): its blocked read returns."""
        with contextlib.suppress(OSError):  # already closed
            self.sock.shutdown(socket.SHUT_RDWR)

    def _handshake(self, tls: ssl.SSLContext) -> bool:
        # Wrapped first, shaken after: stop() can then cut the TLS socket mid-handshake.
        self.sock = tls.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False)
        try:
            self.sock.settimeout(max(self.deadline - time.monotonic(), 0.001))
            self.sock.do_handshake()  # CPython times the whole handshake against this
        except (ssl.SSLError, OSError) as exc:
            log.warning("DICOM TLS handshake refused: %s", type(exc).__name__)
            return False
        return True

    def _reject_busy(self, reason: str) -> None:
        self.sock.settimeout(REQUEST_TIMEOUT)
        self.receiver.bump("associations_rejected")
        log.warning("DICOM association rejected: %s", reason)
        # Transient, service-provider (presentation), local limit exceeded (PS3.8 table 9-21).
        self._send_quietly(pdu.associate_rj(2, 3, 2))

    def _associate(self) -> bool:
        kind, body = self._read_pdu(MAX_REQUEST_LENGTH)
        if kind != pdu.ASSOCIATE_RQ:
            raise PduError("first PDU is not an A-ASSOCIATE-RQ", pdu.ABORT_UNEXPECTED_PDU)
        request = pdu.parse_associate_rq(body)
        refusal = self._refusal(request)
        if refusal is not None:
            self.receiver.bump("associations_rejected")
            self.sock.sendall(pdu.associate_rj(1, *refusal))
            return False
        results = [self._negotiate(context) for context in request.contexts]
        self.accepted = {
            r.id: (c.abstract_syntax, r.transfer_syntax)
            for r, c in zip(results, request.contexts, strict=True)
            if r.result == pdu.ACCEPTANCE
        }
        self.peer_max = request.max_pdu_length
        self.calling_ae = request.calling_ae
        self.sock.sendall(
            pdu.associate_ac(
                request,
                results,
                max_pdu_length=MAX_PDU_LENGTH,
                implementation_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version=IMPLEMENTATION_VERSION,
            )
        )
        self.receiver.bump("associations")
        return True

    def _refusal(self, request: pdu.AssociateRequest) -> tuple[int, int] | None:
        """(source, reason) of an A-ASSOCIATE-RJ (PS3.8 table 9-21), or None to accept."""
        if not request.contexts:
            log.warning("DICOM association rejected: no presentation context proposed")
            return 1, 1
        if not request.protocol_version & pdu.PROTOCOL_VERSION:
            log.warning("DICOM association rejected: protocol version not supported")
            return 2, 2
        if request.application_context != pdu.APPLICATION_CONTEXT:
            log.warning("DICOM association rejected: application context not supported")
            return 1, 2
        if request.called_ae != self.settings.ae_title:
            log.warning("DICOM association rejected: called AE title is not ours")
            return 1, 7
        allowed = self.settings.allowed_callers
        if allowed and request.calling_ae not in allowed:
            log.warning("DICOM association rejected: calling AE title not on the allow-list")
            return 1, 3
        return None

    @staticmethod
    def _negotiate(context: pdu.ProposedContext) -> pdu.ContextResult:
        ours = _SUPPORTED.get(context.abstract_syntax)
        if ours is None:
            return pdu.ContextResult(
                context.id, pdu.ABSTRACT_SYNTAX_NOT_SUPPORTED, context.transfer_syntaxes[0]
            )
        for syntax in context.transfer_syntaxes:  # the caller's order of preference
            if syntax in ours:
                return pdu.ContextResult(context.id, pdu.ACCEPTANCE, syntax)
        return pdu.ContextResult(
            context.id, pdu.TRANSFER_SYNTAXES_NOT_SUPPORTED, context.transfer_syntaxes[0]
        )

    def _serve(self) -> None:
        try:
            self._messages()
        finally:
            self.receiver.release(self.held)

    def _messages(self) -> None:
        command_parts: list[bytes] = []
        command_size = 0
        data_parts: list[bytes | memoryview] = []
        data_size = 0
        command: dimse.Command | None = None
        context_id = 0
        while True:
            self.deadline = time.monotonic() + IDLE_TIMEOUT  # to wait for a PDU and read it
            kind, body = self._read_pdu(MAX_PDU_LENGTH)
            if kind == pdu.RELEASE_RQ:
                self.sock.sendall(pdu.release_rp())
                return
            if kind == pdu.ABORT:
                return
            if kind != pdu.P_DATA_TF:
                raise PduError(
                    f"PDU type {kind:#04x} during an association", pdu.ABORT_UNEXPECTED_PDU
                )
            for pdv in pdu.iter_pdvs(memoryview(body)):
                if pdv.context_id not in self.accepted:
                    raise PduError("PDV on a presentation context that was not accepted")
                if pdv.is_command:
                    if command is not None:
                        raise PduError("command fragment before the data set ended")
                    command_size += len(pdv.data) + FRAGMENT_OVERHEAD
                    if command_size > dimse.MAX_COMMAND_BYTES:
                        raise PduError("command set larger than 64 KiB")
                    command_parts.append(bytes(pdv.data))
                    if not pdv.is_last:
                        continue
                    command = dimse.parse_command(b"".join(command_parts))
                    command_parts, command_size = [], 0
                    if command.field & dimse.RESPONSE_BIT:
                        raise PduError("a response where a request was expected")
                    context_id = pdv.context_id
                    if command.has_data_set:
                        continue
                else:
                    if command is None or pdv.context_id != context_id:
                        raise PduError("data set fragment without its command")
                    # A fragment costs its bytes and its view (empty fragments are not free).
                    cost = len(pdv.data) + FRAGMENT_OVERHEAD
                    data_size += cost
                    if data_size > MAX_INSTANCE_BYTES:
                        raise PduError("data set larger than the receiver's limit")
                    if not self.receiver.reserve(cost):
                        raise PduError(
                            "data sets in memory over the receiver's budget", pdu.ABORT_NO_REASON
                        )
                    self.held += cost
                    data_parts.append(pdv.data)  # a view of its PDU's own buffer: no copy
                    if not pdv.is_last:
                        continue
                status = self._perform(command, context_id, data_parts)
                if command.field != dimse.C_CANCEL_RQ:
                    self._respond(context_id, dimse.response(command, status))
                command, data_parts, data_size = None, [], 0
                self.receiver.release(self.held)
                self.held = 0

    def _perform(
        self, command: dimse.Command, context_id: int, data: list[bytes | memoryview]
    ) -> int:
        abstract, transfer = self.accepted[context_id]
        if command.field == dimse.C_ECHO_RQ:
            return SUCCESS
        if command.field != dimse.C_STORE_RQ:
            return UNRECOGNIZED_OPERATION
        if command.sop_class != abstract or abstract == VERIFICATION:
            self.receiver.bump("refused")  # every C-STORE answered with a failure is counted
            return SOP_CLASS_NOT_SUPPORTED
        if not command.sop_instance or not data:
            self.receiver.bump("refused")
            return CANNOT_UNDERSTAND
        meta = dimse.file_meta(
            command.sop_class,
            command.sop_instance,
            transfer,
            implementation_uid=IMPLEMENTATION_CLASS_UID,
            implementation_version=IMPLEMENTATION_VERSION,
        )
        size = len(meta) + sum(len(part) for part in data)
        if not self.receiver.reserve(size):  # the joined copy below, while the parts live
            log.warning("C-STORE not stored: data sets in memory over the receiver's budget")
            self.receiver.bump("failed")
            return OUT_OF_RESOURCES  # the sender keeps the instance and sends it again
        try:
            return self.receiver.store(
                b"".join((meta, *data)),
                command.sop_instance,
                data_set_at=len(meta),
                transfer_syntax=transfer,
            )
        finally:
            self.receiver.release(size)

    def _respond(self, context_id: int, command_set: bytes) -> None:
        chunks = pdu.p_data(context_id, command_set, command=True, max_pdu_length=self.peer_max)
        self.sock.sendall(b"".join(chunks))

    def _read_pdu(self, limit: int) -> tuple[int, bytearray]:
        header = self._read_exactly(pdu.HEADER.size)
        kind, length = pdu.HEADER.unpack(header)
        if not pdu.ASSOCIATE_RQ <= kind <= pdu.ABORT:
            raise PduError(f"unrecognized PDU type {kind:#04x}", pdu.ABORT_UNRECOGNIZED_PDU)
        if length > limit:
            raise PduError(f"PDU of {length} bytes, over the {limit} announced")
        return kind, self._read_exactly(length)

    def _read_exactly(self, size: int) -> bytearray:
        """A new buffer per PDU, so that views of an earlier one stay valid; by
        ``self.deadline``, however the bytes are spread out."""
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            count = self.sock.recv_into(view[got:])
            if count == 0:
                raise _Closed
            got += count
        return buffer

    def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(OSError):  # the peer has gone; nothing to tell it
            self.sock.sendall(data)
