"""Encode a label KOS fast: pydicom for the small head, plain bytes for the references.

The second choice: ``adapter.label.raw_kos`` writes the whole document without pydicom and
defers to this module for what it cannot copy exactly (ISO 2022 character sets, unusual source
files). The reference bytes come from the helpers of ``raw_kos``.

A planning study's KOS references every image instance twice (an IMAGE content item and an
entry of the Current Requested Procedure Evidence Sequence): about a thousand instances make two
thousand pydicom Datasets, which cost more to build and encode than reading every header of the
study. Those references are a fixed structure of UIDs only, so they are written here directly,
in Explicit VR Little Endian with defined lengths, exactly as pydicom writes the Datasets of
:func:`adapter.label.kos.build_kos` (the reference builder: a differential test compares the
bytes). Everything else (the copied Patient and Study attributes in the study's character set,
the title, the TEXT item, the File Meta) is still built and encoded by pydicom via
:func:`adapter.label.kos.build_head`, which also refuses a rejection title.

A UID that is not valid (PS3.5 9.1: digits and dots, no leading zero, at most 64 characters)
sends the whole document to
the reference builder instead, so an odd value meets pydicom's own checks.
"""

from __future__ import annotations

import re
import struct
from datetime import datetime
from io import BytesIO
from typing import Any, Final

from pydicom.charset import default_encoding
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite, write_dataset

from adapter.classify import Classification
from adapter.dicom.models import StudySummary
from adapter.label.kos import build_head, build_kos, encode
from adapter.label.plan import KosPlan
from adapter.label.raw_kos import evidence_item, image_item, sequence_element
from adapter.label.titles import LabelVocabulary

# PS3.5 9.1: components of digits without a leading zero, dot-separated, at most 64 characters.
_PLAIN_UID: Final = re.compile(r"(?=.{1,64}$)(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_EVIDENCE_TAG: Final = 0x0040A375  # Current Requested Procedure Evidence Sequence
_CONTENT_TAG: Final = 0x0040A730  # Content Sequence


def kos_document(
    study: StudySummary,
    classification: Classification,
    copied: Dataset,
    vocabulary: LabelVocabulary,
    plan: KosPlan,
    now: datetime,
) -> bytes:
    """The Part 10 bytes :func:`adapter.label.kos.encode` gives for
    :func:`adapter.label.kos.build_kos` with the same arguments (same errors too)."""
    head, series = build_head(study, classification, copied, vocabulary, plan, now)
    uids = [study.study_instance_uid]
    for s in series:
        uids.append(s.series_instance_uid)
        uids.extend(u for i in s.instances for u in (i.sop_class_uid, i.sop_instance_uid))
    if not all(_PLAIN_UID.fullmatch(u) for u in uids):
        return encode(build_kos(study, classification, copied, vocabulary, plan, now))

    content = head[_CONTENT_TAG]
    del head[_CONTENT_TAG]
    later = Dataset()
    for element in list(head):
        if element.tag > _EVIDENCE_TAG:
            later.add(element)
            del head[element.tag]
    charset: Any = head.get("SpecificCharacterSet", default_encoding)

    buffer = BytesIO()
    dcmwrite(buffer, head, enforce_file_format=True)  # preamble, File Meta, tags < evidence
    buffer.write(sequence_element(_EVIDENCE_TAG, evidence_item(study.study_instance_uid, series)))
    between = Dataset()
    after = Dataset()
    for element in later:
        (between if element.tag < _CONTENT_TAG else after).add(element)
    buffer.write(_encoded(between, charset))
    text_only = Dataset()
    text_only.add(content)
    encoded = bytearray(_encoded(text_only, charset))  # the SQ holding the TEXT item
    images = b"".join(
        image_item(i.sop_class_uid, i.sop_instance_uid) for s in series for i in s.instances
    )
    (length,) = struct.unpack_from("<L", encoded, 8)
    struct.pack_into("<L", encoded, 8, length + len(images))
    buffer.write(encoded)
    buffer.write(images)
    buffer.write(_encoded(after, charset))
    return buffer.getvalue()


def _encoded(ds: Dataset, charset: Any) -> bytes:
    """Elements of ``ds`` as pydicom writes them inside a dataset whose character set is
    ``charset`` (Explicit VR Little Endian)."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds, parent_encoding=charset)
    return fp.getvalue()
