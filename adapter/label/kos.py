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

from datetime import datetime
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian

from adapter.classify import Classification
from adapter.dicom.models import SeriesSummary, StudySummary
from adapter.errors import MappingError
from adapter.label.plan import IMPLEMENTATION_CLASS_UID as IMPLEMENTATION_CLASS_UID
from adapter.label.plan import IMPLEMENTATION_VERSION as IMPLEMENTATION_VERSION
from adapter.label.plan import KOS_MODALITY as KOS_MODALITY
from adapter.label.plan import KOS_SOP_CLASS as KOS_SOP_CLASS
from adapter.label.plan import TEMPLATE_ID as TEMPLATE_ID
from adapter.label.plan import TEMPLATE_RESOURCE as TEMPLATE_RESOURCE
from adapter.label.plan import KosPlan as KosPlan
from adapter.label.plan import content_digest as content_digest
from adapter.label.plan import derived_uid as derived_uid
from adapter.label.plan import image_series as image_series
from adapter.label.plan import in_study_offset
from adapter.label.plan import label_text as label_text
from adapter.label.titles import DicomCode, LabelVocabulary, refuse_rejection_title


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
    ds, series = build_head(study, classification, copied, vocabulary, plan, now)
    ds.CurrentRequestedProcedureEvidenceSequence = Sequence([_evidence(study, series)])
    ds.ContentSequence.extend(
        _image_item(i.sop_class_uid, i.sop_instance_uid) for s in series for i in s.instances
    )
    return ds


def build_head(
    study: StudySummary,
    classification: Classification,
    copied: Dataset,
    vocabulary: LabelVocabulary,
    plan: KosPlan,
    now: datetime,
) -> tuple[Dataset, tuple[SeriesSummary, ...]]:
    """Everything of the KOS but its references: no Current Requested Procedure Evidence
    Sequence, and a Content Sequence holding only the TEXT item. The title is checked here.
    :func:`build_kos` adds the references as Datasets; ``adapter.label.fast_kos`` as bytes."""
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
    local = in_study_offset(now, str(getattr(copied, "TimezoneOffsetFromUTC", "") or ""))
    ds.ContentDate = local.strftime("%Y%m%d")
    ds.ContentTime = local.strftime("%H%M%S")
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
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(KOS_SOP_CLASS)
    meta.MediaStorageSOPInstanceUID = UID(plan.sop_instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION
    ds.file_meta = meta
    refuse_rejection_title(ds, vocabulary.allowed_titles)
    return ds, series


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
