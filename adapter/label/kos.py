"""Build the labelling Key Object Selection document (KOS) of one planning study.

Pure: no I/O, no clock (``now`` is passed in). PS3.3 A.35.4 Key Object Selection Document IOD
with the content tree of PS3.16 TID 2010::

    CONTAINER  (title from CID 7010: DCM 128198 "For RT Treatment Planning")   SEPARATE
      CONTAINS TEXT   (DCM 113012 "Key Object Description") label + classification evidence
      CONTAINS IMAGE  one per instance of every image series of the study
    Current Requested Procedure Evidence Sequence: the same instances, by study and series

The KOS is a new series in the planning study: the study's own images are never re-sent or
changed (docs/pacs-label.md says why). Its UIDs are derived from the Study Instance UID, the
document's content digest and its instance number, so the same input gives the same document
and a changed one (a late series) gets a new SOP Instance UID in the same KOS series.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from io import BytesIO
from typing import Any, Final

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from adapter.classify import IMAGE_MODALITIES, Classification, Strength
from adapter.dicom.models import SeriesSummary, StudySummary
from adapter.errors import MappingError
from adapter.label.titles import DicomCode, LabelVocabulary, refuse_rejection_title

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


def build_kos(
    study: StudySummary,
    classification: Classification,
    copied: Dataset,
    vocabulary: LabelVocabulary,
    plan: KosPlan,
    now: datetime,
) -> Dataset:
    """The KOS as a pydicom Dataset with File Meta, ready to encode.

    ``copied`` holds the study's Patient and General Study attributes exactly as they are in its
    files (``adapter.label.source``). ``now`` is the document's creation time, with its offset.

    Raises:
        MappingError: the study is not a planning scan, or has no image instance to reference.
        RejectionTitleRefused: the title is a rejection title (never built).
    """
    if not classification.is_planning:
        raise MappingError("not a planning scan: no label KOS is built")
    series = image_series(study)
    if not series:
        raise MappingError("the study has no CT, MR or PET instance for the KOS to reference")
    if str(getattr(copied, "StudyInstanceUID", "")) != study.study_instance_uid:
        raise MappingError("the copied attributes belong to another study")

    ds = Dataset()
    for element in copied:
        ds.add(element)
    ds.SOPClassUID = KOS_SOP_CLASS
    ds.SOPInstanceUID = plan.sop_instance_uid
    # Key Object Document Series (C.17.6.1)
    ds.Modality = KOS_MODALITY
    ds.SeriesInstanceUID = plan.series_uid
    ds.SeriesNumber = plan.series_number
    ds.SeriesDescription = vocabulary.series_description
    ds.ReferencedPerformedProcedureStepSequence = Sequence()
    # General Equipment (C.7.5.1)
    ds.Manufacturer = vocabulary.manufacturer
    # Key Object Document (C.17.6.2)
    ds.InstanceNumber = plan.instance_number
    local = _in_study_offset(now, str(getattr(copied, "TimezoneOffsetFromUTC", "") or ""))
    ds.ContentDate = local.strftime("%Y%m%d")
    ds.ContentTime = local.strftime("%H%M%S")
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([_evidence(study, series)])
    # SR Document Content (C.17.3) with TID 2010
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([_code(vocabulary.title)])
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource = TEMPLATE_RESOURCE
    template.TemplateIdentifier = TEMPLATE_ID
    ds.ContentTemplateSequence = Sequence([template])
    ds.ContentSequence = Sequence(
        [_text_item(label_text(classification, vocabulary), vocabulary.description_concept)]
        + [_image_item(i.sop_class_uid, i.sop_instance_uid) for s in series for i in s.instances]
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(KOS_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = UID(plan.sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta
    refuse_rejection_title(ds, vocabulary.allowed_titles)
    return ds


def _in_study_offset(now: datetime, offset: str) -> datetime:
    """``now`` expressed at the study's Timezone Offset From UTC (0008,0201) when it has one,
    so Content Date/Time read the same way as the copied Study Date/Time."""
    if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        minutes = int(offset[1:3]) * 60 + int(offset[3:5])
        sign = 1 if offset[0] == "+" else -1
        return now.astimezone(timezone(timedelta(minutes=sign * minutes)))
    return now


def encode(ds: Dataset) -> bytes:
    """The Part 10 file (preamble, File Meta, Explicit VR Little Endian)."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _code(code: DicomCode) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
    return item


def _text_item(text: str, concept: DicomCode) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    item.ConceptNameCodeSequence = Sequence([_code(concept)])
    item.TextValue = text
    return item


def _image_item(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "IMAGE"
    item.ReferencedSOPSequence = Sequence([_sop_reference(sop_class, sop_instance)])
    return item


def _sop_reference(sop_class: str, sop_instance: str) -> Dataset:
    ref = Dataset()
    ref.ReferencedSOPClassUID = sop_class
    ref.ReferencedSOPInstanceUID = sop_instance
    return ref


def _evidence(study: StudySummary, series: tuple[SeriesSummary, ...]) -> Dataset:
    item = Dataset()
    item.StudyInstanceUID = study.study_instance_uid
    referenced = []
    for s in series:
        entry = Dataset()
        entry.SeriesInstanceUID = s.series_instance_uid
        entry.ReferencedSOPSequence = Sequence(
            [_sop_reference(i.sop_class_uid, i.sop_instance_uid) for i in s.instances]
        )
        referenced.append(entry)
    item.ReferencedSeriesSequence = Sequence(referenced)
    return item


def referenced_instances(ds: Any) -> list[tuple[str, str]]:
    """(SOP Class UID, SOP Instance UID) of every IMAGE item of an encoded KOS, in order."""
    return [
        (
            str(item.ReferencedSOPSequence[0].ReferencedSOPClassUID),
            str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID),
        )
        for item in ds.ContentSequence
        if item.ValueType == "IMAGE"
    ]
