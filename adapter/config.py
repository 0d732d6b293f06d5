"""Typed, immutable, validated settings: one YAML file plus environment overrides.

The file has one section per concern (``ingest``, ``fhir``, ``archive``, ``outbox``,
``review``, ...) and an optional top-level ``mappings_dir``. Any key can be overridden from the
environment as ``RTPLAN_<SECTION>__<KEY>`` (for example ``RTPLAN_INGEST__TIMEZONE=Europe/Paris``)
or ``RTPLAN_MAPPINGS_DIR``. Everything is checked at start-up; an error names the key.

Reading, types and ranges are pydantic-settings' (:mod:`adapter.settings_source`); the ranges sit
on the fields (``Interval``), the rules between fields are :func:`validate_settings`'s. The
sections stay frozen dataclasses so that code can ``dataclasses.replace`` them.

Adding a setting is one line: a field with its default (and its range) in its section. Adding a
section is its dataclass plus one line in :class:`Settings` (the loader reads, overrides and
checks it, refusing unknown keys, without a change). Then document it in
``docs/configuration.md`` (a test checks that every key is there, with its default).

The variable named by ``fhir.token_env`` (``RTPLAN_FHIR_TOKEN`` unless changed) holds a secret,
not a setting: it is never read as an override and never stored in :class:`Settings`.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from adapter.errors import ConfigError
from adapter.settings_source import FINITE, Interval, SettingsReader, TextList

log = logging.getLogger(__name__)

ENV_PREFIX = "RTPLAN_"
DEFAULT_TOKEN_ENV = "RTPLAN_FHIR_TOKEN"
# The tables shipped with the adapter, used when no mappings_dir is configured.
DEFAULT_MAPPINGS_DIR = Path(__file__).resolve().parent.parent / "mappings"

Port = Annotated[int, Interval(ge=0, le=65535)]
Days = Annotated[int, Interval(ge=0, le=3650)]


@dataclass(frozen=True, slots=True)
class IngestSettings:
    timezone: str = "Europe/London"
    """IANA zone for DICOM times that carry no Timezone Offset From UTC (0008,0201)."""
    diagnostic_studies: Literal["report", "map"] = "report"
    """``report``: a study that is not a planning scan is listed and not sent. ``map``: it is
    mapped without any planning label."""
    incomplete_studies: Literal["hold", "map"] = "hold"
    """``hold``: an incomplete study is reported and not sent, so nobody reviews half a dataset."""
    min_supporting_evidence: Annotated[int, Interval(ge=1, le=1000)] = 1
    """How many independent supporting rules (codes, description, protocol, station, AE) make a
    study a planning scan when no RT object references it."""
    workers: Annotated[int, Interval(ge=0, le=256)] = 0
    """Processes reading DICOM headers; 0 = one per CPU."""

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True)
class FhirSettings:
    base_url: str = ""
    """The FHIR server; empty means the embedded default (no server)."""
    version: Literal["R4", "R5", "auto"] = "auto"
    """``auto``: R5 only when the server's CapabilityStatement says fhirVersion 5.x."""
    create_patient: bool = False
    """False: the Patient is referenced by identifier and must exist on the server (the EHR
    owns patients). True: the Bundle creates it if no Patient has that identifier."""
    auth: Literal["none", "bearer", "smart"] = "none"
    token_env: str = DEFAULT_TOKEN_ENV
    """``bearer``: the environment variable holding the token (never the token itself)."""
    token_url: str = ""
    client_id: str = ""
    private_key: str = ""
    """``smart``: path to the PEM private key whose public half is in the registered JWKS."""
    key_id: str = ""
    algorithm: Literal["RS384", "ES384"] = "RS384"
    scope: str = "system/ImagingStudy.cu system/Patient.rs system/Endpoint.cu"
    ca_bundle: str = ""
    client_cert: str = ""
    client_key: str = ""
    connect_timeout: Annotated[float, FINITE, Interval(ge=0.001, le=3600.0)] = 5.0
    read_timeout: Annotated[float, FINITE, Interval(ge=0.001, le=3600.0)] = 30.0
    deadline: Annotated[float, FINITE, Interval(ge=0.001, le=86400.0)] = 60.0
    """Overall seconds for one request, body included."""
    max_attempts: Annotated[int, Interval(ge=1, le=100_000)] = 40
    max_retry_seconds: Annotated[float, FINITE, Interval(ge=0.001, le=30 * 86400.0)] = 3600.0
    """Give up on a row after this many seconds since it was enqueued. With max_wait, this is
    what decides how long an outage the adapter rides out without dead letters."""
    initial_wait: Annotated[float, FINITE, Interval(ge=0.001, le=86400.0)] = 1.0
    max_wait: Annotated[float, FINITE, Interval(ge=0.001, le=86400.0)] = 300.0
    max_retry_after: Annotated[float, FINITE, Interval(ge=0.001, le=86400.0)] = 120.0
    """A Retry-After longer than this is not honoured: the row gives up and escalates."""
    concurrency: Annotated[int, Interval(ge=1, le=64)] = 4
    reconcile: bool = True
    """Search by identifier after each write and alert when more than one resource matches."""
    allow_insecure_http: bool = False
    """True: accept ``http://`` for ``base_url`` and ``token_url`` on non-loopback hosts (tokens
    and patient data then travel in clear; a warning is logged at start-up)."""


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    path: str = ""
    """SQLite file. Empty: ``<out>/outbox.sqlite`` with ``--out``, else
    ``.rtplan/outbox.sqlite``."""
    lease_seconds: Annotated[float, FINITE, Interval(ge=0.001, le=86400.0)] = 300.0


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Which database holds the outbox and the records (docs/operations.md "Choosing the store")."""

    url: str = ""
    """``sqlite:///PATH`` (a SQLite file; ``sqlite:////abs/path`` for an absolute one) or
    ``postgresql://USER@HOST/DB`` (several instances may share it). Empty: the SQLite file
    that ``outbox.path`` / ``--out`` / ``--db`` name. A password belongs in libpq's
    ``PGPASSWORD`` or ``~/.pgpass``, not here; it is never printed."""


@dataclass(frozen=True, slots=True)
class ArchiveSettings:
    wado_rs_base_url: str = ""
    """DICOMweb WADO-RS service base URL (no ``/studies``, no trailing slash). Empty: no
    Endpoint is written."""
    name: str = "Planning archive"


@dataclass(frozen=True, slots=True)
class ReviewSettings:
    """The oncologist review (issue 4): review Task at ingest, radiology request on concern."""


    due_days: Days = 14
    """The oncologist-review Task is due this many days after the study started."""
    default_owner_type: Literal["Organization", "Practitioner", "PractitionerRole", "CareTeam"] = (
        "Organization"
    )
    default_owner_system: str = "urn:rtplan:team"
    default_owner_value: str = "rt-oncology"
    default_owner_display: str = "Radiotherapy oncology team"
    """Owner of the review Task when mappings/oncologists.yaml has no row for the referrer."""
    prior_imaging_days: Annotated[int, Interval(ge=0, le=36500)] = 365
    """Window for the prior cross-sectional imaging check (days before the planning scan)."""
    prior_imaging_modalities: str = "CT,MR,PT"
    match_body_site: bool = True
    """When the planning scan's body site is known, a prior study counts only if one of its
    series has the same body site code."""
    raised_priority: Literal["urgent", "asap", "stat"] = "urgent"
    """Review Task priority when no prior imaging was found."""
    radiology_org_system: str = "urn:rtplan:organization"
    radiology_org_value: str = "radiology"
    radiology_org_display: str = "Clinical radiology"
    radiology_due_days: Days = 14
    """Radiology Task due this many days after the review for a routine request."""
    radiology_due_days_urgent: Days = 2
    """... and for an urgent, asap or stat request."""

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(
            m.strip().upper() for m in self.prior_imaging_modalities.split(",") if m.strip()
        )


@dataclass(frozen=True, slots=True)
class Hl7Settings:
    """Orders for radiologist review (issue 5): which receiver, and how to reach it."""


    receiver: str = "default-ris"
    """Receiver profile name: ``mappings/receivers/<receiver>.yaml``."""
    receivers_dir: str = ""
    """Folder of receiver profiles; empty: ``<mappings_dir>/receivers``."""
    mllp: bool = False
    """True: send orders over MLLP to the profile's host and port (or the overrides below).
    False: the embedded default, orders are written as ``.hl7`` files into the output folder."""
    host: str = ""
    port: Port = 0
    placer_namespace: str = "RTPLAN"
    """EI namespace of the placer order numbers (ORC-2.2 / OBR-2.2)."""
    listen_host: str = "127.0.0.1"
    listen_port: Port = 2576
    """``rtplan serve``: where the MLLP listener for ACKs and results listens."""
    escalation_check_seconds: Annotated[float, FINITE, Interval(ge=0.01, le=86400.0)] = 30.0
    listen_tls_cert: str = ""
    """PEM certificate chain of the listener; with ``listen_tls_key`` the listener speaks TLS
    only. Empty: plain TCP, and each sender must come from an address its receiver profile
    allows (``inbound.peers``)."""
    listen_tls_key: str = ""
    listen_tls_client_ca: str = ""
    """CA file: when set, every sender must present a client certificate it signed."""
    listen_max_frame_bytes: Annotated[int, Interval(ge=1024, le=64 * 1024 * 1024)] = 1024 * 1024
    """Longest inbound message; a longer frame is discarded and its connection closed."""
    listen_max_connection_bytes: Annotated[int, Interval(ge=1024, le=1024 * 1024 * 1024)] = (
        2 * 1024 * 1024
    )
    """Bytes one connection may hold in memory (queued messages and a partial one)."""
    listen_max_connections: Annotated[int, Interval(ge=1, le=10_000)] = 32
    """Connections served at once; at the cap the quietest idle one makes room, else the new
    connection is closed."""
    listen_idle_timeout: Annotated[float, FINITE, Interval(ge=0.01, le=86400.0)] = 300.0
    """Seconds a connection may stay silent before it is closed."""


NOTE_OUTPUTS = ("diagnostic-report", "document-reference", "mdm", "oru")


@dataclass(frozen=True, slots=True)
class NoteSettings:
    """The planning-scan review note (issue 15): which outputs a site gets."""


    outputs: str = "auto"
    """Comma-separated, any combination of ``diagnostic-report`` (the DiagnosticReport, with the
    note as presentedForm), ``document-reference`` (a DocumentReference per note version),
    ``mdm`` and ``oru`` (HL7 v2 to the profiles below). ``auto``: both FHIR outputs, plus
    ``mdm`` and ``oru`` as ``.hl7`` files when there is an output folder and ``hl7.mllp`` is
    off (the embedded default writes everything). Without ``diagnostic-report`` the review's
    Bundle carries no DiagnosticReport (its Tasks then point at the DocumentReference, or at
    nothing)."""
    mdm_receiver: str = "document-mdm"
    """Receiver profile (``MDM^T02``) for the ``mdm`` output."""
    oru_receiver: str = "document-oru"
    """Receiver profile (``ORU^R01``) for the ``oru`` output."""

    def selected(self, *, out_dir: bool, mllp: bool) -> frozenset[str]:
        if self.outputs.strip() == "auto":
            hl7 = ("mdm", "oru") if out_dir and not mllp else ()
            return frozenset(("diagnostic-report", "document-reference", *hl7))
        return frozenset(o.strip() for o in self.outputs.split(",") if o.strip())


@dataclass(frozen=True, slots=True)
class LabelSettings:
    """The planning label on the PACS (issue 12, docs/pacs-label.md): a Key Object Selection
    document per planning study."""


    enabled: bool = True
    """False: no KOS is built, written or sent."""
    series_number: Annotated[int, Interval(ge=0, le=2147483647)] = 9901
    """Series Number (0020,0011) of the KOS series added to the planning study."""
    cstore: str = ""
    """C-STORE destination ``AE_TITLE@host:port`` (the archive's Storage SCP). Empty: none."""
    calling_ae: str = "RTPLAN"
    """Our AE title when sending by C-STORE."""
    stow_rs_url: str = ""
    """DICOMweb base URL for STOW-RS (``POST <url>/studies``). Empty: none."""
    tls: bool = False
    """C-STORE over TLS (DICOM PS3.15 B.1); STOW-RS follows its URL scheme."""
    ca_bundle: str = ""
    client_cert: str = ""
    client_key: str = ""
    """TLS: CA file to trust; client certificate and key for mutual TLS."""
    timeout: Annotated[float, FINITE, Interval(ge=0.001, le=86400.0)] = 30.0
    """Seconds for connecting and for each answer (C-STORE and STOW-RS)."""
    max_attempts: Annotated[int, Interval(ge=1, le=100_000)] = 40
    max_retry_seconds: Annotated[float, FINITE, Interval(ge=0.001, le=30 * 86400.0)] = 3600.0
    initial_wait: Annotated[float, FINITE, Interval(ge=0.001, le=86400.0)] = 1.0
    max_wait: Annotated[float, FINITE, Interval(ge=0.001, le=86400.0)] = 300.0
    """The label's own retry policy (C-STORE and STOW-RS): at most ``max_attempts`` attempts
    within ``max_retry_seconds`` of queueing, waits from ``initial_wait`` doubling up to
    ``max_wait``."""


@dataclass(frozen=True, slots=True)
class DicomSettings:
    """The DICOM C-STORE receiver of ``rtplan serve`` (issue 11, docs/operations.md)."""


    listen_port: Port = 0
    """C-STORE receiver port; 0 = off."""
    listen_host: str = "127.0.0.1"
    ae_title: str = "RTPLAN"
    """Our AE title: associations that call another title are rejected."""
    allowed_callers: TextList = ()
    """Calling AE titles accepted; empty = any."""
    quiet_seconds: Annotated[float, FINITE, Interval(ge=0.001, le=86400.0)] = 60.0
    """A study idle this long is processed (sooner when (0020,1208) says all have arrived)."""
    spool_dir: str = ""
    """Where received instances wait. Empty: ``<out>/spool`` with ``--out``, else
    ``.rtplan/spool``."""
    tls_cert: str = ""
    tls_key: str = ""
    """TLS (DICOM PS3.15 B.1): our certificate and key, PEM. Empty: no TLS."""
    tls_ca: str = ""
    """With TLS: CA file that callers' client certificates must chain to (then required)."""


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """The HTTP API of ``rtplan serve`` (issue 11, docs/operations.md, docs/openapi.json)."""


    listen_port: Port = 0
    """HTTP API port; 0 = off."""
    listen_host: str = "127.0.0.1"
    tokens_file: str = ""
    """One bearer token per line; empty = every API request is refused."""
    max_body_bytes: Annotated[int, Interval(ge=1, le=1024 * 1024 * 1024)] = 1_048_576
    """A request body larger than this is refused (413) before it is read."""


@dataclass(frozen=True, slots=True)
class ServeSettings:
    """Which parts of ``rtplan serve`` run in this process (issue 11, docs/operations.md). The
    C-STORE receiver and the HTTP API are switched by their ports (``dicom.listen_port``,
    ``http.listen_port``; 0 = off); these two by name, so that two processes on one store can
    share the work (the API in one, delivery in another)."""

    mllp_listener: bool = True
    """The MLLP listener for ACKs, order responses and radiologist results (``hl7.listen_*``)."""
    delivery: bool = True
    """The outbox worker and the escalation check. False: rows are only stored (by the API, the
    receiver, the listener) and another process delivers them (``rtplan serve`` with
    ``delivery: true``, or ``rtplan outbox run --forever``)."""


@dataclass(frozen=True, slots=True)
class LogSettings:
    """``rtplan serve``'s log (issue 11): JSON lines on stderr, no patient data."""


    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


@dataclass(frozen=True, slots=True)
class Settings:
    mappings_dir: Path = DEFAULT_MAPPINGS_DIR
    ingest: IngestSettings = field(default_factory=IngestSettings)
    fhir: FhirSettings = field(default_factory=FhirSettings)
    archive: ArchiveSettings = field(default_factory=ArchiveSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    review: ReviewSettings = field(default_factory=ReviewSettings)
    hl7: Hl7Settings = field(default_factory=Hl7Settings)
    label: LabelSettings = field(default_factory=LabelSettings)
    note: NoteSettings = field(default_factory=NoteSettings)
    dicom: DicomSettings = field(default_factory=DicomSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    serve: ServeSettings = field(default_factory=ServeSettings)
    log: LogSettings = field(default_factory=LogSettings)


_READER = SettingsReader(Settings, ENV_PREFIX)
SECTIONS: Mapping[str, type[Any]] = _READER.sections


def _yaml_problem(exc: Exception) -> str:
    """PyYAML's message is several lines (with the offending text); one line, with a place."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or type(exc).__name__
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + " ".join(str(problem).split())


def load_settings(path: Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from an optional YAML file and the environment.

    Raises:
        ConfigError: naming the first key (or variable) that is unknown, of the wrong type or
            invalid.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        import yaml  # only with a settings file: start-up time (docs/ingest.md "Start-up")

        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(str(path), f"cannot read settings file: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(str(path), f"not valid YAML: {_yaml_problem(exc)}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(str(path), "the settings file must be a YAML mapping")
        raw = loaded
    environ = os.environ if env is None else env
    secrets = _secret_variables(raw, environ)
    _READER.refuse_unknown_variables(environ, secrets)
    if raw or _READER.overridden(environ, secrets):
        settings = _READER.load(raw, environ)  # pydantic-settings: types and ranges checked
    else:
        # Nothing to read: the defaults, which are what pydantic-settings gives for no input
        # (tests/unit/test_settings_source.py proves it), without importing pydantic.
        settings = Settings()
    _check_rules(settings)
    return settings


def validate_settings(settings: Settings) -> None:
    """Check every type, range and rule; call again after changing settings (``--fhir-url``).

    Raises:
        ConfigError: naming the first key that breaks a rule.
    """
    _READER.revalidate(settings)
    _check_rules(settings)


def _check_rules(settings: Settings) -> None:
    """The rules of one key beyond its type and range, and the rules between keys."""
    _check(settings)
    _check_pairs(settings)
    _check_transport(settings)


def _secret_variables(raw: Mapping[str, Any], env: Mapping[str, str]) -> set[str]:
    """The bearer-token variable (default, or renamed by file or override) is not a setting."""
    secrets = {DEFAULT_TOKEN_ENV, env.get("RTPLAN_FHIR__TOKEN_ENV", "")}
    fhir_section = raw.get("fhir")
    if isinstance(fhir_section, dict) and isinstance(fhir_section.get("token_env"), str):
        secrets.add(fhir_section["token_env"])
    return secrets


def _check(settings: Settings) -> None:
    try:
        settings.ingest.zone  # noqa: B018 - validates the zone name
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError("ingest.timezone", "not an IANA time zone name") from None
    fhir = settings.fhir
    if fhir.base_url and not fhir.base_url.startswith(("http://", "https://")):
        raise ConfigError("fhir.base_url", "must be an http(s) URL")
    if fhir.token_url and not fhir.token_url.startswith(("http://", "https://")):
        raise ConfigError("fhir.token_url", "must be an http(s) URL")
    if fhir.auth == "smart":
        for name in ("token_url", "client_id", "private_key", "key_id"):
            if not getattr(fhir, name):
                raise ConfigError(f"fhir.{name}", "is required with auth: smart")
    review = settings.review
    for name in ("default_owner_system", "radiology_org_system"):
        if not getattr(review, name).startswith(("urn:", "http://", "https://")):
            raise ConfigError(f"review.{name}", "must be a URI")
    if not review.modalities:
        raise ConfigError("review.prior_imaging_modalities", "list at least one modality")
    _check_label(settings.label)
    _check_dicom(settings.dicom)
    url = settings.archive.wado_rs_base_url
    if url and (not url.startswith(("http://", "https://")) or url.endswith("/")):
        raise ConfigError(
            "archive.wado_rs_base_url", "must be an http(s) base URL without a trailing slash"
        )
    _check_note(settings.note)
    if url.endswith("/studies"):
        raise ConfigError("archive.wado_rs_base_url", "is the service base: drop '/studies'")
    store_url = settings.store.url
    if store_url and not store_url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ConfigError("store.url", "must start with sqlite:/// or postgresql://")


def _check_label(label: LabelSettings) -> None:
    if label.cstore:
        ae, sep, address = label.cstore.partition("@")
        host, colon, port = address.rpartition(":")
        if not sep or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError("label.cstore", "must be AE_TITLE@host:port")
        if not _valid_ae(ae):
            raise ConfigError("label.cstore", "AE title: 1 to 16 characters, no backslash")
    if not _valid_ae(label.calling_ae):
        raise ConfigError("label.calling_ae", "AE title: 1 to 16 characters, no backslash")
    url = label.stow_rs_url
    if url and (not url.startswith(("http://", "https://")) or url.endswith("/")):
        raise ConfigError(
            "label.stow_rs_url", "must be an http(s) base URL without a trailing slash"
        )


def _check_dicom(dicom: DicomSettings) -> None:
    if not _valid_ae(dicom.ae_title):
        raise ConfigError("dicom.ae_title", "AE title: 1 to 16 characters, no backslash")
    for caller in dicom.allowed_callers:
        if not _valid_ae(caller):
            raise ConfigError("dicom.allowed_callers", "AE title: 1 to 16 characters, no backslash")
    if bool(dicom.tls_cert) != bool(dicom.tls_key):
        raise ConfigError("dicom.tls_key", "give both tls_cert and tls_key, or neither")
    if dicom.tls_ca and not dicom.tls_cert:
        raise ConfigError("dicom.tls_ca", "needs tls_cert and tls_key")


def _valid_ae(ae: str) -> bool:
    return 0 < len(ae.strip()) <= 16 and "\\" not in ae and ae.isprintable()


def _check_note(note: NoteSettings) -> None:
    if note.outputs.strip() == "auto":
        return
    chosen = [o.strip() for o in note.outputs.split(",") if o.strip()]
    unknown = [o for o in chosen if o not in NOTE_OUTPUTS]
    if unknown or not chosen:
        raise ConfigError("note.outputs", f"must be auto or a list of {', '.join(NOTE_OUTPUTS)}")


def _check_pairs(settings: Settings) -> None:
    """Rules between two keys (the ranges of each key are on its field)."""
    if settings.fhir.max_wait < settings.fhir.initial_wait:
        raise ConfigError("fhir.max_wait", "must not be less than fhir.initial_wait")
    if settings.label.max_wait < settings.label.initial_wait:
        raise ConfigError("label.max_wait", "must not be less than label.initial_wait")
    hl7 = settings.hl7
    if hl7.listen_max_connection_bytes < hl7.listen_max_frame_bytes:
        raise ConfigError(
            "hl7.listen_max_connection_bytes", "must be at least hl7.listen_max_frame_bytes"
        )
    if bool(hl7.listen_tls_cert) != bool(hl7.listen_tls_key):
        raise ConfigError("hl7.listen_tls_cert", "listen_tls_cert and listen_tls_key go together")
    if hl7.listen_tls_client_ca and not hl7.listen_tls_cert:
        raise ConfigError("hl7.listen_tls_client_ca", "needs listen_tls_cert and listen_tls_key")


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1`` (names are not resolved)."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_key_file(path: str) -> None:
    """A private key that group or others can read (or write) is refused: it may already have
    leaked, and a careless mode today is a leak tomorrow.

    Raises:
        ConfigError: ``fhir.private_key`` with the fix (``chmod 600``).
    """
    try:
        mode = Path(path).stat().st_mode
    except OSError:
        return  # a missing key is reported when it is read, with the reason
    if mode & 0o077:
        raise ConfigError(
            "fhir.private_key",
            f"{path} is accessible to group/others (mode {mode & 0o777:o}); chmod 600 it",
        )


def _check_transport(settings: Settings) -> None:
    """Bearer and access tokens never travel in clear, unless the operator said so."""
    fhir = settings.fhir
    if fhir.auth == "smart" and fhir.private_key:
        check_key_file(fhir.private_key)
    for key, url in (("fhir.base_url", fhir.base_url), ("fhir.token_url", fhir.token_url)):
        parts = urlsplit(url)
        if not url or parts.scheme == "https" or is_loopback(parts.hostname or ""):
            continue
        if not fhir.allow_insecure_http:
            raise ConfigError(
                key, "must be https:// (or a loopback host, or fhir.allow_insecure_http: true)"
            )
        log.warning(
            "SECURITY: %s is plain http to a non-loopback host; tokens and patient data travel "
            "in clear (fhir.allow_insecure_http: true)",
            key,
        )
