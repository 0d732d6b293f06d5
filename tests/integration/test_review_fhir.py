"""The oncologist-review loop against real FHIR servers (Medplum and HAPI): ingest opens the
review Task (priority from the prior-imaging search), a review writes the DiagnosticReport,
completes the Task and, on a concern, the ServiceRequest and radiology Task; resubmissions and
concurrent submissions give one of each; a new finding gives a new request; amendment and
withdrawal update the same resources. Every reference resolves."""

from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapter.cli import main
from tests.store_backend import StoreUnderTest
from tests.support import synth

pytestmark = pytest.mark.store  # every test here reaches the store: both backends

SERVERS = ["medplum", "hapi"]
REVIEWS = Path(__file__).resolve().parents[2] / "fixtures" / "reviews"


@pytest.fixture(params=SERVERS)
def fhir_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(request.param))


def search(base: str, kind: str, **params: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{base}/{kind}", params=params, timeout=30)
    response.raise_for_status()
    return [e["resource"] for e in response.json().get("entry", []) if "resource" in e]


def one(base: str, kind: str, **params: str) -> dict[str, Any]:
    found = search(base, kind, **params)
    assert len(found) == 1, f"{kind}: {len(found)} matches"
    return found[0]


def references(value: object) -> list[str]:
    found: list[str] = []
    if isinstance(value, dict):
        if isinstance(value.get("reference"), str):
            found.append(value["reference"])
        for item in value.values():
            found += references(item)
    elif isinstance(value, list):
        for item in value:
            found += references(item)
    return found


def assert_references_resolve(base: str, *resources: dict[str, Any]) -> None:
    for resource in resources:
        contained = {f"#{c['id']}" for c in resource.get("contained", [])}
        for ref in references(resource):
            if ref.startswith("#"):  # a contained resource (the report's finding Observations)
                assert ref in contained, f"unresolved {ref}"
                continue
            assert "?" not in ref and not ref.startswith("urn:"), f"unresolved {ref}"
            assert httpx.get(f"{base}/{ref}", timeout=30).status_code == 200, ref


class Site:
    """One patient on one server: ingest studies, submit reviews."""

    def __init__(
        self, base: str, tmp: Path, monkeypatch: pytest.MonkeyPatch, store: StoreUnderTest
    ) -> None:
        self.base, self.tmp, self.store = base, tmp, store
        self.patient_id = f"P{uuid.uuid4().hex[:10]}"
        monkeypatch.setenv("RTPLAN_FHIR__CREATE_PATIENT", "true")
        monkeypatch.setenv("RTPLAN_FHIR__INITIAL_WAIT", "0.05")
        store.point_cli(monkeypatch, tmp / "outbox.sqlite")
        monkeypatch.setenv("RTPLAN_INGEST__WORKERS", "1")
        self.monkeypatch = monkeypatch

    def ingest(self, kind: str = "planning_ct", **kwargs: Any) -> str:
        seed = uuid.uuid4().hex
        folder = self.tmp / seed
        getattr(synth, kind)(folder, seed=seed, slices=4, patient_id=self.patient_id, **kwargs)
        if kind != "planning_ct":
            self.monkeypatch.setenv("RTPLAN_INGEST__DIAGNOSTIC_STUDIES", "map")
        try:
            assert main(["ingest", str(folder), "--fhir-url", self.base, "--json"]) == 0
        finally:
            self.monkeypatch.delenv("RTPLAN_INGEST__DIAGNOSTIC_STUDIES", raising=False)
        return str(synth.uid_for(seed, "/study"))

    def review(self, name: str, study_uid: str, review_id: str, **changes: Any) -> Path:
        data = json.loads((REVIEWS / f"{name}.json").read_text())
        data.update(study_instance_uid=study_uid, review_id=review_id, **changes)
        path = self.tmp / f"{review_id}-{name}-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps(data))
        return path

    def submit(self, path: Path) -> int:
        return main(["review", "submit", str(path), "--fhir-url", self.base])

    def study(self, study_uid: str) -> dict[str, Any]:
        return one(self.base, "ImagingStudy", identifier=f"urn:dicom:uid|urn:oid:{study_uid}")

    def review_task(self, study_uid: str) -> dict[str, Any]:
        return one(self.base, "Task", focus=f"ImagingStudy/{self.study(study_uid)['id']}")


@pytest.fixture
def site(
    fhir_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: StoreUnderTest
) -> Site:
    return Site(fhir_url, tmp_path, monkeypatch, store)


def test_full_loop(site: Site) -> None:
    uid = site.ingest()
    study = site.study(uid)
    task = site.review_task(uid)
    assert (task["status"], task["intent"], task["priority"]) == ("requested", "order", "urgent")
    assert "no earlier CT/MR/PT study" in task["note"][0]["text"]
    assert site.submit(site.review("concern", uid, f"R-{uuid.uuid4().hex[:8]}")) == 0

    patient = study["subject"]["reference"]
    report = one(site.base, "DiagnosticReport", subject=patient)
    assert report["status"] == "final"
    assert report["imagingStudy"][0]["reference"] == f"ImagingStudy/{study['id']}"
    task = site.review_task(uid)
    assert task["status"] == "completed"
    assert task["output"][0]["valueReference"]["reference"] == f"DiagnosticReport/{report['id']}"
    requests = search(site.base, "ServiceRequest", subject=patient)
    assert len(requests) == 1
    request = requests[0]
    placer = request["identifier"][0]["value"]
    assert one(site.base, "ServiceRequest", identifier=f"urn:rtplan:placer-order|{placer}")
    assert (request["status"], request["intent"], request["priority"]) == (
        "active",
        "order",
        "urgent",
    )
    assert request["reasonReference"][0]["reference"] == f"DiagnosticReport/{report['id']}"
    assert request["supportingInfo"][0]["reference"] == f"ImagingStudy/{study['id']}"
    radiology = one(site.base, "Task", focus=f"ServiceRequest/{request['id']}")
    assert (radiology["status"], radiology["code"]["coding"][0]["code"]) == ("requested", "fulfill")
    assert radiology["owner"]["display"] == "Clinical radiology"
    assert_references_resolve(site.base, study, report, task, request, radiology)


def test_same_review_twice_and_concurrently_gives_one_of_each(site: Site) -> None:
    uid = site.ingest()
    path = site.review("concern", uid, f"R-{uuid.uuid4().hex[:8]}")
    assert site.submit(path) == 0
    assert site.submit(path) == 0
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: site.submit(path), range(4))) == [0, 0, 0, 0]
    patient = site.study(uid)["subject"]["reference"]
    assert len(search(site.base, "DiagnosticReport", subject=patient)) == 1
    requests = search(site.base, "ServiceRequest", subject=patient)
    assert len(requests) == 1
    one(site.base, "Task", focus=f"ServiceRequest/{requests[0]['id']}")
    site.review_task(uid)

    # A new, different finding on the same study: a new request, not swallowed.
    review_id = json.loads(path.read_text())["review_id"]
    assert site.submit(site.review("concern-new-finding", uid, review_id)) == 0
    requests = search(site.base, "ServiceRequest", subject=patient)
    assert len(requests) == 2
    assert len({r["identifier"][0]["value"] for r in requests}) == 2
    for request in requests:
        one(site.base, "Task", focus=f"ServiceRequest/{request['id']}")
    assert len(search(site.base, "DiagnosticReport", subject=patient)) == 1


def test_amendment_and_withdrawal(site: Site) -> None:
    uid = site.ingest()
    review_id = f"R-{uuid.uuid4().hex[:8]}"
    assert site.submit(site.review("concern", uid, review_id)) == 0
    patient = site.study(uid)["subject"]["reference"]
    first = one(site.base, "DiagnosticReport", subject=patient)
    assert site.submit(site.review("concern-amended", uid, review_id)) == 0
    amended = one(site.base, "DiagnosticReport", subject=patient)
    assert amended["id"] == first["id"] and amended["status"] == "amended"
    assert amended["meta"]["versionId"] != first["meta"]["versionId"]
    request = one(site.base, "ServiceRequest", subject=patient)  # same finding ids: same order
    assert site.submit(site.review("concern-withdrawn", uid, review_id)) == 0
    request = one(site.base, "ServiceRequest", subject=patient)
    assert request["status"] == "revoked"
    radiology = one(site.base, "Task", focus=f"ServiceRequest/{request['id']}")
    assert radiology["status"] == "cancelled"
    assert one(site.base, "DiagnosticReport", subject=patient)["status"] == "amended"


def test_review_of_a_study_known_only_to_the_server(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = site.ingest()
    site.store.point_cli(monkeypatch, site.tmp / "other-outbox.sqlite")
    assert site.submit(site.review("no-finding", uid, f"R-{uuid.uuid4().hex[:8]}")) == 0
    task = site.review_task(uid)
    assert task["status"] == "completed" and task["priority"] == "urgent"  # kept from ingest
    unknown = site.review("no-finding", "2.25.1" + uuid.uuid4().int.__str__()[:30], "R-x")
    assert site.submit(unknown) == 2


def test_prior_imaging_rule(site: Site) -> None:
    # An earlier planning scan does not count: priority raised.
    site.ingest(study_date="20260110")
    uid = site.ingest()
    task = site.review_task(uid)
    assert task["priority"] == "urgent"
    # An earlier diagnostic CT of another region does not count either (body site matched).
    site.ingest("diagnostic_ct", body_part="BRAIN", study_date="20260201")
    uid = site.ingest(study_date="20260303")
    assert site.review_task(uid)["priority"] == "urgent"
    # An earlier diagnostic CT of the pelvis within the window: routine, and the note says so.
    site.ingest("diagnostic_ct", body_part="PELVIS", study_date="20260215")
    uid = site.ingest(study_date="20260304")
    task = site.review_task(uid)
    assert task["priority"] == "routine"
    assert "1 earlier CT/MR/PT study(ies) of Pelvis found" in task["note"][0]["text"]
    # Outside the window (over a year before): raised again.
    other = Site(site.base, site.tmp, site.monkeypatch, site.store)
    other.ingest("diagnostic_ct", body_part="PELVIS", study_date="20240101")
    uid = other.ingest()
    assert other.review_task(uid)["priority"] == "urgent"
