"""Two ``rtplan outbox run`` processes drain one PostgreSQL outbox to real peers (issue 8).

The outbox holds 500 studies and their reviews' orders: per study one FHIR transaction
(Patient, ImagingStudy, review Task, as ingest maps it) to Medplum, and one HL7 ORM^O01 to the
python-hl7 MLLP receiver that waits for that transaction (``after_id``). Effects are counted
at the peers: ImagingStudy and Patient totals at the FHIR server, MSH-10s at the receiver.

1. Both processes run to the end: every row delivered, both took part, each order received
   exactly once, each study and patient exists once.
2. One process is killed with SIGKILL mid-run: the other takes over its leased rows once the
   lease (8 s here) runs out and finishes. Nothing is lost (every order received, every row
   delivered). A row in flight at the kill may have reached a peer before the process died:
   it is sent again with the same MSH-10 / the same conditional FHIR write, which the
   receivers de-duplicate; only such rows may show twice at the receiver, and the FHIR server
   still holds each study and patient once.

Medplum (in memory) is the FHIR peer: it starts in seconds and writes faster than HAPI JPA.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from adapter.config import FhirSettings, IngestSettings, Settings
from adapter.hl7.deliverer import KIND_ORDER, OrderPayload, prerender
from adapter.hl7.model import OrderPatient, OrderRequest, PatientIdentifier, Provider
from adapter.hl7.profiles import load_profiles
from adapter.ingest.pipeline import run_ingest
from adapter.store.outbox import NewRow, Outbox, State
from adapter.tables import load_tables
from tests.peers.hl7_receiver import Hl7Receiver
from tests.support import FIXTURES

pytestmark = pytest.mark.peer
RTPLAN = str(Path(sys.executable).parent / "rtplan")
ROOT = Path(__file__).resolve().parents[2]
STUDIES = 500
UID = re.compile(r"\b(2\.25\.\d+)\b")
RECEIVER = "default-ris"
NOW = datetime(2026, 3, 4, 14, 20, tzinfo=UTC)


def template_bundle() -> tuple[str, str]:
    """The ingest Bundle of the planning CT fixture (with a Patient entry), as JSON text."""
    settings = Settings(fhir=FhirSettings(create_patient=True), ingest=IngestSettings(workers=1))
    tables = load_tables(settings.mappings_dir)
    result = run_ingest([FIXTURES / "dicom" / "planning-ct"], settings, tables)
    (study,) = [s for s in result.studies if s.bundle is not None]
    return json.dumps(study.bundle), study.study_uid


def order(k: int, study_uid: str) -> OrderRequest:
    return OrderRequest(
        control="NW",
        placer_order_number=f"PG{k:06d}",
        placer_namespace="RTPLAN",
        patient=OrderPatient(
            identifiers=(PatientIdentifier(f"PGPAT{k:05d}", "HOSP-MRN"),),
            family="Testpatient",
            given="Alpha",
            birth_date="1960-01-01",
            sex="F",
        ),
        study_instance_uid=study_uid,
        accession_number=f"PGACC{k:06d}",
        requested_procedure_id=f"RP{k:06d}",
        modality="CT",
        priority="urgent",
        concern_text="RT planning scan - radiologist review requested",
        ordering_provider=Provider("ONC-0001", "Oncologist", "Dr Anna"),
        requested_at="2026-03-04T14:20:00+00:00",
        review_id=f"REV-PG-{k:06d}",
    )


def fill(url: str, fhir_base: str) -> int:
    """Store the backlog: per study its FHIR transaction and an order waiting for it."""
    text, uid = template_bundle()
    profile = load_profiles(ROOT / "mappings" / "receivers")[RECEIVER]
    with Outbox(url) as outbox:
        fhir_rows = []
        uids = []
        for k in range(STUDIES):
            copy = UID.sub(lambda m, k=k: f"{m.group(1)}.{k + 1}", text)
            copy = copy.replace("RTP0001", f"PGPAT{k:05d}").replace("ACC0001", f"PGACC{k:06d}")
            uids.append(f"{uid}.{k + 1}")
            key, label = f"study:{uids[-1]}", f"ImagingStudy-{k}"
            fhir_rows.append(
                NewRow("fhir", fhir_base, key, "fhir-transaction", label, json.loads(copy))
            )
        ids = outbox.enqueue_many(fhir_rows)
        orders = []
        for k, (row_id, study_uid) in enumerate(zip(ids, uids, strict=True)):
            raw = OrderPayload(RECEIVER, order(k, study_uid).to_json())
            payload = prerender(raw, profile=profile, now=NOW).to_json()
            key, label = f"study:{study_uid}", f"Order-PG{k:06d}-NW"
            orders.append(NewRow("hl7", RECEIVER, key, KIND_ORDER, label, payload, row_id))
        outbox.enqueue_many(orders)
        return len(ids) + len(orders)


def environment(url: str, fhir_base: str, receiver: Hl7Receiver) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RTPLAN_")}
    env.update(
        RTPLAN_STORE__URL=url,
        RTPLAN_FHIR__BASE_URL=fhir_base,
        RTPLAN_FHIR__CONCURRENCY="4",
        RTPLAN_OUTBOX__LEASE_SECONDS="8",
        RTPLAN_HL7__MLLP="true",
        RTPLAN_HL7__HOST="127.0.0.1",
        RTPLAN_HL7__PORT=str(receiver.port),
        RTPLAN_HL7__RECEIVER=RECEIVER,
        RTPLAN_LABEL__ENABLED="false",
    )
    return env


def start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as sink:
        return subprocess.Popen(
            [RTPLAN, "outbox", "run"], env=env, stdout=sink, stderr=subprocess.STDOUT
        )


def total(base: str, resource_type: str) -> int:
    answer = httpx.get(
        f"{base}/{resource_type}", params={"_summary": "count"}, timeout=60, trust_env=False
    )
    answer.raise_for_status()
    return int(answer.json()["total"])


def owners(outbox: Outbox) -> set[str]:
    claimed: set[str] = set()
    for row in outbox.rows(limit=10 * STUDIES):
        claimed.update(detail for _, event, detail in outbox.events(row.id) if event == "claimed")
    return claimed


def check_peers(medplum: str, receiver: Hl7Receiver) -> Counter[str]:
    received = Counter(receiver.control_ids)
    assert len(received) == STUDIES  # every order arrived
    assert total(medplum, "ImagingStudy") == STUDIES
    assert total(medplum, "Patient") == STUDIES
    return received


def wait(procs: list[subprocess.Popen[bytes]], logs: list[Path], timeout: float) -> None:
    for proc, log in zip(procs, logs, strict=True):
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            pytest.fail(f"rtplan outbox run did not finish: {log.read_text()[-2000:]}")
        assert code == 0, log.read_text()[-2000:]


def test_two_processes_drain_one_outbox_every_effect_once(
    pg_url: str, medplum: str, hl7_receiver: Hl7Receiver, tmp_path: Path
) -> None:
    rows = fill(pg_url, medplum)
    env = environment(pg_url, medplum, hl7_receiver)
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [start(env, log) for log in logs]
    wait(procs, logs, timeout=240)
    received = check_peers(medplum, hl7_receiver)
    assert set(received.values()) == {1}  # no order twice
    with Outbox(pg_url) as outbox:
        assert outbox.counts()[State.DELIVERED.value] == rows
        assert len(owners(outbox)) == 2  # both processes delivered
        assert outbox.verify_audit() is None


def test_a_killed_process_leaves_nothing_lost_and_nothing_twice(
    pg_url: str, medplum: str, hl7_receiver: Hl7Receiver, tmp_path: Path
) -> None:
    rows = fill(pg_url, medplum)
    env = environment(pg_url, medplum, hl7_receiver)
    logs = [tmp_path / "victim.log", tmp_path / "survivor.log"]
    victim, survivor = (start(env, log) for log in logs)
    with Outbox(pg_url) as outbox:
        deadline = time.monotonic() + 120
        while outbox.counts()[State.DELIVERED.value] < rows // 4:
            assert time.monotonic() < deadline, "no progress before the kill"
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        at_kill = {r.id for r in outbox.rows(state=State.IN_FLIGHT, limit=rows)}
    wait([survivor], logs[1:], timeout=240)
    received = check_peers(medplum, hl7_receiver)
    with Outbox(pg_url) as outbox:
        counts = outbox.counts()
        assert counts[State.DELIVERED.value] == rows and counts[State.DEAD.value] == 0
        recovered = {
            row.id
            for row in outbox.rows(limit=rows)
            if "recovered" in [event for _, event, _ in outbox.events(row.id)]
        }
        # Only rows the victim held when it died went again, with their own MSH-10.
        assert recovered and recovered <= at_kill
        twice = {control for control, n in received.items() if n > 1}
        resent = {
            str(outbox.get(row_id).payload.get("control_id"))
            for row_id in recovered
            if outbox.get(row_id).destination == "hl7"
        }
        assert twice <= resent
        assert max(received.values()) <= 2
        assert outbox.verify_audit() is None


def test_the_template_copies_are_distinct() -> None:
    text, uid = template_bundle()
    assert UID.search(text) and uid in text
    copies = {UID.sub(lambda m, k=k: f"{m.group(1)}.{k}", text) for k in range(3)}
    assert len(copies) == 3
