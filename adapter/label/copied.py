"""Which Patient and Study attributes a label KOS copies from its study's files (no pydicom).

Shared by the pydicom reader (``adapter.label.source``) and the raw-byte KOS encoder
(``adapter.label.raw_kos``), so both copy the same elements.
"""

from __future__ import annotations

from typing import Final

from adapter.errors import AdapterError

# PS3.3 C.7.1.1 Patient, C.7.2.1 General Study and C.12.1 SOP Common (Timezone Offset, so the
# copied Study Date/Time keep their meaning). Copied when present, never invented.
COPIED_KEYWORDS: Final = (
    "SpecificCharacterSet",
    "TimezoneOffsetFromUTC",
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "IssuerOfPatientIDQualifiersSequence",
    "TypeOfPatientID",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "OtherPatientIDsSequence",
    "PatientComments",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "ReferringPhysicianIdentificationSequence",
    "StudyID",
    "AccessionNumber",
    "IssuerOfAccessionNumberSequence",
    "StudyDescription",
    "ProcedureCodeSequence",
)
# Type 2 in the KOS IOD: present (possibly empty) even when the source has no value.
TYPE2_KEYWORDS: Final = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
# The same attributes by tag, with their VR in the data dictionary (PS3.6); a test checks this
# table against pydicom's dictionary.
COPIED_TAGS: Final = {
    "SpecificCharacterSet": (0x00080005, "CS"),
    "TimezoneOffsetFromUTC": (0x00080201, "SH"),
    "PatientName": (0x00100010, "PN"),
    "PatientID": (0x00100020, "LO"),
    "IssuerOfPatientID": (0x00100021, "LO"),
    "IssuerOfPatientIDQualifiersSequence": (0x00100024, "SQ"),
    "TypeOfPatientID": (0x00100022, "CS"),
    "PatientBirthDate": (0x00100030, "DA"),
    "PatientBirthTime": (0x00100032, "TM"),
    "PatientSex": (0x00100040, "CS"),
    "OtherPatientIDsSequence": (0x00101002, "SQ"),
    "PatientComments": (0x00104000, "LT"),
    "StudyInstanceUID": (0x0020000D, "UI"),
    "StudyDate": (0x00080020, "DA"),
    "StudyTime": (0x00080030, "TM"),
    "ReferringPhysicianName": (0x00080090, "PN"),
    "ReferringPhysicianIdentificationSequence": (0x00080096, "SQ"),
    "StudyID": (0x00200010, "SH"),
    "AccessionNumber": (0x00080050, "SH"),
    "IssuerOfAccessionNumberSequence": (0x00080051, "SQ"),
    "StudyDescription": (0x00081030, "LO"),
    "ProcedureCodeSequence": (0x00081032, "SQ"),
}


class SourceUnavailable(AdapterError):
    """The study's files cannot be read again (e.g. they came from an archive that was expanded
    into a temporary folder). Names the reason, never a value."""
