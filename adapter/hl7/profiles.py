"""Receiver profiles: one YAML file per HL7 v2 receiver under ``mappings/receivers/``.

A profile says who we are and who the receiver is (MSH-3..6), which message profile it takes
(ORM^O01 2.3.1/2.4, OMG^O19 2.5.1 or OMI^O23 2.5.1), the charset (MSH-18, and the bytes really
are encoded in it), field defaults, the ACK mode, the connection placeholders and the escalation
timers. Files are validated once, at load: an unknown key, a wrong type or a bad value raises
:class:`~adapter.errors.MappingTableError` naming the file and the key, so an interface analyst
sees the mistake before anything is sent. The result is frozen. ``docs/receivers.md`` documents
every key.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

import yaml

from adapter.config import Settings, is_loopback
from adapter.errors import MappingTableError
from adapter.hl7.document_profile import (
    DOCUMENT_KEYS,
    DocumentOptions,
    parse_document_options,
)

MessageProfile = Literal["ORM^O01", "OMG^O19", "OMI^O23", "MDM^T02", "ORU^R01"]
#: profiles that take the review note (issue 15) rather than radiology orders.
DOCUMENT_MESSAGES = frozenset({"MDM^T02", "ORU^R01"})
AckMode = Literal["original", "enhanced"]
ProviderPlacement = Literal["both", "orc12", "obr16", "none"]
Unencodable = Literal["error", "replace", "transliterate"]
StudyIds = Literal["none", "obr"]
UpdateStyle = Literal["change", "cancel-replace"]


def receivers_dir(settings: Settings) -> Path:
    """The folder of receiver profiles: ``hl7.receivers_dir``, else ``<mappings>/receivers``."""
    return (
        Path(settings.hl7.receivers_dir)
        if settings.hl7.receivers_dir
        else settings.mappings_dir / "receivers"
    )

#: allowed versions per message profile; the first is the default.
VERSIONS: Mapping[str, tuple[str, ...]] = {
    "ORM^O01": ("2.3.1", "2.4"),
    "OMG^O19": ("2.5.1",),
    "OMI^O23": ("2.5.1",),
    "MDM^T02": ("2.5.1",),
    "ORU^R01": ("2.5.1",),
}
#: MSH-18 value → Python codec. Only charsets whose bytes we can really produce. ``UNICODE``
#: (ISO/IEC 10646, the only Unicode entry of table 0211 before v2.5) is sent as UTF-8.
CHARSET_CODECS: Mapping[str, str] = {
    "ASCII": "ascii",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "8859/1": "iso-8859-1",
    "8859/15": "iso-8859-15",
}
#: The values of HL7 table 0211 (MSH-18) per version, among those we can produce (checked
#: against hl7apy's tables by tests/unit/test_hl7_tables.py).
CHARSETS_BY_VERSION: Mapping[str, tuple[str, ...]] = {
    "2.3.1": ("UNICODE", "ASCII", "8859/1"),
    "2.4": ("UNICODE", "ASCII", "8859/1"),
    "2.5.1": ("UNICODE UTF-8", "ASCII", "8859/1", "8859/15", "UNICODE"),
}
#: HL7 table 0074 (Diagnostic Service Section ID, OBR-24) per version.
_T0074 = (
    "AU BG BLB CH CP CT CTH CUS EC EN HM ICU IMM LAB MB MCB MYC NMR NMS NRS OSL OT OTH OUS PF "
    "PHR PHY PT RAD RC RT RUS RX SP SR TX VR VUS XRC"
)
SERVICE_SECTIONS: Mapping[str, frozenset[str]] = {
    "2.3.1": frozenset(_T0074.split(" ")),
    "2.4": frozenset([*_T0074.split(" "), "IMG", "PAR", "PAT", "URN"]),
    "2.5.1": frozenset(_T0074.split(" ")),
}
#: HL7 table 0396 (coding system) entries we send, per version (2.3.1 has no table 0396:
#: only local 99zzz names and L). SNOMED CT ("SCT") enters table 0396 in v2.6, so earlier
#: versions name it by a local 99zzz code the site agrees with the RIS.
CODING_SYSTEMS: Mapping[str, frozenset[str]] = {
    "2.3.1": frozenset({"L"}),
    "2.4": frozenset({"L", "I10", "I9", "LN", "SNM", "SNM3", "SNT", "DCM"}),
    "2.5.1": frozenset({"L", "I10", "I9", "LN", "SNM", "SNM3", "SNT", "DCM"}),
}
LOCAL_CODING_SYSTEM = re.compile(r"^99[A-Z0-9]{1,10}$")
ACK_TYPES = ("AL", "ER", "NE", "SU")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


@dataclass(frozen=True, slots=True)
class Tls:
    """TLS for the MLLP connection.

    ``enabled`` unset (the default): TLS unless the host is loopback (127.0.0.0/8, ``::1``,
    ``localhost``), so patient data never crosses a network in clear by accident.
    ``enabled: false`` is the documented opt-out (logged as a warning for a remote host).
    """

    enabled: bool | None = None
    ca: str | None = None
    cert: str | None = None
    key: str | None = None

    def on_for(self, host: str) -> bool:
        """Whether a connection to ``host`` uses TLS."""
        if self.enabled is None:
            return not is_loopback(host)
        return self.enabled


@dataclass(frozen=True, slots=True)
class Sender:
    """MSH-3/MSH-4 (first components) a receiver's messages carry; empty facility: any."""

    application: str
    facility: str = ""


@dataclass(frozen=True, slots=True)
class Inbound:
    """Who may send us results and responses for this receiver's orders (docs/security.md).

    ``senders``: the MSH-3/MSH-4 pairs accepted (default: the profile's ``receiving`` pair).
    ``peers``: addresses or networks accepted from a sender without a verified client
    certificate (default: the connection host).
    """

    senders: tuple[Sender, ...] = ()
    peers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Connection:
    host: str = "127.0.0.1"
    port: int = 2575
    connect_timeout: timedelta = timedelta(seconds=10)
    ack_timeout: timedelta = timedelta(seconds=30)
    max_resends: int = 3
    """Sends after the first, same message (same MSH-10), when there is no valid answer (refused,
    timeout, dropped connection, wrong MSA-2, garbage): at most ``1 + max_resends`` attempts."""
    resend_wait: timedelta = timedelta(seconds=1)
    """First wait before a resend; it doubles each time (plus up to one ``resend_wait`` of
    jitter), up to ``max_resend_wait``."""
    max_resend_wait: timedelta = timedelta(minutes=5)
    give_up_after: timedelta = timedelta(hours=1)
    """No resend once the order has waited this long since it was queued."""
    tls: Tls = Tls()


@dataclass(frozen=True, slots=True)
class AckPolicy:
    """ACK discipline. ``original``: MSH-15/16 empty, only AA means delivered.

    ``enhanced``: MSH-15 (accept ack type) and MSH-16 (application ack type) are sent; with
    ``commit_only`` a commit accept (CA) already counts as delivered.
    """

    mode: AckMode = "original"
    commit_only: bool = False
    accept_ack_type: str = "AL"
    application_ack_type: str = "AL"


@dataclass(frozen=True, slots=True)
class FieldDefaults:
    patient_class: str = "O"  # PV1-2 (IHE requires PV1; "O" outpatient)
    service_coding_system: str = ""  # OBR-4.3 when the order gives none
    ordering_provider: ProviderPlacement = "both"  # ORC-12 and/or OBR-16
    processing_id: str = "P"  # MSH-11
    diagnostic_service_section: str = "RAD"  # OBR-24, table 0074 of the version
    snomed_coding_system: str = "99SCT"  # OBR-31.3 for a SNOMED CT reason (table 0396)
    study_ids: StudyIds = "none"  # "obr": the reviewed study's RP id / SPS id in OBR-19 / OBR-20


@dataclass(frozen=True, slots=True)
class Escalation:
    t1_no_aa: timedelta = timedelta(minutes=15)
    t2_no_result: timedelta = timedelta(hours=24)


@dataclass(frozen=True, slots=True)
class ReceiverProfile:
    name: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message: MessageProfile = "ORM^O01"
    version: str = "2.3.1"
    charset: str = "UNICODE UTF-8"
    unencodable: Unencodable = "error"
    updates: UpdateStyle = "change"  # an amended order: ORC-1 XO, or cancel + new order
    defaults: FieldDefaults = FieldDefaults()
    ack: AckPolicy = AckPolicy()
    connection: Connection = Connection()
    escalation: Escalation = Escalation()
    document: DocumentOptions = field(default_factory=DocumentOptions)  # MDM / ORU only
    source: str = ""  # the file it came from, for error messages
    inbound: Inbound = Inbound()

    @property
    def codec(self) -> str:
        """The Python codec for :attr:`charset`."""
        return CHARSET_CODECS[self.charset]


TOP_KEYS = frozenset(
    {
        "name", "title", "owner", "last_reviewed", "note", "sending", "receiving", "message",
        "version", "charset", "unencodable", "defaults", "ack", "connection", "escalation",
        "updates",
        "document",
        "inbound",
    }
)  # fmt: skip


class _Reader:
    """Typed access to one mapping with errors that name file and key (never values)."""

    def __init__(self, file: str, prefix: str, data: Any, allowed: frozenset[str]) -> None:
        self.file, self.prefix = file, prefix
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise MappingTableError(file, prefix or "(top)", "must be a mapping")
        unknown = sorted(str(k) for k in data if k not in allowed)
        if unknown:
            raise MappingTableError(file, self.key(unknown[0]), "unknown key")
        self.data: dict[str, Any] = data

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> MappingTableError:
        return MappingTableError(self.file, self.key(name), problem)

    def str_(self, name: str, default: str | None = None, *, choices: tuple[str, ...] = ()) -> str:
        value = self.data.get(name, default)
        if value is None:
            raise self.error(name, "is required")
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise self.error(name, "must be a string")
        text = str(value)
        if choices and text not in choices:
            raise self.error(name, f"must be one of {', '.join(choices)}")
        return text

    def bool_(self, name: str, default: bool) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, "must be true or false")
        return value

    def int_(self, name: str, default: int, *, low: int = 0, high: int = 65535) -> int:
        value = self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.error(name, f"must be an integer from {low} to {high}")
        return value

    def duration(self, name: str, default: timedelta) -> timedelta:
        value = self.data.get(name)
        if value is None:
            return default
        match = _DURATION.match(str(value)) if not isinstance(value, bool) else None
        if match is None:
            raise self.error(name, "must be a duration like 30s, 15m, 2h or 1d")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
        if seconds <= 0:
            raise self.error(name, "must be positive")
        return timedelta(seconds=seconds)

    def optional_path(self, name: str) -> str | None:
        value = self.data.get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            raise self.error(name, "must be a file path")
        return value

    def sub(self, name: str, allowed: frozenset[str]) -> _Reader:
        return _Reader(self.file, self.key(name), self.data.get(name), allowed)


def parse_profile(data: Any, file: str) -> ReceiverProfile:
    """Validate one profile document (already YAML-loaded) and freeze it."""
    top = _Reader(file, "", data, TOP_KEYS)
    sending = top.sub("sending", frozenset({"application", "facility"}))
    receiving = top.sub("receiving", frozenset({"application", "facility"}))
    message = top.str_("message", "ORM^O01", choices=tuple(VERSIONS))
    version = top.str_("version", VERSIONS[message][0], choices=VERSIONS[message])
    charset = top.str_("charset", CHARSETS_BY_VERSION[version][0], choices=tuple(CHARSET_CODECS))
    if charset not in CHARSETS_BY_VERSION[version]:
        allowed = ", ".join(CHARSETS_BY_VERSION[version])
        raise top.error("charset", f"is not in HL7 table 0211 of v{version} (one of {allowed})")
    d = top.sub(
        "defaults",
        frozenset(
            {
                "patient_class",
                "service_coding_system",
                "ordering_provider",
                "processing_id",
                "diagnostic_service_section",
                "snomed_coding_system",
                "study_ids",
            }
        ),
    )
    section = d.str_("diagnostic_service_section", "RAD")
    if section not in SERVICE_SECTIONS[version]:
        raise d.error("diagnostic_service_section", f"is not in HL7 table 0074 of v{version}")
    snomed = d.str_("snomed_coding_system", "99SCT")
    if snomed not in CODING_SYSTEMS[version] and not LOCAL_CODING_SYSTEM.match(snomed):
        raise d.error(
            "snomed_coding_system", f"is not in HL7 table 0396 of v{version} nor a local 99zzz"
        )
    a = top.sub(
        "ack", frozenset({"mode", "commit_only", "accept_ack_type", "application_ack_type"})
    )
    c = top.sub(
        "connection",
        frozenset(
            {
                "host",
                "port",
                "connect_timeout",
                "ack_timeout",
                "max_resends",
                "resend_wait",
                "max_resend_wait",
                "give_up_after",
                "tls",
            }
        ),
    )
    t = c.sub("tls", frozenset({"enabled", "ca", "cert", "key"}))
    e = top.sub("escalation", frozenset({"t1_no_aa", "t2_no_result"}))
    resend_wait = c.duration("resend_wait", timedelta(seconds=1))
    max_resend_wait = c.duration("max_resend_wait", timedelta(minutes=5))
    if max_resend_wait < resend_wait:
        raise c.error("max_resend_wait", "must not be less than resend_wait")
    mode = a.str_("mode", "original", choices=("original", "enhanced"))
    commit_only = a.bool_("commit_only", False)
    if commit_only and mode != "enhanced":
        raise a.error("commit_only", "needs mode: enhanced (original mode has no commit ACK)")
    tls = Tls(
        enabled=None if t.data.get("enabled") is None else t.bool_("enabled", False),
        ca=t.optional_path("ca"),
        cert=t.optional_path("cert"),
        key=t.optional_path("key"),
    )
    if (tls.cert is None) != (tls.key is None):
        raise t.error("cert", "cert and key go together (mTLS)")
    if "document" in top.data and message not in DOCUMENT_MESSAGES:
        raise top.error("document", "only for MDM^T02 or ORU^R01 profiles")
    document = parse_document_options(top.sub("document", DOCUMENT_KEYS))
    receiving_application = receiving.str_("application")
    receiving_facility = receiving.str_("facility", "")
    host = c.str_("host", "127.0.0.1")
    inbound = _inbound(top, receiving_application, receiving_facility, host)
    name = top.str_("name")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
        raise top.error("name", "must be lower-case letters, digits and hyphens")
    return ReceiverProfile(
        name=name,
        sending_application=sending.str_("application"),
        sending_facility=sending.str_("facility", ""),
        receiving_application=receiving_application,
        receiving_facility=receiving_facility,
        message=message,  # type: ignore[arg-type]  # checked against VERSIONS above
        version=version,
        charset=charset,
        unencodable=top.str_(  # type: ignore[arg-type]
            "unencodable", "error", choices=("error", "replace", "transliterate")
        ),
        updates=top.str_(  # type: ignore[arg-type]
            "updates", "change", choices=("change", "cancel-replace")
        ),
        defaults=FieldDefaults(
            patient_class=d.str_("patient_class", "O"),
            service_coding_system=d.str_("service_coding_system", ""),
            ordering_provider=d.str_(  # type: ignore[arg-type]
                "ordering_provider", "both", choices=("both", "orc12", "obr16", "none")
            ),
            processing_id=d.str_("processing_id", "P", choices=("P", "T", "D")),
            diagnostic_service_section=section,
            snomed_coding_system=snomed,
            study_ids=d.str_("study_ids", "none", choices=("none", "obr")),  # type: ignore[arg-type]
        ),
        ack=AckPolicy(
            mode=mode,  # type: ignore[arg-type]
            commit_only=commit_only,
            accept_ack_type=a.str_("accept_ack_type", "AL", choices=ACK_TYPES),
            application_ack_type=a.str_("application_ack_type", "AL", choices=ACK_TYPES),
        ),
        connection=Connection(
            host=host,
            port=c.int_("port", 2575, low=1),
            connect_timeout=c.duration("connect_timeout", timedelta(seconds=10)),
            ack_timeout=c.duration("ack_timeout", timedelta(seconds=30)),
            max_resends=c.int_("max_resends", 3, high=100),
            resend_wait=resend_wait,
            max_resend_wait=max_resend_wait,
            give_up_after=c.duration("give_up_after", timedelta(hours=1)),
            tls=tls,
        ),
        escalation=Escalation(
            t1_no_aa=e.duration("t1_no_aa", timedelta(minutes=15)),
            t2_no_result=e.duration("t2_no_result", timedelta(hours=24)),
        ),
        document=document,
        source=file,
        inbound=inbound,
    )


def _inbound(top: _Reader, application: str, facility: str, host: str) -> Inbound:
    section = top.sub("inbound", frozenset({"senders", "peers"}))
    senders_raw = section.data.get("senders")
    senders: list[Sender] = []
    if senders_raw is None:
        senders.append(Sender(application, facility))
    elif not isinstance(senders_raw, list) or not senders_raw:
        raise section.error("senders", "must be a list of {application, facility}")
    else:
        for index, item in enumerate(senders_raw):
            entry = _Reader(
                top.file, section.key(f"senders[{index}]"), item,
                frozenset({"application", "facility"}),
            )  # fmt: skip
            senders.append(Sender(entry.str_("application"), entry.str_("facility", "")))
    peers_raw = section.data.get("peers")
    if peers_raw is None:
        peers: tuple[str, ...] = (host,)
    elif not isinstance(peers_raw, list) or not all(isinstance(p, str) and p for p in peers_raw):
        raise section.error("peers", "must be a list of addresses, networks or host names")
    else:
        peers = tuple(peers_raw)
    for peer in peers:
        if "/" in peer:
            try:
                ipaddress.ip_network(peer, strict=False)
            except ValueError:
                raise section.error("peers", "not an address or network") from None
    return Inbound(tuple(senders), peers)


def load_profile(path: Path) -> ReceiverProfile:
    """Load and validate one receiver profile file; the profile name must match the file name."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        problem = f"cannot be read as YAML ({type(exc).__name__})"
        raise MappingTableError(path.name, "(file)", problem) from exc
    profile = parse_profile(data, path.name)
    if profile.name != path.stem:
        raise MappingTableError(path.name, "name", "must equal the file name without .yaml")
    return profile


def load_profiles(folder: Path) -> dict[str, ReceiverProfile]:
    """Load every ``*.yaml`` in ``folder`` (sorted), keyed by profile name."""
    if not folder.is_dir():
        raise MappingTableError(str(folder), "(folder)", "receiver profile folder does not exist")
    return {p.name: p for p in (load_profile(f) for f in sorted(folder.glob("*.yaml")))}
