"""What a label KOS is made of, decided before it is built: its UIDs, the series it references,
its TEXT item and its content digest. Pure and light (no pydicom), so deciding whether a stored
KOS can be re-used costs no DICOM toolkit import.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Final

from adapter.classify import IMAGE_MODALITIES, Classification, Strength
from adapter.dicom.models import SeriesSummary, StudySummary
from adapter.label.titles import LabelVocabulary

KOS_SOP_CLASS: Final = "1.2.840.10008.5.1.4.1.1.88.59"  # Key Object Selection Document Storage
KOS_MODALITY: Final = "KO"
# PS3.16 TID 2010 is identified by Mapping Resource DCMR, Template Identifier 2010.
TEMPLATE_RESOURCE, TEMPLATE_ID = "DCMR", "2010"
# Our own implementation UID and version name in the File Meta (PS3.7 D.3.3.2).
IMPLEMENTATION_CLASS_UID: Final = "2.25.142881983114873361637405032511098445296"
IMPLEMENTATION_VERSION: Final = "RTPLAN_KOS_1"


def derived_uid(*parts: str) -> str:
    """A UUID-derived UID (PS3.5 B.2, root 2.25): the first 16 bytes of a SHA-256 of ``parts``
    as a decimal integer, so the same parts always give the same UID (at most 44 characters)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


@dataclass(frozen=True, slots=True)
class KosPlan:
    """What makes one KOS instance: decided before building (the store picks the number)."""

    study_uid: str
    digest: str  # of the referenced instances and the label wording
    instance_number: int
    series_number: int

    @property
    def series_uid(self) -> str:
        return derived_uid(self.study_uid, "rtplan KOS series")

    @property
    def sop_instance_uid(self) -> str:
        return derived_uid(self.study_uid, self.digest, str(self.instance_number), "rtplan KOS")


def image_series(study: StudySummary) -> tuple[SeriesSummary, ...]:
    """The series a label KOS references: every CT, MR and PET series of the study."""
    return tuple(s for s in study.series if s.modality in IMAGE_MODALITIES and s.instances)


def label_text(classification: Classification, vocabulary: LabelVocabulary) -> str:
    """The TEXT item: the label, then why the study was labelled (series numbers, modalities
    and rule values only, never patient data)."""
    reasons = [e.text for e in classification.evidence if e.strength is not Strength.COUNTER]
    evidence = "; ".join(reasons) if reasons else "no evidence was recorded"
    return f"{vocabulary.text} {vocabulary.evidence_heading}: {evidence}."


def content_digest(
    study: StudySummary, classification: Classification, vocabulary: LabelVocabulary
) -> str:
    """A digest of everything the document says apart from when and which version: a late
    series or new wording changes it, re-reading the same files does not."""
    references = [
        [s.series_instance_uid, [[i.sop_class_uid, i.sop_instance_uid] for i in s.instances]]
        for s in image_series(study)
    ]
    wording = [
        vocabulary.title.key,
        vocabulary.series_description,
        label_text(classification, vocabulary),
    ]
    text = json.dumps([study.study_instance_uid, references, wording], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def in_study_offset(now: datetime, offset: str) -> datetime:
    """``now`` expressed at the study's Timezone Offset From UTC (0008,0201) when it has one,
    so Content Date/Time read the same way as the copied Study Date/Time."""
    if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        minutes = int(offset[1:3]) * 60 + int(offset[3:5])
        sign = 1 if offset[0] == "+" else -1
        return now.astimezone(timezone(timedelta(minutes=sign * minutes)))
    return now
