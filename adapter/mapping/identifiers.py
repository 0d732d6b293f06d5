"""Business identifiers, deterministic ids and conditional-request URLs.

Pure helpers: the same input always gives the same output, so a Bundle can be rebuilt and
compared byte for byte, and a resend is recognisable.
"""

from __future__ import annotations

import uuid
from urllib.parse import quote

DICOM_UID_SYSTEM = "urn:dicom:uid"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
URI_SYSTEM = "urn:ietf:rfc:3986"
# Namespace for the urn:uuid fullUrls of Bundle entries (uuid5 of the business key).
_NAMESPACE = uuid.UUID("5b0f5a2e-3c6d-4e55-9d2f-0c8a1f6a7e10")


def study_identifier(study_uid: str) -> dict[str, str]:
    """The Study Instance UID as FHIR says: ``urn:dicom:uid`` / ``urn:oid:<uid>``."""
    return {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"}


def accession_identifier(accession: str, system: str) -> dict[str, object]:
    return {
        "type": {"coding": [{"system": V2_0203, "code": "ACSN", "display": "Accession ID"}]},
        "system": system,
        "value": accession,
    }


def patient_identifier(patient_id: str, system: str) -> dict[str, object]:
    return {
        "type": {"coding": [{"system": V2_0203, "code": "MR", "display": "Medical record number"}]},
        "system": system,
        "value": patient_id,
    }


def token(system: str, value: str) -> str:
    """A ``system|value`` search token, each side percent-encoded (``:`` and ``/`` kept)."""
    return f"{quote(system, safe=':/')}|{quote(value, safe=':/')}"


def conditional_url(resource_type: str, system: str, value: str) -> str:
    return f"{resource_type}?identifier={token(system, value)}"


def full_url(resource_type: str, business_key: str) -> str:
    """A stable ``urn:uuid`` for a Bundle entry, derived from its business key."""
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{resource_type}|{business_key}')}"
