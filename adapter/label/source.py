"""Read the patient and study attributes a KOS copies, exactly, from one file of the study.

The study summaries carry decoded text (the character set already applied), which is right for
FHIR but not for a DICOM object that joins the study on the PACS: there the Patient and General
Study attributes must be the study's own, in its own Specific Character Set, or a PACS may file
the KOS under a "different" patient. So the KOS builder copies the elements from a source file
of the study, read again here with pixels left on disk.

Instances of one study that disagree on an identifying attribute already make the study
incomplete (``adapter.dicom.group``), and an incomplete study is held, not labelled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from adapter.label.copied import COPIED_KEYWORDS as COPIED_KEYWORDS
from adapter.label.copied import TYPE2_KEYWORDS as TYPE2_KEYWORDS
from adapter.label.copied import SourceUnavailable as SourceUnavailable


def read_study_attributes(path: str, study_uid: str) -> Dataset:
    """The copied attributes of the study, as a Dataset with the source's character set.

    Raises:
        SourceUnavailable: the file is gone, unreadable, or belongs to another study.
    """
    source = Path(path)
    if "::" in path or not source.is_file() or source.is_symlink():
        raise SourceUnavailable(
            "the study's files are not on disk (archive members are expanded into a temporary "
            "folder); ingest the extracted folder to label it"
        )
    try:
        ds: Any = dcmread(source, stop_before_pixels=True, specific_tags=list(COPIED_KEYWORDS))
    except (OSError, InvalidDicomError, ValueError) as exc:
        problem = f"cannot read a file of the study again ({type(exc).__name__})"
        raise SourceUnavailable(problem) from None
    if str(getattr(ds, "StudyInstanceUID", "")) != study_uid:
        raise SourceUnavailable("a file of the study changed since it was read")
    copied = Dataset()
    for keyword in COPIED_KEYWORDS:
        if keyword in ds:
            element = ds[keyword]
            copied.add_new(element.tag, element.VR, element.value)
    for keyword in TYPE2_KEYWORDS:
        if keyword not in copied:
            setattr(copied, keyword, None)
    return copied
