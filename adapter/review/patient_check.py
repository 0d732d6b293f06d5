"""Before an order goes to the RIS: does the EHR's Patient agree with the DICOM headers?

PID is filled from the study's DICOM headers (its record). When a FHIR server is configured
and the Patient it holds under the study's patient identifier has another name or birth date,
one of the two is wrong, and an order sent under the DICOM demographics could be matched to
the wrong patient by the RIS. Such an order is *held* (stored, not sent, until an analyst
retries it) and escalated.

The result names the fields that disagree ("name", "birth date"), never their values.
Comparison is lenient where systems legitimately differ: case, accents and spacing of names
(DICOM names are often upper-case ASCII), and only the parts both sides have.
"""

from __future__ import annotations

import logging
import unicodedata
from typing import TYPE_CHECKING, Any

from adapter.errors import TransportError
from adapter.mapping.identifiers import token
from adapter.store.studies import StudyRecord

if TYPE_CHECKING:
    from adapter.fhir.client import FhirClient

log = logging.getLogger(__name__)
JSON = dict[str, Any]


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(bare.casefold().replace("-", " ").split())


def disagreement(patient: JSON, record: StudyRecord) -> list[str]:
    """The fields on which a FHIR Patient and the study's DICOM record disagree."""
    found = []
    alphabetic = record.patient_name.split("=")[0].split("^")
    family = _fold(alphabetic[0]) if alphabetic else ""
    given = _fold(alphabetic[1]) if len(alphabetic) > 1 else ""
    names = patient.get("name") or []
    if family and names:
        matches = False
        for name in names:
            their_family = _fold(str(name.get("family", "")))
            their_given = " ".join(_fold(str(g)) for g in name.get("given", []))
            if their_family == family and (not given or not their_given or given in their_given
                                           or their_given in given):  # fmt: skip
                matches = True
        if not matches:
            found.append("name")
    birth = str(patient.get("birthDate", ""))
    if record.birth_date and birth and birth != record.birth_date:
        found.append("birth date")
    return found


async def patient_disagreement(
    fhir: FhirClient | None, identifier: JSON | None, record: StudyRecord | None
) -> list[str]:
    """Fields on which the FHIR server's Patient (found by the study's patient identifier)
    disagrees with the DICOM headers; empty when there is nothing to compare (no server, no
    record, no such Patient) or the server cannot be asked (logged: the order is not held for
    an unreachable server, the review's own FHIR row will wait for it anyway)."""
    if fhir is None or record is None or not identifier:
        return []
    params = {"identifier": token(str(identifier.get("system", "")), str(identifier["value"]))}
    try:
        response = await fhir.request("GET", "Patient", params=params)
    except TransportError as exc:
        log.warning(
            "patient check skipped: the FHIR server did not answer (%s)", type(exc).__name__
        )
        return []
    if not response.ok or response.body is None:
        log.warning("patient check skipped: Patient search HTTP %d", response.status)
        return []
    patients = [e["resource"] for e in response.body.get("entry", []) if "resource" in e]
    found: list[str] = []
    for patient in patients:
        found.extend(f for f in disagreement(patient, record) if f not in found)
    return found
