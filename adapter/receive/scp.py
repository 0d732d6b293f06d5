"""The DICOM C-STORE receiver (pynetdicom): instances from a CT simulator or a PACS to the spool.

Each instance is written as the bytes received (``event.encoded_dataset()``: file meta plus the
data set exactly as sent, never decoded and re-encoded) and fsynced before the success status
is sent. If it cannot be written the answer is ``0xA700`` (out of resources), so the sender
keeps it and retries; a data set without its UIDs is ``0xC000`` (cannot understand). A
duplicate SOP Instance UID is answered with success and dropped.

Associations are accepted only for our AE title and, when ``dicom.allowed_callers`` is set, from
those calling AE titles (pynetdicom's ``require_called_aet`` / ``require_calling_aet``).
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any, Final

from pydicom import uid as sop
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from adapter.config import DicomSettings
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
SUCCESS: Final = 0x0000
COUNTERS: Final = (
    "associations",
    "associations_rejected",
    "received",
    "duplicates",
    "refused",
    "failed",
)
OUT_OF_RESOURCES: Final = 0xA700
CANNOT_UNDERSTAND: Final = 0xC000


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
        self._server: ThreadedAssociationServer | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "not started"
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Listen on ``dicom.listen_host:listen_port`` (threads; returns at once)."""
        ae = AE(ae_title=self.settings.ae_title)
        ae.require_called_aet = True
        ae.require_calling_aet = list(self.settings.allowed_callers)
        # Larger PDUs than the 16 KiB default mean fewer reads per image; bounded, because a
        # caller may send PDUs up to the size we announce.
        ae.maximum_pdu_size = 1024 * 1024
        for uid in STORAGE_CLASSES:
            ae.add_supported_context(uid, list(TRANSFER_SYNTAXES))
        ae.add_supported_context(VERIFICATION)
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_ACCEPTED, self._count("associations")),
            (evt.EVT_REJECTED, self._count("associations_rejected")),
        ]
        server = ae.start_server(
            (self.settings.listen_host, self.settings.listen_port),
            block=False,
            ssl_context=self._tls(),
            evt_handlers=handlers,
        )
        assert server is not None
        self._server = server
        log.info(
            "DICOM receiver %s on %s:%d",
            self.settings.ae_title,
            self.settings.listen_host,
            self.port,
        )

    def stop(self) -> None:
        """Stop accepting; associations in progress end (their unanswered instances are
        re-sent by the caller)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _tls(self) -> ssl.SSLContext | None:
        if not self.settings.tls_cert:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        if self.settings.tls_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.settings.tls_ca)
        return context

    def _count(self, name: str) -> Callable[[Any], None]:
        def handler(event: Any) -> None:
            self._bump(name)

        return handler

    def _bump(self, name: str) -> None:
        with self._lock:
            self.counts[name] += 1

    def _handle_store(self, event: Any) -> int:
        raw: bytes = event.encoded_dataset(include_meta=True)
        try:
            identity = identify(raw)
        except NotStorable as exc:
            self._bump("refused")
            log.warning("C-STORE refused: %s", exc)
            return CANNOT_UNDERSTAND
        if identity.sop_instance_uid != str(event.request.AffectedSOPInstanceUID):
            self._bump("refused")
            log.warning("C-STORE refused: SOP Instance UID differs from the request's")
            return CANNOT_UNDERSTAND
        try:
            new = self.spool.store(raw, identity)
        except OSError as exc:
            self._bump("failed")
            log.error("C-STORE not stored: %s", exc.strerror or type(exc).__name__)
            return OUT_OF_RESOURCES
        self._bump("received" if new else "duplicates")
        if new and self.on_stored is not None:
            self.on_stored()
        return SUCCESS
