"""The review note on real FHIR servers (Medplum and HAPI): each version is a DocumentReference;
an amendment supersedes the previous one (relatesTo replaces), a withdrawal replaces it with a
note that says so; the DiagnosticReport carries the note as presentedForm; every reference
resolves; nothing is ever entered-in-error."""

from __future__ import annotations

import base64
import uuid
from pathlib import Path

import httpx
import pytest

from tests.integration.test_review_fhir import Site, assert_references_resolve, one, search
from tests.store_backend import StoreUnderTest

pytestmark = [pytest.mark.peer, pytest.mark.store]


@pytest.fixture
def site(
    fhir_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: StoreUnderTest
) -> Site:
    return Site(fhir_url, tmp_path, monkeypatch, store)


def _text(doc: dict[str, object]) -> str:
    attachment = doc["content"][0]["attachment"]  # type: ignore[index]
    return base64.b64decode(attachment["data"]).decode("utf-8")


def test_amendment_supersedes_and_withdrawal_replaces(site: Site) -> None:
    uid = site.ingest()
    review_id = f"R-{uuid.uuid4().hex[:8]}"
    patient = site.study(uid)["subject"]["reference"]
    assert site.submit(site.review("concern", uid, review_id)) == 0
    (v1,) = search(site.base, "DocumentReference", subject=patient)
    assert (v1["status"], v1["docStatus"]) == ("current", "final")
    report = one(site.base, "DiagnosticReport", subject=patient)
    assert [f["contentType"] for f in report["presentedForm"]][1] == "application/pdf"
    assert report["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml">')

    assert site.submit(site.review("concern-amended", uid, review_id)) == 0
    docs = {d["id"]: d for d in search(site.base, "DocumentReference", subject=patient)}
    assert len(docs) == 2
    assert docs[v1["id"]]["status"] == "superseded"
    (v2,) = (d for d in docs.values() if d["status"] == "current")
    assert v2["relatesTo"][0]["code"] == "replaces"
    assert v2["relatesTo"][0]["target"]["reference"] == f"DocumentReference/{v1['id']}"
    assert v2["docStatus"] == "amended" and "version 2 replaces version 1" in _text(v2)

    assert site.submit(site.review("concern-withdrawn", uid, review_id)) == 0
    docs = {d["id"]: d for d in search(site.base, "DocumentReference", subject=patient)}
    assert sorted(d["status"] for d in docs.values()) == ["current", "superseded", "superseded"]
    (v3,) = (d for d in docs.values() if d["status"] == "current")
    assert v3["relatesTo"][0]["target"]["reference"] == f"DocumentReference/{v2['id']}"
    assert "CONCERN WITHDRAWN" in _text(v3)
    assert all(d["status"] != "entered-in-error" for d in docs.values())
    pdf = httpx.get(f"{site.base}/DocumentReference/{v3['id']}", timeout=30).json()
    assert base64.b64decode(pdf["content"][1]["attachment"]["data"]).startswith(b"%PDF-")
    assert_references_resolve(site.base, *docs.values())


def test_document_reference_only_site(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """A site whose EHR takes notes, not DiagnosticReports (Oracle Health-like): the review
    Task's output and the radiology request's reason point at the note."""
    monkeypatch.setenv("RTPLAN_NOTE__OUTPUTS", "document-reference")
    uid = site.ingest()
    patient = site.study(uid)["subject"]["reference"]
    assert site.submit(site.review("concern", uid, f"R-{uuid.uuid4().hex[:8]}")) == 0
    assert search(site.base, "DiagnosticReport", subject=patient) == []
    (doc,) = search(site.base, "DocumentReference", subject=patient)
    task = site.review_task(uid)
    assert task["output"][0]["valueReference"]["reference"] == f"DocumentReference/{doc['id']}"
    request = one(site.base, "ServiceRequest", subject=patient)
    assert request["reasonReference"] == [{"reference": f"DocumentReference/{doc['id']}"}]
    assert_references_resolve(site.base, doc, task, request)


def test_amendment_through_another_outbox_still_supersedes(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 1 went through one adapter's outbox, version 2 through another's (the study is
    then known only to the server): the server's current note is found and superseded."""
    uid = site.ingest()
    review_id = f"R-{uuid.uuid4().hex[:8]}"
    patient = site.study(uid)["subject"]["reference"]
    # No concern, so no HL7 order (an order needs the patient's name, which the second outbox
    # does not hold): only the note's own versioning is under test.
    assert site.submit(site.review("no-finding", uid, review_id)) == 0
    (v1,) = search(site.base, "DocumentReference", subject=patient)
    site.store.point_cli(monkeypatch, site.tmp / "other-outbox.sqlite")
    amended = site.review("no-finding", uid, review_id, version=2, notes="Amended: re-checked.")
    assert site.submit(amended) == 0
    docs = {d["id"]: d for d in search(site.base, "DocumentReference", subject=patient)}
    assert docs[v1["id"]]["status"] == "superseded"
    (v2,) = (d for d in docs.values() if d["status"] == "current")
    assert v2["relatesTo"][0]["target"]["reference"] == f"DocumentReference/{v1['id']}"
