"""The oncologist-review Task opened at ingest of a planning study (pure).

The RCR asks the oncologist to review every image of a planning scan; the Task makes that duty
visible and trackable in the EHR. It is written by *conditional create* on its business
identifier (``urn:rtplan:review-task`` / ``review:<study uid>``): ingesting the study again never
opens a second Task and never reopens one that the review already completed.

No clock: the due date is the study start plus ``due_days``. The prior-imaging check is done by
the service layer (it needs the FHIR server) and arrives here as a :class:`PriorImaging` value.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any, Literal

from adapter.dicom.models import PersonName, StudySummary
from adapter.tables import Tables, concept

JSON = dict[str, Any]
REVIEW_TASK_SYSTEM = "urn:rtplan:review-task"
OwnerType = Literal["Organization", "Practitioner", "PractitionerRole", "CareTeam"]


def review_task_value(study_uid: str) -> str:
    return f"review:{study_uid}"


def review_task_key(study_uid: str) -> str:
    """The review Task's business identifier as ``system|value`` (kept in the study record)."""
    return f"{REVIEW_TASK_SYSTEM}|{review_task_value(study_uid)}"


class PriorCheck(StrEnum):
    NOT_PERFORMED = "not-performed"  # embedded default: no FHIR server to ask
    FAILED = "failed"  # a server was configured but did not answer usefully
    FOUND = "found"
    NONE_FOUND = "none-found"


@dataclass(frozen=True, slots=True)
class PriorImaging:
    """The result of the prior cross-sectional imaging search, as a value."""

    check: PriorCheck = PriorCheck.NOT_PERFORMED
    found: int = 0
    window_days: int = 365
    modalities: tuple[str, ...] = ("CT", "MR", "PT")
    body_sites: tuple[str, ...] = ()  # display names of the matched body sites, if any
    problem: str = ""  # why a check failed (status codes only, never patient data)


@dataclass(frozen=True, slots=True)
class ReviewTaskOptions:
    due_days: int = 14
    default_owner_type: OwnerType = "Organization"
    default_owner_system: str = "urn:rtplan:team"
    default_owner_value: str = "rt-oncology"
    default_owner_display: str = "Radiotherapy oncology team"
    raised_priority: Literal["urgent", "asap", "stat"] = "urgent"


def referrer_key(name: PersonName) -> str:
    """``FAMILY^GIVEN`` in upper case: the source code of ``mappings/oncologists.yaml``."""
    given = name.given[0] if name.given else ""
    return f"{name.family}^{given}".upper().strip("^")


def task_owner(study: StudySummary, tables: Tables, options: ReviewTaskOptions) -> JSON:
    """The responsible oncologist from the referrer, else the configured default team.

    A logical reference (identifier + display): the EHR owns practitioners, and a reference
    that the server must resolve would make the whole ingest Bundle fail for an unknown one.
    """
    coding = None
    if not study.referring_physician.is_empty:
        coding = tables.conceptmap("oncologists").first(referrer_key(study.referring_physician))
    if coding is not None:
        return {
            "type": "Practitioner",
            "identifier": {"system": coding.system, "value": coding.code},
            "display": coding.display,
        }
    return {
        "type": options.default_owner_type,
        "identifier": {
            "system": options.default_owner_system,
            "value": options.default_owner_value,
        },
        "display": options.default_owner_display,
    }


def prior_imaging_text(prior: PriorImaging) -> str:
    """One sentence for Task.note and Task.businessStatus: what the check found and so what."""
    window = f"in the {prior.window_days} days before the planning scan"
    kinds = "/".join(prior.modalities)
    site = f" of {', '.join(prior.body_sites)}" if prior.body_sites else ""
    if prior.check is PriorCheck.FOUND:
        return (
            f"Prior imaging check: {prior.found} earlier {kinds} study(ies){site} found {window}."
        )
    if prior.check is PriorCheck.NONE_FOUND:
        return (
            f"Prior imaging check: no earlier {kinds} study{site} found {window}; priority raised "
            "because the RCR says the review matters most when there is no recent prior "
            "cross-sectional imaging of that part of the body."
        )
    if prior.check is PriorCheck.FAILED:
        return (
            f"Prior imaging check could not be completed ({prior.problem or 'no answer'}); "
            "priority not raised: check for prior imaging manually."
        )
    return (
        "Prior imaging check not performed (no FHIR server configured); priority not raised: "
        "check for prior imaging manually."
    )


def map_review_task(
    study: StudySummary,
    tables: Tables,
    options: ReviewTaskOptions,
    *,
    subject: JSON,
    focus: JSON,
    prior: PriorImaging,
) -> JSON:
    """Map the oncologist-review Task for one planning study.

    Args:
        subject: the Reference to the Patient (as on the ImagingStudy).
        focus: the Reference to the ImagingStudy (its ``urn:uuid`` fullUrl in the Bundle).
        prior: the prior-imaging check result.
    """
    labels = tables.labels_table("review-codes")
    code = labels.coding("review_task_code")
    raised = prior.check is PriorCheck.NONE_FOUND
    prior_text = prior_imaging_text(prior)
    task: JSON = {
        "resourceType": "Task",
        "identifier": [
            {"system": REVIEW_TASK_SYSTEM, "value": review_task_value(study.study_instance_uid)}
        ],
        "status": "requested",
        "businessStatus": {
            "text": f"awaiting oncologist review; prior imaging {prior.check.value}"
        },
        "intent": "order",
        "priority": options.raised_priority if raised else "routine",
        "code": concept([code], "Oncologist review of planning scan"),
        "description": labels.text("review_task_description"),
        "focus": focus,
        "for": subject,
    }
    if study.started is not None:
        task["authoredOn"] = study.started.isoformat()
        due = study.started + timedelta(days=options.due_days)
        task["restriction"] = {"period": {"end": due.isoformat()}}
    task["owner"] = task_owner(study, tables, options)
    task["note"] = [{"text": prior_text}]
    return task
