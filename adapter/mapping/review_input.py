"""The oncologist's review as input: a validated, immutable model and its JSON Schema.

``docs/review.schema.json`` is generated from this model
(``python -m adapter.mapping.review_input``) and a test keeps the two equal, so integration
engines validate against exactly what the adapter accepts. Rules the schema cannot express
(body-site codes come from ``mappings/body-site.yaml``, a withdrawal needs an earlier
version) are checked by :func:`parse_review`.

Errors name the field as a JSON pointer (``/findings/0/urgency``) and never echo the value: a
review carries patient data.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
)

from adapter.errors import AdapterError
from adapter.tables import Tables

SCHEMA_ID = "urn:rtplan:schema:review:1"
Category = Literal["new-tumour", "metastasis", "other-pathology"]
Urgency = Literal["routine", "urgent", "asap", "stat"]
Outcome = Literal["no-significant-finding", "unexpected-findings"]
URGENCY_ORDER: tuple[Urgency, ...] = ("routine", "urgent", "asap", "stat")


class ReviewError(AdapterError):
    """The review is invalid. ``problems`` are ``(pointer, message)`` pairs without values."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        text = "; ".join(f"{path or '/'}: {message}" for path, message in problems)
        super().__init__(f"invalid review: {text}")


class UnknownStudyError(ReviewError):
    """The review names a study the adapter has not mapped and the server does not know."""


def _text_datetime(value: object) -> object:
    # pydantic would take a number as a Unix time; a review's time must be ISO 8601 text.
    if not isinstance(value, str):
        raise ValueError("must be an ISO 8601 date-time string with a UTC offset")
    return value


ReviewedAt = Annotated[AwareDatetime, BeforeValidator(_text_datetime)]
Text = Annotated[StrictStr, Field(min_length=1, max_length=10_000)]


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Identifier(_Frozen):
    system: Annotated[StrictStr, Field(pattern=r"^(urn:|https?://)\S+$", max_length=255)]
    value: Annotated[StrictStr, Field(min_length=1, max_length=255)]


class Reviewer(_Frozen):
    """The oncologist who reviewed the images (a Practitioner identifier and a name)."""

    identifier: Identifier
    name: Annotated[StrictStr, Field(min_length=1, max_length=255)]
    # Structured name for HL7 XCN (ORC-12/OBR-16); ``name`` stays the display text. Without
    # them the order carries the display name in XCN-2 only (never a guessed split).
    family: Annotated[StrictStr, Field(min_length=1, max_length=100)] | None = None
    given: Annotated[StrictStr, Field(min_length=1, max_length=100)] | None = None
    prefix: Annotated[StrictStr, Field(min_length=1, max_length=20)] | None = None


class Finding(_Frozen):
    """One unexpected finding. ``id`` (optional) keeps the finding's identity across versions
    of the review, so correcting its description does not open a new radiology request."""

    id: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] | None = None
    category: Category
    description: Text
    body_site: Annotated[StrictStr, Field(pattern=r"^[A-Z0-9]{1,32}$")] | None = Field(
        default=None, description="a source code of mappings/body-site.yaml, e.g. LIVER"
    )
    urgency: Urgency


class ReviewInput(_Frozen):
    """An oncologist's documented review of one planning scan (the RCR duty)."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        json_schema_extra={
            "allOf": [
                {
                    "if": {"properties": {"outcome": {"const": "unexpected-findings"}}},
                    "then": {"required": ["findings"], "properties": {"findings": {"minItems": 1}}},
                },
                {
                    "if": {"properties": {"outcome": {"const": "no-significant-finding"}}},
                    "then": {"properties": {"findings": {"maxItems": 0}}},
                },
            ]
        },
    )

    review_id: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")] = Field(
        description="business key of the review; the same id with a higher version amends it"
    )
    version: Annotated[StrictInt, Field(ge=1)] = 1
    study_instance_uid: Annotated[StrictStr, Field(pattern=r"^[0-9]+(\.[0-9]+)*$", max_length=64)]
    reviewer: Reviewer
    reviewed_at: ReviewedAt
    all_images_reviewed: StrictBool
    outcome: Outcome
    findings: tuple[Finding, ...] = ()
    radiologist_review_requested: StrictBool
    patient_informed_planning_only: StrictBool
    notes: Annotated[StrictStr, Field(max_length=10_000)] = ""
    concern_withdrawn: StrictBool = Field(
        default=False,
        description="on a later version: the concern is withdrawn, the radiology request revoked",
    )

    @property
    def concern(self) -> bool:
        return self.radiologist_review_requested and not self.concern_withdrawn

    @property
    def highest_urgency(self) -> Urgency:
        ranks = [URGENCY_ORDER.index(f.urgency) for f in self.findings]
        return URGENCY_ORDER[max(ranks, default=0)]


def _pointer(loc: tuple[int | str, ...]) -> str:
    return "/" + "/".join(str(part) for part in loc) if loc else ""


def parse_review(data: Mapping[str, Any] | ReviewInput, tables: Tables) -> ReviewInput:
    """Validate ``data`` into a :class:`ReviewInput`.

    Raises:
        ReviewError: every problem found, each naming its field.
    """
    if isinstance(data, ReviewInput):
        review = data
    else:
        if not isinstance(data, Mapping):
            raise ReviewError([("", "a review must be a JSON object")])
        try:
            review = ReviewInput.model_validate(dict(data))
        except ValidationError as exc:
            problems = [
                (_pointer(tuple(e["loc"])), _message(e)) for e in exc.errors(include_url=False)
            ]
            raise ReviewError(problems) from None
    problems = _cross_checks(review, tables)
    if problems:
        raise ReviewError(problems)
    return review


def _message(error: Any) -> str:
    kind = error.get("type", "")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    # pydantic's messages name types, patterns and allowed literals, never the input itself.
    return re.sub(r"\s+", " ", str(error.get("msg", "invalid")))


def _cross_checks(review: ReviewInput, tables: Tables) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if review.outcome == "unexpected-findings" and not review.findings:
        problems.append(("/findings", "at least one finding is required for unexpected-findings"))
    if review.outcome == "no-significant-finding" and review.findings:
        problems.append(("/findings", "must be empty when the outcome is no-significant-finding"))
    if review.concern_withdrawn and review.version < 2:
        problems.append(
            ("/concern_withdrawn", "a withdrawal amends an earlier version (version 2+)")
        )
    sites = tables.conceptmap("body-site").rows
    for index, finding in enumerate(review.findings):
        if finding.body_site is not None and not sites.get(finding.body_site):
            problems.append(
                (f"/findings/{index}/body_site", "unknown code (see mappings/body-site.yaml)")
            )
    ids = [f.id for f in review.findings if f.id is not None]
    if len(set(ids)) != len(ids):
        problems.append(("/findings", "finding ids must be unique"))
    return problems


def json_schema() -> dict[str, Any]:
    """The published JSON Schema (docs/review.schema.json)."""
    schema = ReviewInput.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        **schema,
    }


if __name__ == "__main__":  # pragma: no cover
    print(json.dumps(json_schema(), indent=2))
