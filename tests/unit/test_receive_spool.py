"""The receive spool: durable private files, duplicates dropped, completion by quiet period or
by (0020,1208), headers kept cut before Pixel Data; the ``dicom`` settings."""

from __future__ import annotations

import stat
from dataclasses import replace
from pathlib import Path

import pytest
from pydicom import dcmread

from adapter.config import load_settings
from adapter.errors import ConfigError
from adapter.receive.spool import NotStorable, Spool, header_bytes, identify
from tests.support import FIXTURES

FILES = sorted((FIXTURES / "dicom" / "planning-ct").glob("*.dcm"))


def test_instances_are_stored_once_privately_and_ready_when_all_expected_arrived(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool")
    for path in FILES[:-1]:
        raw = path.read_bytes()
        assert spool.store(raw, identify(raw)) is True
    raw = FILES[0].read_bytes()
    assert spool.store(raw, identify(raw)) is False  # duplicate SOP Instance UID
    (pending,) = spool.pending()
    assert pending.received == len(FILES) - 1 and pending.expected == len(FILES)
    last = pending.last_received
    assert spool.ready(last + 1, quiet_seconds=60) == []  # not quiet, not all there
    assert spool.ready(last + 60, quiet_seconds=60) == [pending]  # quiet long enough
    raw = FILES[-1].read_bytes()
    spool.store(raw, identify(raw))
    assert [s.key for s in spool.ready(last, quiet_seconds=60)] == [pending.key]  # all arrived
    stored = spool.incoming_files(pending.key)
    assert [p.read_bytes() for p in stored] != []
    assert sorted(p.read_bytes() for p in stored) == sorted(p.read_bytes() for p in FILES)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in stored)
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700


def test_the_expected_count_is_written_when_it_changes_not_per_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adapter.receive import spool as module

    writes: list[str] = []
    real = module._write_durably

    def counted(target: Path, data: bytes) -> None:
        writes.append(target.parent.name)
        real(target, data)

    monkeypatch.setattr(module, "_write_durably", counted)
    spool = Spool(tmp_path / "spool")
    for path in FILES[:3]:
        raw = path.read_bytes()
        spool.store(raw, identify(raw))
    assert writes.count("expected") == 1  # three instances, one count
    raw = FILES[3].read_bytes()
    identity = identify(raw)
    spool.store(raw, replace(identity, expected=(identity.expected or 0) + 5))
    assert writes.count("expected") == 2  # a new count is written
    again = Spool(tmp_path / "spool")  # after a restart the count on disk is known
    raw = FILES[4].read_bytes()
    again.store(raw, replace(identify(raw), expected=(identity.expected or 0) + 5))
    assert writes.count("expected") == 2
    (pending,) = again.pending()
    assert pending.expected == (identity.expected or 0) + 5


def test_settled_instances_keep_their_header_and_still_count_as_duplicates(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "spool")
    raw = FILES[0].read_bytes()
    spool.store(raw, identify(raw))
    (pending,) = spool.pending()
    spool.settle(pending.key, spool.incoming_files(pending.key))
    assert spool.pending() == []
    (kept,) = spool.kept(pending.key)
    assert raw.startswith(kept.read_bytes()) and len(kept.read_bytes()) < len(raw)
    assert "PixelData" not in dcmread(kept)
    assert dcmread(kept).SOPInstanceUID == dcmread(FILES[0]).SOPInstanceUID
    assert spool.store(raw, identify(raw)) is False


def test_a_file_without_pixel_data_is_kept_whole(tmp_path: Path) -> None:
    rtplan = next(p for p in FILES if "RTPLAN" in p.name)
    assert header_bytes(rtplan) == rtplan.read_bytes()


def test_identify_refuses_what_is_not_dicom_or_lacks_uids(tmp_path: Path) -> None:
    with pytest.raises(NotStorable, match="cannot read"):
        identify(b"not dicom at all")
    ds = dcmread(FILES[0])
    del ds.SOPInstanceUID
    ds.save_as(tmp_path / "x.dcm")
    with pytest.raises(NotStorable, match=r"SOP Instance UID \(0008,0018\)"):
        identify((tmp_path / "x.dcm").read_bytes())


def test_dicom_settings_from_yaml_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "rtplan.yaml"
    config.write_text(
        "dicom:\n"
        "  listen_port: 11112\n"
        "  listen_host: 127.0.0.1\n"
        "  ae_title: RTPLAN\n"
        "  allowed_callers: [CTSIM1, PACS]\n"
        "  quiet_seconds: 60\n"
    )
    dicom = load_settings(config, env={}).dicom
    assert (dicom.listen_port, dicom.allowed_callers, dicom.quiet_seconds) == (
        11112,
        ("CTSIM1", "PACS"),
        60.0,
    )
    env = {"RTPLAN_DICOM__ALLOWED_CALLERS": "CTSIM2, MR1", "RTPLAN_DICOM__QUIET_SECONDS": "5"}
    dicom = load_settings(config, env=env).dicom
    assert dicom.allowed_callers == ("CTSIM2", "MR1") and dicom.quiet_seconds == 5.0
    defaults = load_settings(None, env={}).dicom
    assert (defaults.listen_port, defaults.ae_title, defaults.allowed_callers) == (0, "RTPLAN", ())


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("dicom: {quiet_seconds: 0}", "dicom.quiet_seconds"),
        ("dicom: {ae_title: 'A_TITLE_LONGER_THAN_16'}", "dicom.ae_title"),
        ("dicom: {allowed_callers: 5}", "dicom.allowed_callers"),
        ("dicom: {allowed_callers: ['bad\\\\ae']}", "dicom.allowed_callers"),
        ("dicom: {listen_port: 70000}", "dicom.listen_port"),
        ("dicom: {tls_cert: a.pem}", "dicom.tls_key"),
    ],
)
def test_bad_dicom_settings_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    config = tmp_path / "rtplan.yaml"
    config.write_text(text + "\n")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(config, env={})


def test_a_restart_finds_the_waiting_studies_on_disk(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.pending() == []  # the index is built (empty) and then kept up to date
    for path in FILES[:3]:
        raw = path.read_bytes()
        spool.store(raw, identify(raw))
    (before,) = spool.pending()
    assert before.received == 3
    (after,) = Spool(tmp_path / "spool").pending()  # a new process reads the disk
    assert (after.key, after.received, after.expected) == (before.key, 3, len(FILES))
    assert abs(after.last_received - before.last_received) < 5
