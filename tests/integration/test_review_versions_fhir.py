"""What a reader of the EHR sees after each version of a review (issue 9), on HAPI and Medplum:

v1 raises a concern; radiology records progress on its Task; v2 raises a finding's urgency to
``stat`` and corrects its text; v3 withdraws the concern; then the stale v1 arrives again. After
each step the test reads the server and asserts priorities, texts, statuses, ``authoredOn``,
codes and the fields radiology set. Then: two versions submitted at the same moment, the higher
one wins.
"""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter.cli import main
from adapter.store.outbox import Outbox
from tests.integration.test_review_fhir import REVIEWS, Site, one
from tests.store_backend import StoreUnderTest

pytestmark = pytest.mark.store  # every test here reaches the store: both backends

SNOMED = "http://snomed.info/sct"
SUSPECTED = "415684004"
METASTASIS = "128462008"
NAD = "281900007"


@pytest.fixture
def site(
    fhir_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: StoreUnderTest
) -> Site:
    return Site(fhir_url, tmp_path, monkeypatch, store)


def review_file(site: Site, name: str, uid: str, review_id: str, **changes: Any) -> Path:
    data = json.loads((REVIEWS / f"{name}.json").read_text())
    data.update(study_instance_uid=uid, review_id=review_id, **changes)
    path = site.tmp / f"{review_id}-{name}-v{data.get('version', 1)}-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(data))
    return path


def amended_v2(site: Site, uid: str, review_id: str) -> Path:
    """v2: finding f1's urgency raised to stat and its text corrected; f2 unchanged."""
    v1 = json.loads((REVIEWS / "concern.json").read_text())
    findings = [dict(f) for f in v1["findings"]]
    findings[0].update(
        urgency="stat", description="Three hypodense lesions in segments 6 and 7 of the liver."
    )
    return review_file(
        site,
        "concern",
        uid,
        review_id,
        version=2,
        reviewed_at="2026-03-04T16:00:00+00:00",
        findings=findings,
        notes="Amended: lesion count and segments corrected; urgency raised.",
    )


def codes(concepts: list[dict[str, Any]]) -> set[str]:
    return {c["code"] for concept in concepts for c in concept.get("coding", [])}


def radiology_update(base: str, task: dict[str, Any]) -> dict[str, Any]:
    """What a RIS integration would record on the radiology Task: accepted, in progress,
    a named radiologist as owner, a business status and an output."""
    task = dict(task)
    task.pop("meta", None)
    task.update(
        status="in-progress",
        businessStatus={"text": "protocolled by radiology"},
        owner={
            "type": "Practitioner",
            "identifier": {"system": "urn:test:staff", "value": "RAD-7"},
            "display": "Dr R Radiologist",
        },
        output=[{"type": {"text": "worklist entry"}, "valueString": "WL-42"}],
    )
    response = httpx.put(f"{base}/Task/{task['id']}", json=task, timeout=30)
    assert response.status_code == 200, response.text
    return dict(response.json())


def outbox_rows(site: Site) -> int:
    with Outbox(site.store.at(site.tmp / "outbox.sqlite")) as outbox:
        return len(outbox.rows())


def test_versions_amendment_withdrawal_and_stale_copy(site: Site) -> None:
    uid = site.ingest()
    review_id = f"R-{uuid.uuid4().hex[:8]}"
    patient = site.study(uid)["subject"]["reference"]

    # v1: a concern. The report codes each finding as *suspected*, never as a disorder.
    assert site.submit(review_file(site, "concern", uid, review_id)) == 0
    report = one(site.base, "DiagnosticReport", subject=patient)
    assert report["status"] == "final"
    assert "conclusionCode" not in report
    observations = {o["id"]: o for o in report["contained"]}
    assert len(report["result"]) == 2
    for observation in observations.values():
        assert codes([observation["valueCodeableConcept"]]) == {SUSPECTED}
    assert any(METASTASIS in codes([o["code"]]) for o in observations.values())
    request = one(site.base, "ServiceRequest", subject=patient)
    authored = request["authoredOn"]
    assert (request["status"], request["priority"]) == ("active", "urgent")
    assert authored.startswith("2026-03-04T14:20:00")
    task = one(site.base, "Task", focus=f"ServiceRequest/{request['id']}")
    assert (task["status"], task["priority"]) == ("requested", "urgent")
    due_v1 = task["restriction"]["period"]["end"]
    assert due_v1.startswith("2026-03-06T14:20:00")  # urgent: 2 days from the request

    # Radiology records its progress on the Task.
    radiology_update(site.base, task)

    # v2: urgency raised to stat, text corrected. The same request is updated in place.
    assert site.submit(amended_v2(site, uid, review_id)) == 0
    report = one(site.base, "DiagnosticReport", subject=patient)
    assert report["status"] == "amended"
    assert "Three hypodense lesions" in report["conclusion"]
    request = one(site.base, "ServiceRequest", subject=patient)
    assert (request["status"], request["priority"], request["authoredOn"]) == (
        "active",
        "stat",
        authored,
    )
    notes = [n["text"] for n in request["note"]]
    assert any("Two hypodense lesions" in n for n in notes)  # v1's notes stay
    assert any(n.startswith("Amended by review version 2") and "Three" in n for n in notes)
    task = one(site.base, "Task", focus=f"ServiceRequest/{request['id']}")
    assert task["priority"] == "stat"
    assert task["status"] == "in-progress"  # radiology's progress kept
    assert task["businessStatus"]["text"] == "protocolled by radiology"
    assert task["owner"]["display"] == "Dr R Radiologist"
    assert task["output"][0]["valueString"] == "WL-42"
    assert task["restriction"]["period"]["end"] == due_v1  # counted from the request
    assert task["authoredOn"] == authored

    # v3: the concern is withdrawn. A state change: status, statusReason, a note.
    assert site.submit(review_file(site, "concern-withdrawn", uid, review_id)) == 0
    report = one(site.base, "DiagnosticReport", subject=patient)
    assert report["status"] == "amended"
    assert "conclusionCode" not in report and "result" not in report
    assert "withdrawn" in report["conclusion"]
    request = one(site.base, "ServiceRequest", subject=patient)
    assert (request["status"], request["priority"], request["authoredOn"]) == (
        "revoked",
        "stat",
        authored,
    )
    notes = [n["text"] for n in request["note"]]
    assert any("Two hypodense lesions" in n for n in notes)
    assert any(n.startswith("Amended by review version 2") for n in notes)
    assert notes[-1] == "Concern withdrawn by the oncologist (review version 3)."
    task = one(site.base, "Task", focus=f"ServiceRequest/{request['id']}")
    assert task["status"] == "cancelled"
    assert task["statusReason"]["text"].startswith("Concern withdrawn")
    assert task["businessStatus"]["text"] == "protocolled by radiology"
    assert task["owner"]["display"] == "Dr R Radiologist"
    assert task["output"][0]["valueString"] == "WL-42"
    assert (task["authoredOn"], task["restriction"]["period"]["end"]) == (authored, due_v1)
    version_after_v3 = report["meta"]["versionId"]

    # The stale v1 arrives again: refused (exit 2), nothing enqueued, the server unchanged.
    rows = outbox_rows(site)
    assert site.submit(review_file(site, "concern", uid, review_id)) == 2
    assert outbox_rows(site) == rows
    report = one(site.base, "DiagnosticReport", subject=patient)
    assert (report["meta"]["versionId"], report["status"]) == (version_after_v3, "amended")
    assert one(site.base, "ServiceRequest", subject=patient)["status"] == "revoked"

    # v3 again: the same content is a no-op (exit 0, nothing enqueued).
    assert site.submit(review_file(site, "concern-withdrawn", uid, review_id)) == 0
    assert outbox_rows(site) == rows


def test_incomplete_review_codes_nothing(site: Site) -> None:
    uid = site.ingest()
    assert site.submit(review_file(site, "incomplete", uid, f"R-{uuid.uuid4().hex[:8]}")) == 0
    patient = site.study(uid)["subject"]["reference"]
    report = one(site.base, "DiagnosticReport", subject=patient)
    assert report["status"] == "partial"
    assert "conclusionCode" not in report and "result" not in report
    assert "NOT ALL IMAGES WERE REVIEWED" in report["conclusion"]
    complete = review_file(site, "no-finding", uid, f"R-{uuid.uuid4().hex[:8]}")
    assert site.submit(complete) == 0
    reports = [
        r
        for r in httpx.get(
            f"{site.base}/DiagnosticReport", params={"subject": patient}, timeout=30
        ).json()["entry"]
    ]
    coded = [codes(r["resource"].get("conclusionCode", [])) for r in reports]
    assert sorted(coded, key=len) == [set(), {NAD}]


def test_concurrent_versions_the_higher_one_wins(site: Site) -> None:
    uid = site.ingest()
    review_id = f"R-{uuid.uuid4().hex[:8]}"
    assert site.submit(review_file(site, "concern", uid, review_id)) == 0
    v2 = amended_v2(site, uid, review_id)
    v3 = review_file(site, "concern-withdrawn", uid, review_id)
    with ThreadPoolExecutor(2) as pool:
        exit_v2, exit_v3 = pool.map(site.submit, [v2, v3])
    # v3 always lands; v2 either landed before it or was refused as stale.
    assert exit_v3 == 0 and exit_v2 in (0, 2)
    patient = site.study(uid)["subject"]["reference"]
    report = one(site.base, "DiagnosticReport", subject=patient)
    assert "withdrawn" in report["conclusion"] and "conclusionCode" not in report
    request = one(site.base, "ServiceRequest", subject=patient)
    assert request["status"] == "revoked"
    task = one(site.base, "Task", focus=f"ServiceRequest/{request['id']}")
    assert task["status"] == "cancelled"
    assert site.submit(review_file(site, "concern", uid, review_id)) == 2
    assert site.submit(v2) == 2
    assert main(["review", "submit", str(v3), "--fhir-url", site.base]) == 0


def test_withdrawal_after_radiology_completed_keeps_its_status(site: Site) -> None:
    uid = site.ingest()
    review_id = f"R-{uuid.uuid4().hex[:8]}"
    assert site.submit(review_file(site, "concern", uid, review_id)) == 0
    patient = site.study(uid)["subject"]["reference"]
    request = one(site.base, "ServiceRequest", subject=patient)
    task = one(site.base, "Task", focus=f"ServiceRequest/{request['id']}")
    done = radiology_update(site.base, task)
    done.update(status="completed", businessStatus={"text": "reported"})
    answer = httpx.put(f"{site.base}/Task/{done['id']}", json=done, timeout=30)
    assert answer.status_code == 200, answer.text
    assert site.submit(review_file(site, "concern-withdrawn", uid, review_id)) == 0
    task = one(site.base, "Task", focus=f"ServiceRequest/{request['id']}")
    # Finished work never reads as cancelled: only the withdrawal note is added.
    assert task["status"] == "completed" and "statusReason" not in task
    assert task["businessStatus"]["text"] == "reported"
    assert task["note"][-1]["text"] == "Concern withdrawn by the oncologist (review version 3)."
    assert one(site.base, "ServiceRequest", subject=patient)["status"] == "revoked"
