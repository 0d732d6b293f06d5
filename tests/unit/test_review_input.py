"""The review input: schema, validation errors that name the field, placer order numbers, the
outbox path on the embedded default (HL7 cancel rows wait without blocking anything)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped,unused-ignore]
import pytest

from adapter.cli import main
from adapter.config import NoteSettings, Settings
from adapter.jobs.review import submit_review
from adapter.mapping.review_bundle import placer_order_number
from adapter.mapping.review_input import ReviewError, UnknownStudyError, json_schema, parse_review
from adapter.review.service import HL7, KIND_HL7_CANCEL, preview_review
from adapter.review.versions import StaleReviewError
from adapter.store.outbox import Outbox, State
from adapter.tables import load_tables
from tests.store_backend import StoreUnderTest

ROOT = Path(__file__).resolve().parents[2]
REVIEWS = ROOT / "fixtures" / "reviews"
TABLES = load_tables(Settings().mappings_dir)
REQUIRED = [
    "review_id",
    "study_instance_uid",
    "reviewer",
    "reviewed_at",
    "all_images_reviewed",
    "outcome",
    "radiologist_review_requested",
    "patient_informed_planning_only",
]


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((REVIEWS / f"{name}.json").read_text())
    return data


def problems(data: object) -> list[tuple[str, str]]:
    with pytest.raises(ReviewError) as caught:
        parse_review(data, TABLES)  # type: ignore[arg-type]
    return caught.value.problems


def test_published_schema_is_generated_from_the_model() -> None:
    published = json.loads((ROOT / "docs" / "review.schema.json").read_text())
    assert published == json_schema()


@pytest.mark.parametrize("name", sorted(p.stem for p in REVIEWS.glob("*.json")))
def test_valid_fixtures_pass_model_and_schema(name: str) -> None:
    data = load(name)
    jsonschema.Draft202012Validator(json_schema()).validate(data)
    assert parse_review(data, TABLES).review_id == data["review_id"]


@pytest.mark.parametrize("field", REQUIRED)
def test_each_required_field_missing_is_named(field: str) -> None:
    data = load("concern")
    del data[field]
    assert (f"/{field}", "required field is missing") in problems(data)
    assert not jsonschema.Draft202012Validator(json_schema()).is_valid(data)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("all_images_reviewed",), "yes"),
        (("radiologist_review_requested",), 1),
        (("patient_informed_planning_only",), None),
        (("version",), "2"),
        (("reviewed_at",), 1772633600),
        (("reviewed_at",), "2026-03-04T14:20:00"),  # no UTC offset
        (("reviewer", "name"), 42),
        (("reviewer", "identifier", "system"), "not a uri"),
        (("findings", 0, "description"), ["x"]),
        (("study_instance_uid",), "1.2.abc"),
        (("review_id",), "has spaces and / slashes"),
    ],
)
def test_wrong_types_name_the_field(path: tuple[Any, ...], value: object) -> None:
    data = load("concern")
    target: Any = data
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    found = problems(data)
    pointer = "/" + "/".join(map(str, path))
    assert any(p == pointer for p, _ in found), found
    assert all(str(value) not in message for _, message in found if value not in (None, 1))


@pytest.mark.parametrize(
    ("field", "value"),
    [("category", "tumor"), ("urgency", "whenever"), ("body_site", "ELBOWX")],
)
def test_unknown_codes_name_the_field(field: str, value: str) -> None:
    data = load("concern")
    data["findings"][1][field] = value
    assert any(p == f"/findings/1/{field}" for p, _ in problems(data))


def test_cross_field_rules() -> None:
    data = load("concern")
    data["findings"] = []
    assert ("/findings", "at least one finding is required for unexpected-findings") in problems(
        data
    )
    data = load("no-finding")
    data["findings"] = load("concern")["findings"]
    assert any(p == "/findings" for p, _ in problems(data))
    data = load("concern")
    data["concern_withdrawn"] = True
    assert any(p == "/concern_withdrawn" for p, _ in problems(data))
    data = load("concern")
    data["surprise"] = 1
    assert ("/surprise", "unknown field") in problems(data)
    assert problems([1, 2]) == [("", "a review must be a JSON object")]


def test_invalid_fixtures_are_rejected() -> None:
    for path in sorted((REVIEWS / "invalid").glob("*.json")):
        data = json.loads(path.read_text())
        if path.stem == "unknown-study":
            parse_review(data, TABLES)  # valid as input: the study check needs the outbox
            continue
        with pytest.raises(ReviewError):
            parse_review(data, TABLES)


@pytest.mark.store
def test_placer_order_number_is_stable_and_changes_with_the_finding_set() -> None:
    concern = parse_review(load("concern"), TABLES)
    amended = parse_review(load("concern-amended"), TABLES)  # same finding ids, new text
    new = parse_review(load("concern-new-finding"), TABLES)
    assert placer_order_number(concern) == placer_order_number(
        parse_review(copy.deepcopy(load("concern")), TABLES)
    )
    assert placer_order_number(concern) == placer_order_number(amended)
    assert placer_order_number(new) != placer_order_number(concern)
    assert len(placer_order_number(concern)) <= 22  # HL7 v2.3.1 EI


def _ingest(out: Path) -> None:
    assert (
        main(["ingest", str(ROOT / "fixtures" / "dicom" / "planning-ct"), "--out", str(out)]) == 0
    )


@pytest.mark.store
def test_unknown_study_is_a_clear_error(tmp_path: Path) -> None:
    _ingest(tmp_path)
    data = json.loads((REVIEWS / "invalid" / "unknown-study.json").read_text())
    with pytest.raises(UnknownStudyError) as caught:
        submit_review(data, Settings(), out_dir=tmp_path)
    assert caught.value.problems[0][0] == "/study_instance_uid"


@pytest.mark.store
def test_cli_exit_codes_and_messages_without_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _ingest(tmp_path)
    capsys.readouterr()
    bad = REVIEWS / "invalid" / "unknown-body-site.json"
    assert main(["review", "submit", str(bad), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "/findings/0/body_site" in err and "ELBOWX" not in err
    assert main(["review", "preview", str(REVIEWS / "concern.json"), "--out", str(tmp_path)]) == 0
    preview = json.loads(capsys.readouterr().out)
    kinds = [e["resource"]["resourceType"] for e in preview["bundle"]["entry"]]
    assert kinds == ["DiagnosticReport", "Task", "ServiceRequest", "Task"]
    assert not list((tmp_path / "fhir").glob("Review-*"))  # preview sends nothing


@pytest.mark.store
def test_concern_and_withdrawal_on_embedded_default_write_order_and_cancel(
    tmp_path: Path,
    store: StoreUnderTest,
) -> None:
    """On the embedded default the HL7 order and its cancel are files in DIR/hl7, written
    only after the review's FHIR Bundle was written (the order row waits for it)."""
    _ingest(tmp_path)
    # Only the DiagnosticReport output, so the rows are the review's and the order's (the
    # review note's outputs are tested in tests/unit/test_note_outputs.py).
    settings = Settings(note=NoteSettings(outputs="diagnostic-report"))
    first = submit_review(load("concern"), settings, out_dir=tmp_path)
    assert first.placer_order_number and first.delivery and first.delivery.delivered == 2
    withdrawn = submit_review(load("concern-withdrawn"), settings, out_dir=tmp_path)
    writes = [
        (e["request"]["method"], e["request"]["url"].partition("?")[0])
        for e in withdrawn.bundle["entry"]
    ]
    # The report is rewritten as a new version; the requests are patched (a state change).
    assert writes == [
        ("PUT", "DiagnosticReport"),
        ("PUT", "Task"),
        ("PATCH", "ServiceRequest"),
        ("PATCH", "Task"),
    ]
    assert withdrawn.bundle["entry"][0]["resource"]["status"] == "amended"
    assert len(withdrawn.hl7_rows) == 1
    with Outbox(store.at(tmp_path / "outbox.sqlite")) as outbox:
        row = outbox.get(withdrawn.hl7_rows[0])
        assert (row.destination, row.kind, row.state) == (HL7, KIND_HL7_CANCEL, State.DELIVERED)
        review_row = outbox.get(withdrawn.row_ids[0])
        assert review_row.state is State.DELIVERED and review_row.updated_at <= row.updated_at
        order = row.payload["order"]
        assert order["placer_order_number"] == first.placer_order_number
        assert order["control"] == "CA" and order["accession_number"]
    messages = {p.name: p.read_bytes() for p in (tmp_path / "hl7").glob("*.hl7")}
    assert len(messages) == 2
    controls = sorted(m.split(b"\rORC|", 1)[1][:2].decode() for m in messages.values())
    assert controls == ["CA", "NW"]
    assert all(first.placer_order_number.encode() in m for m in messages.values())
    # The same withdrawal again is a no-op; the old version 1 again is refused.
    again = submit_review(load("concern-withdrawn"), settings, out_dir=tmp_path)
    assert again.unchanged and again.row_ids == () and again.hl7_rows == ()
    with pytest.raises(StaleReviewError):
        submit_review(load("concern"), settings, out_dir=tmp_path)


@pytest.mark.store
def test_withdrawing_an_unknown_concern_is_an_error(tmp_path: Path) -> None:
    _ingest(tmp_path)
    data = load("concern-withdrawn")
    data["radiologist_review_requested"] = False
    with pytest.raises(ReviewError) as caught:
        preview_review(data, Settings(), out_dir=tmp_path)
    assert caught.value.problems[0][0] == "/concern_withdrawn"


@pytest.mark.store
def test_incomplete_review_leaves_the_task_open(tmp_path: Path) -> None:
    _ingest(tmp_path)
    output = preview_review(load("incomplete"), Settings(), out_dir=tmp_path)
    report, task = (e["resource"] for e in output.bundle["entry"])
    assert report["status"] == "partial"
    assert task["status"] == "in-progress"
    assert task["output"][0]["valueReference"]["reference"] == output.bundle["entry"][0]["fullUrl"]
