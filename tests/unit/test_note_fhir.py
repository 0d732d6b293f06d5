"""The review note in FHIR: DocumentReference versions (current / superseded via relatesTo
replaces, never entered-in-error), DiagnosticReport.presentedForm, the ``note.outputs``
combinations, and a generated, escaped XHTML narrative on every resource we write."""

from __future__ import annotations

import base64
import hashlib
import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from adapter.config import ConfigError, NoteSettings, load_settings
from adapter.mapping.narrative import (
    NOT_DOMAIN,
    XHTML,
    narrative_div,
    resources_without_narrative,
)
from adapter.review.note.fhir import NOTE_SYSTEM, PDF_TYPE, TEXT_TYPE
from tests.note_support import case_steps, ingest_bundle, load_review, run_reviews

ALLOWED_TAGS = {"div", "p", "b", "table", "tr", "td", "br"}


def resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def test_versions_supersede_and_replace() -> None:
    steps = case_steps("concern-withdrawn")  # concern, new finding, withdrawn
    first, second, third = (s.note_bundle for s in steps)
    assert first is not None and second is not None and third is not None
    (v1,) = resources(first, "DocumentReference")
    assert (v1["status"], v1["docStatus"]) == ("current", "final") and "relatesTo" not in v1
    assert v1["masterIdentifier"] == {"system": NOTE_SYSTEM, "value": v1["identifier"][0]["value"]}
    old, v2 = resources(second, "DocumentReference")
    assert old["masterIdentifier"] == v1["masterIdentifier"] and old["status"] == "superseded"
    assert (v2["status"], v2["docStatus"]) == ("current", "amended")
    number = v1["masterIdentifier"]["value"]
    assert v2["relatesTo"] == [
        {
            "code": "replaces",
            "target": {"reference": f"DocumentReference?identifier={NOTE_SYSTEM}|{number}"},
        }
    ]
    old2, v3 = resources(third, "DocumentReference")
    assert old2["masterIdentifier"] == v2["masterIdentifier"] and old2["status"] == "superseded"
    assert v3["relatesTo"][0]["target"]["reference"].endswith(v2["masterIdentifier"]["value"])
    text = base64.b64decode(v3["content"][0]["attachment"]["data"]).decode("utf-8")
    assert "CONCERN WITHDRAWN" in text  # the withdrawal replaces with a note that says so
    everything = json.dumps([first, second, third])
    assert "entered-in-error" not in everything
    # each entry written by conditional update on the version's number: a resend is harmless
    assert all(e["request"]["method"] == "PUT" for e in third["entry"])


def test_document_reference_content_and_codes() -> None:
    step = case_steps("concern")[-1]
    assert step.note_bundle is not None
    (doc,) = resources(step.note_bundle, "DocumentReference")
    assert doc["type"]["coding"] == [
        {"system": "http://loinc.org", "code": "34832-6", "display": "Radiation oncology Note"}
    ]
    assert doc["category"][0]["coding"][0]["code"] == "clinical-note"
    assert doc["subject"] == {
        "reference": "Patient?identifier=https://hospital.example.org/fhir/sid/mrn|RTP0001"
    }
    text, pdf = (c["attachment"] for c in doc["content"])
    assert (text["contentType"], pdf["contentType"]) == (TEXT_TYPE, PDF_TYPE)
    rendered = step.plan.rendered
    assert base64.b64decode(text["data"]) == rendered.text.encode("utf-8")
    assert base64.b64decode(pdf["data"]) == rendered.pdf
    assert pdf["size"] == len(rendered.pdf)
    assert pdf["hash"] == base64.b64encode(hashlib.sha1(rendered.pdf).digest()).decode()
    related = [r["reference"] for r in doc["context"]["related"]]
    assert related[0].startswith("ImagingStudy?identifier=urn:dicom:uid|urn:oid:")
    assert related[1] == "DiagnosticReport?identifier=urn:rtplan:review|REV-2026-0002"


def test_incomplete_review_note_is_preliminary() -> None:
    step = case_steps("incomplete")[-1]
    assert step.note_bundle is not None
    (doc,) = resources(step.note_bundle, "DocumentReference")
    assert doc["docStatus"] == "preliminary" and "INCOMPLETE" in doc["description"]


def test_diagnostic_report_carries_the_note_as_presented_form() -> None:
    step = case_steps("concern")[-1]
    (report,) = resources(step.output.bundle, "DiagnosticReport")
    forms = report["presentedForm"]
    assert [f["contentType"] for f in forms] == [TEXT_TYPE, PDF_TYPE]
    assert base64.b64decode(forms[0]["data"]).decode() == step.plan.rendered.text


def test_document_reference_only_replaces_the_report_in_the_review_bundle() -> None:
    step = run_reviews([load_review("concern")], outputs="document-reference")[0]
    bundle = step.output.bundle
    assert resources(bundle, "DiagnosticReport") == []
    (doc,) = resources(bundle, "DocumentReference")
    url = next(
        e["fullUrl"] for e in bundle["entry"] if e["resource"] is doc or e["resource"] == doc
    )
    task = next(t for t in resources(bundle, "Task") if "output" in t)
    assert task["output"][0]["valueReference"]["reference"] == url
    (request,) = resources(bundle, "ServiceRequest")
    assert request["reasonReference"] == [{"reference": url}]
    assert "DiagnosticReport" not in [
        r["reference"].split("?")[0] for r in doc["context"]["related"]
    ]
    assert step.note_bundle is None  # it travels in the review Bundle
    assert len(bundle["entry"]) <= 8


def test_no_fhir_note_output_drops_the_report_and_its_references() -> None:
    step = run_reviews([load_review("concern")], outputs="mdm")[0]
    bundle = step.output.bundle
    assert resources(bundle, "DiagnosticReport") == resources(bundle, "DocumentReference") == []
    assert "urn:uuid" not in json.dumps([t.get("output") for t in resources(bundle, "Task")])
    (request,) = resources(bundle, "ServiceRequest")
    assert "reasonReference" not in request


def test_outputs_setting() -> None:
    auto = NoteSettings()
    assert auto.selected(out_dir=True, mllp=False) == {
        "diagnostic-report",
        "document-reference",
        "mdm",
        "oru",
    }
    assert auto.selected(out_dir=False, mllp=False) == {"diagnostic-report", "document-reference"}
    assert auto.selected(out_dir=True, mllp=True) == {"diagnostic-report", "document-reference"}
    chosen = load_settings(env={"RTPLAN_NOTE__OUTPUTS": "document-reference,mdm"})
    assert chosen.note.selected(out_dir=False, mllp=True) == {"document-reference", "mdm"}
    with pytest.raises(ConfigError, match=r"note\.outputs"):
        load_settings(env={"RTPLAN_NOTE__OUTPUTS": "pdf"})


def _check_div(div: str) -> None:
    root = ET.fromstring(div)
    assert root.tag == f"{{{XHTML}}}div"
    for element in root.iter():
        assert element.tag.removeprefix(f"{{{XHTML}}}") in ALLOWED_TAGS
        assert element.attrib == {}
    assert "".join(root.itertext()).strip()


def test_every_written_resource_has_a_valid_escaped_narrative() -> None:
    steps = case_steps("concern-withdrawn")
    bundles = [ingest_bundle(), *(s.output.bundle for s in steps)]
    bundles += [s.note_bundle for s in steps if s.note_bundle is not None]
    assert resources_without_narrative(bundles) == []
    for bundle in bundles:
        for entry in bundle["entry"]:
            if entry["resource"]["resourceType"] in NOT_DOMAIN:
                continue  # a Binary (JSON Patch) has no text element
            text = entry["resource"]["text"]
            assert text["status"] == "generated"
            _check_div(text["div"])


def test_narrative_escapes_hostile_text() -> None:
    hostile = 'x</td></tr></table><script>alert(1)</script> & "q" \x0b\x1c\ud800 ok'
    div = narrative_div({"resourceType": "DiagnosticReport", "conclusion": hostile})
    _check_div(div)
    root = ET.fromstring(div)
    assert "<script>" in "".join(root.itertext())  # shown as text, never as markup
    assert "\ufffd\ufffd\ufffd ok" in "".join(root.itertext())


def test_unknown_previous_version_is_not_referenced() -> None:
    from adapter.review.note.fhir import note_entries
    from tests.note_support import TABLES

    step = case_steps("concern-amended")[-1]
    entries = note_entries(
        step.plan.rendered, step.plan.ctx, TABLES, report_included=True, previous=None
    )
    (only,) = entries
    assert only["resource"]["status"] == "current" and "relatesTo" not in only["resource"]
    assert only["resource"]["docStatus"] == "amended"


@pytest.mark.store
def test_preview_shows_the_note_as_a_submission_would_write_it(tmp_path: Path) -> None:
    from adapter.cli import main
    from adapter.config import Settings
    from adapter.review.service import preview_review

    dicom = str(Path(__file__).resolve().parents[2] / "fixtures" / "dicom" / "planning-ct")
    assert main(["ingest", dicom, "--out", str(tmp_path)]) == 0
    output = preview_review(load_review("concern"), Settings(), out_dir=tmp_path)
    (report,) = resources(output.bundle, "DiagnosticReport")
    assert [f["contentType"] for f in report["presentedForm"]] == [TEXT_TYPE, PDF_TYPE]
    assert not list((tmp_path / "fhir").glob("Review-*"))  # preview sends nothing


def test_result_and_task_update_bundles_carry_narratives() -> None:
    from adapter.review.radiology_result import task_entry, transaction

    task = {"resourceType": "Task", "status": "received", "intent": "order"}
    bundle = transaction(task_entry(task, "RT0000000000000001"))
    assert resources_without_narrative([bundle]) == []
    _check_div(bundle["entry"][0]["resource"]["text"]["div"])


def test_server_lookup_of_the_previous_note() -> None:
    """The server's current note of the review is superseded; a failing server leaves the
    plan as it is (the new version is written without relatesTo, never not at all)."""
    import asyncio
    from dataclasses import replace

    import httpx

    from adapter.config import FhirSettings, Settings
    from adapter.jobs.fhir import fhir_session
    from adapter.review.note.service import NotePlan, with_server_previous

    steps = case_steps("concern-amended")
    first, second = (s.plan for s in steps)
    assert first.previous is None and second.previous is not None
    (v1,) = resources(steps[0].note_bundle or {}, "DocumentReference")
    plan = replace(second, previous=None)
    settings = Settings(fhir=FhirSettings(base_url="http://fhir.test/fhir", max_attempts=1))
    seen: list[str] = []

    def found(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        body = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": v1}]}
        return httpx.Response(200, json=body)

    def broken(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"resourceType": "OperationOutcome", "issue": []})

    async def lookup(handler: Callable[[httpx.Request], httpx.Response]) -> NotePlan:
        async with fhir_session(settings, transport=httpx.MockTransport(handler)) as fhir:
            return await with_server_previous(plan, fhir)

    got = asyncio.run(lookup(found))
    assert got.previous == v1 and "status=current" in seen[0]
    same = asyncio.run(lookup(broken))
    assert same.previous is None
    assert asyncio.run(with_server_previous(plan, None)).previous is None  # no server: as it was


def test_binary_gets_no_narrative() -> None:
    from adapter.mapping.narrative import with_narratives

    patch = {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": "W10="}
    bundle = with_narratives({"resourceType": "Bundle", "entry": [{"resource": patch}]})
    assert "text" not in bundle["entry"][0]["resource"]  # not a DomainResource
    assert resources_without_narrative([bundle]) == []
