"""The KOS vocabulary from ``mappings/``, and the hard block on rejection titles.

A Key Object Selection document's title comes from DICOM CID 7010. That context group holds the
labelling title the adapter uses (DCM 128198 "For RT Treatment Planning") **and** the rejection
titles DCM 113001, 113037, 113038 and 113039. An archive such as dcm4chee-arc treats a KOS with
a rejection title as a rejection note and hides every image it references: a planning scan
would vanish from the PACS. So:

* the title is read from ``mappings/pacs-label.yaml`` and must be on the allow-list
  ``mappings/pacs-label-titles.yaml``; neither may hold a rejection title (checked at load);
* :func:`refuse_rejection_title` checks the encoded document again just before it is sent.

The rejection codes are the one list of codes kept in Python on purpose: they are never
emitted, they are what must never be emitted, and a guard that lived in an editable table
could be edited away.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from adapter.errors import AdapterError, MappingTableError
from adapter.tables import SYSTEM_ALIASES, Coding, Tables

# DICOM CID 7010 rejection titles (PS3.16): 113001 Rejected for Quality Reasons, 113037 Rejected
# for Patient Safety Reasons, 113038 Incorrect Modality Worklist Entry, 113039 Data Retention
# Policy Expired. Refused under any coding scheme: a look-alike code is never worth the risk.
REJECTION_TITLE_CODES: Final = frozenset({"113001", "113037", "113038", "113039"})

LABEL_TABLE: Final = "pacs-label"
TITLES_TABLE: Final = "pacs-label-titles"
_SCHEME_FOR_SYSTEM: Final = {uri: alias for alias, uri in SYSTEM_ALIASES.items()}
_MAX_LO: Final = 64


class RejectionTitleRefused(AdapterError):
    """A document whose title is a rejection title (or not on the allow-list) was about to be
    built or sent. Never sent: the archive would hide the images it references."""


@dataclass(frozen=True, slots=True)
class DicomCode:
    """A DICOM Code Sequence item: (0008,0100) value, (0008,0102) scheme, (0008,0104) meaning."""

    value: str
    scheme: str
    meaning: str

    @property
    def key(self) -> str:
        return f"{self.scheme}|{self.value}"


@dataclass(frozen=True, slots=True)
class LabelVocabulary:
    """Everything the KOS builder takes from the tables, validated."""

    title: DicomCode
    description_concept: DicomCode
    series_description: str
    text: str
    evidence_heading: str
    manufacturer: str
    allowed_titles: frozenset[str]  # "SCHEME|CODE"


def load_vocabulary(tables: Tables) -> LabelVocabulary:
    """Read the KOS vocabulary and check it.

    Raises:
        MappingTableError: a rejection title anywhere in the allow-list or as the title, a title
            that is not on the allow-list, a code system with no DICOM scheme designator, or a
            Series Description longer than 64 characters. Names the file and the row.
    """
    labels = tables.labels_table(LABEL_TABLE)
    titles = tables.rules_table(TITLES_TABLE)
    allowed = titles.get("allowed")
    if not allowed:
        raise MappingTableError(titles.file, "rules.allowed", "list at least one title")
    for index, entry in enumerate(allowed):
        scheme, sep, code = (part.strip() for part in entry.partition("|"))
        row = f"rules.allowed[{index}]"
        if not sep or not scheme or not code or entry != f"{scheme}|{code}":
            raise MappingTableError(
                titles.file, row, "write SCHEME|CODE without spaces, e.g. DCM|128198"
            )
        if code in REJECTION_TITLE_CODES:
            raise MappingTableError(
                titles.file, row, f"{entry} is a rejection title; archives hide what it references"
            )
    for key in ("title", "description_concept"):
        if key not in labels.codings:
            raise MappingTableError(labels.file, f"labels.{key}", "coding is missing")
    title = _dicom_code(labels.coding("title"), labels.file, "labels.title")
    if title.value in REJECTION_TITLE_CODES:
        raise MappingTableError(
            labels.file, "labels.title", "a rejection title; archives hide what it references"
        )
    if title.key not in allowed:
        raise MappingTableError(
            labels.file, "labels.title", f"{title.key} is not in {titles.file} rules.allowed"
        )
    texts = {}
    for key in ("series_description", "text", "evidence_heading", "manufacturer"):
        if key not in labels.texts:
            raise MappingTableError(labels.file, f"labels.{key}", "text is missing")
        texts[key] = labels.text(key).strip()
    if len(texts["series_description"]) > _MAX_LO:
        raise MappingTableError(
            labels.file, "labels.series_description", f"longer than {_MAX_LO} characters (LO)"
        )
    if len(texts["manufacturer"]) > _MAX_LO:
        raise MappingTableError(
            labels.file, "labels.manufacturer", f"longer than {_MAX_LO} characters (LO)"
        )
    return LabelVocabulary(
        title=title,
        description_concept=_dicom_code(
            labels.coding("description_concept"), labels.file, "labels.description_concept"
        ),
        allowed_titles=frozenset(allowed),
        **texts,
    )


def _dicom_code(coding: Coding, file: str, row: str) -> DicomCode:
    scheme = _SCHEME_FOR_SYSTEM.get(coding.system)
    if scheme is None:
        raise MappingTableError(file, row, "code system has no DICOM scheme (use DCM, SCT or LN)")
    if coding.verify:
        raise MappingTableError(file, row, "flagged verify: true; confirm it before labelling")
    return DicomCode(value=coding.code, scheme=scheme, meaning=coding.display)


def refuse_rejection_title(document: Any, allowed: Iterable[str]) -> None:
    """The check just before sending: the document's title must be one allowed, non-rejection
    title.

    ``document`` is a pydicom Dataset (the KOS as it will be sent).

    Raises:
        RejectionTitleRefused: naming the code, never patient data.
    """
    names = getattr(document, "ConceptNameCodeSequence", None)
    if not names or len(names) != 1:
        raise RejectionTitleRefused("the KOS has no single document title (0040,A043)")
    item = names[0]
    value = str(getattr(item, "CodeValue", "")).strip()
    scheme = str(getattr(item, "CodingSchemeDesignator", "")).strip()
    judge_title(value, scheme, allowed)


def judge_title(value: str, scheme: str, allowed: Iterable[str]) -> None:
    """The verdict on one document title (Code Value and Coding Scheme Designator, stripped),
    shared by :func:`refuse_rejection_title` and the raw-byte checks of ``adapter.label``.

    Raises:
        RejectionTitleRefused: a rejection title (under any scheme) or one not allowed.
    """
    if value in REJECTION_TITLE_CODES:
        raise RejectionTitleRefused(
            f"the KOS title {scheme}|{value} is a rejection title; refused, not sent"
        )
    if f"{scheme}|{value}" not in set(allowed):
        raise RejectionTitleRefused(f"the KOS title {scheme}|{value} is not on the allow-list")
