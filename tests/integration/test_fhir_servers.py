"""Delivery to real FHIR servers (Medplum 4.5.2 in memory; HAPI FHIR JPA, the reference
server): exactly one ImagingStudy however often and however concurrently a study arrives, late
series update it, a rejected Bundle is a dead letter that can be replayed, and patient
identifiers never reach the logs."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from adapter.cli import main
from adapter.store.outbox import Outbox, State
from tests.store_backend import StoreUnderTest
from tests.support import make_study, read_study, study_count


def ingest(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, base: str, *paths: Path, **env: str
) -> int:
    monkeypatch.setenv("RTPLAN_FHIR__CREATE_PATIENT", "true")
    monkeypatch.setenv("RTPLAN_FHIR__INITIAL_WAIT", "0.05")
    monkeypatch.setenv("RTPLAN_OUTBOX__PATH", str(tmp_path / "outbox.sqlite"))
    monkeypatch.setenv("RTPLAN_INGEST__WORKERS", "1")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return main(["ingest", *map(str, paths), "--fhir-url", base, "--json"])


@pytest.mark.store
def test_same_study_twice_leaves_one_imaging_study(
    fhir_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder, study_uid = make_study(tmp_path)
    assert ingest(monkeypatch, tmp_path, fhir_url, folder) == 0
    assert ingest(monkeypatch, tmp_path, fhir_url, folder) == 0
    assert study_count(fhir_url, study_uid) == 1
    summary = json.loads(capsys.readouterr().out.split("\n}\n")[0] + "\n}")
    assert summary["delivery"]["delivered"] == 1 and summary["delivery"]["alerts"] == []
    resource = read_study(fhir_url, study_uid)
    assert resource["meta"]["tag"][0]["code"] == "rt-planning-not-for-diagnostic-use"
    assert resource["subject"]["reference"].startswith("Patient/")


@pytest.mark.store
def test_eight_concurrent_ingests_leave_one_imaging_study(
    fhir_url: str, tmp_path: Path, store: StoreUnderTest
) -> None:
    """Eight separate adapter processes, one study, one shared outbox."""
    folder, study_uid = make_study(tmp_path)
    env = {
        "RTPLAN_FHIR__CREATE_PATIENT": "true",
        "RTPLAN_OUTBOX__PATH": str(tmp_path / "outbox.sqlite"),
        "RTPLAN_INGEST__WORKERS": "1",
        "PATH": "/usr/bin:/bin",
    }
    env = store.env(env)  # RTPLAN_STORE__URL on PostgreSQL
    rtplan = shutil.which("rtplan") or str(Path(__import__("sys").executable).parent / "rtplan")
    procs = [
        subprocess.Popen(
            [rtplan, "ingest", str(folder), "--fhir-url", fhir_url],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _ in range(8)
    ]
    errors = [p.communicate(timeout=180)[1].decode() for p in procs]
    codes = [p.returncode for p in procs]
    assert codes == [0] * 8, errors
    assert study_count(fhir_url, study_uid) == 1


@pytest.mark.store
def test_series_arriving_later_updates_the_same_resource(
    fhir_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, study_uid = make_study(tmp_path)
    plan = next(folder.glob("*_RTPLAN.dcm"))
    later = tmp_path / "later"
    later.mkdir()
    shutil.move(plan, later / plan.name)
    env = {"RTPLAN_INGEST__INCOMPLETE_STUDIES": "map"}
    assert ingest(monkeypatch, tmp_path, fhir_url, folder, **env) == 0
    first = read_study(fhir_url, study_uid)
    shutil.move(later / plan.name, folder / plan.name)
    assert ingest(monkeypatch, tmp_path, fhir_url, folder, **env) == 0
    second = read_study(fhir_url, study_uid)
    assert study_count(fhir_url, study_uid) == 1
    assert first["id"] == second["id"]
    assert (first["numberOfSeries"], second["numberOfSeries"]) == (2, 3)


@pytest.mark.store
def test_rejected_bundle_is_a_dead_letter_and_replays_after_the_fix(
    fhir_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    store: StoreUnderTest,
) -> None:
    """The EHR does not know the patient and the adapter may not create it: the server rejects
    the Bundle (its conditional reference finds nobody). After the fix (create_patient) the
    analyst replays the dead letter with the corrected Bundle."""
    folder, study_uid = make_study(tmp_path)
    code = ingest(monkeypatch, tmp_path, fhir_url, folder, RTPLAN_FHIR__CREATE_PATIENT="false")
    assert code == 1
    outbox = Outbox(store.at(tmp_path / "outbox.sqlite"))
    dead = outbox.rows(state=State.DEAD)
    assert len(dead) == 1 and dead[0].last_error.startswith("rejected: HTTP 4")
    assert study_count(fhir_url, study_uid) == 0
    capsys.readouterr()
    assert main(["outbox", "dead"]) == 0
    assert f"{dead[0].id:>6} dead" in capsys.readouterr().out
    monkeypatch.setenv("RTPLAN_FHIR__CREATE_PATIENT", "true")
    assert main(["map", str(folder)]) == 0
    fixed = tmp_path / "fixed.json"
    fixed.write_text(capsys.readouterr().out)
    assert main(["outbox", "replay", str(dead[0].id), "--payload", str(fixed)]) == 0
    assert study_count(fhir_url, study_uid) == 1


@pytest.mark.store
def test_patient_identifiers_never_reach_the_logs(
    fhir_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Reconciliation searches put the identifiers in URLs; httpx logs URLs at INFO."""
    folder, _ = make_study(
        tmp_path, patient_id="CANARY123", patient_name="ZZCANARY^PHI", accession="CANARYACC"
    )
    with caplog.at_level(logging.DEBUG):
        monkeypatch.setenv("RTPLAN_FHIR__CREATE_PATIENT", "true")
        monkeypatch.setenv("RTPLAN_OUTBOX__PATH", str(tmp_path / "outbox.sqlite"))
        assert main(["-v", "ingest", str(folder), "--fhir-url", fhir_url]) == 0
    assert any(r.name.startswith("adapter") for r in caplog.records)
    _, stderr = capsys.readouterr()
    for canary in ("CANARY123", "ZZCANARY", "CANARYACC"):
        assert canary not in caplog.text and canary not in stderr
    assert logging.getLogger("httpx").getEffectiveLevel() >= logging.WARNING


def test_capability_statement_drives_the_output_version(fhir_url: str) -> None:
    from adapter.config import FhirSettings, Settings
    from adapter.jobs.fhir import fhir_session, resolve_version

    async def read() -> Settings:
        settings = Settings(fhir=FhirSettings(base_url=fhir_url))  # version: auto
        async with fhir_session(settings) as client:
            return await resolve_version(settings, client)

    resolved = asyncio.run(read())
    assert resolved.fhir.version == "R4"
