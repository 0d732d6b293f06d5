"""Assemble an :class:`InstanceHeader` from typed getters; shared by both reader paths.

The two header paths (``adapter.dicom.fast``, the raw-byte scanner, and
``adapter.dicom.pydicom_path``) differ only in how they find and decode an element. Which
attributes are read, in which order, and what is required or always strict is decided
here once, so the paths cannot drift apart. This module does not import pydicom at load
time: :func:`tag_text` loads pydicom's data dictionary only when a reason is worded.
"""

from __future__ import annotations

from datetime import tzinfo
from functools import lru_cache
from typing import Any, Final, Protocol

from adapter.dicom.limits import Problem
from adapter.dicom.models import (
    CodedValue,
    InstanceHeader,
    PatientSummary,
    PersonName,
    RTReferences,
)
from adapter.dicom.times import combine, parse_date

__all__ = [
    "PIXEL_DATA",
    "HeaderValues",
    "check_pixel_length",
    "instance_header",
    "tag_text",
]

PIXEL_DATA: Final = 0x7FE00010


class HeaderValues(Protocol):
    """Typed getters over one dataset; ``ds`` (an item) defaults to the top level.

    Invalid required values raise :class:`Problem` (the pydicom path) or defer the file to
    the pydicom path (the fast path); the wording of every reason is the pydicom path's.
    """

    def text(self, tag: int, ds: Any = None) -> str: ...

    def person(self, tag: int) -> PersonName: ...

    def uid(self, tag: int, ds: Any = None, *, required: bool = False) -> str: ...

    def integer(self, tag: int, ds: Any = None, *, always_strict: bool = False) -> int | None: ...

    def items(self, tag: int, ds: Any = None) -> list[Any]: ...


    def source_ae_title(self) -> str: ...


@lru_cache(maxsize=1024)
def tag_text(tag: int) -> str:
    """``Keyword (gggg,eeee)`` for reasons and logs; never includes a value."""
    from pydicom.datadict import keyword_for_tag  # only when a reason is worded

    keyword = keyword_for_tag(tag) or "private/unknown"
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def check_pixel_length(values: HeaderValues, length: int) -> None:
    """Native pixel data must hold every frame the geometry attributes promise."""
    rows = values.integer(0x00280010, always_strict=True)
    columns = values.integer(0x00280011, always_strict=True)
    bits = values.integer(0x00280100, always_strict=True)
    samples = values.integer(0x00280002, always_strict=True) or 1
    frames = values.integer(0x00280008, always_strict=True) or 1
    for tag, value in ((0x00280010, rows), (0x00280011, columns), (0x00280100, bits)):
        if value is None:
            raise Problem(f"pixel data present but {tag_text(tag)} is missing")
    assert rows is not None and columns is not None and bits is not None
    if values.text(0x00280004).upper() == "YBR_FULL_422":  # 2 chroma per 2 pixels
        samples = 2
    expected = (rows * columns * samples * frames * bits + 7) // 8
    if length < expected:
        raise Problem(
            f"truncated: PixelData (7FE0,0010) holds {length} bytes, the image "
            f"geometry needs {expected}"
        )


_RT_MODALITIES: Final = frozenset({"RTSTRUCT", "RTPLAN", "RTDOSE", "RTIMAGE", "RTRECORD"})
_RT_SOP_PREFIX: Final = "1.2.840.10008.5.1.4.1.1.481."


def _rt_references(v: HeaderValues, own_for: str) -> RTReferences:
    """Follow the RTSTRUCT chain (3006,0010)>(3006,0012)>(3006,0014)>(3006,0016), the ROI
    frames (3006,0020)>(3006,0024) and RTPLAN's (300C,0060). Referenced UIDs are validated
    like our own: they are later used as keys."""
    frames: dict[str, None] = {own_for: None} if own_for else {}
    series: dict[str, None] = {}
    instances: dict[str, None] = {}
    for ref_for in v.items(0x30060010):
        frames[v.uid(0x00200052, ref_for)] = None
        for study in v.items(0x30060012, ref_for):
            for ser in v.items(0x30060014, study):
                series[v.uid(0x0020000E, ser)] = None
                for image in v.items(0x30060016, ser):
                    instances[v.uid(0x00081155, image)] = None
    for roi in v.items(0x30060020):
        frames[v.uid(0x30060024, roi)] = None
    structure_sets = {v.uid(0x00081155, item): None for item in v.items(0x300C0060)}
    return RTReferences(
        frame_of_reference_uids=tuple(u for u in frames if u),
        series_uids=tuple(u for u in series if u),
        sop_instance_uids=tuple(u for u in instances if u),
        referenced_structure_set_uids=tuple(u for u in structure_sets if u),
    )


def codes(v: HeaderValues, tag: int, ds: Any = None) -> tuple[CodedValue, ...]:
    """Items of a code sequence, read the same way by both reader paths; items with neither
    value nor meaning are skipped."""
    out = []
    for item in v.items(tag, ds):
        code = v.text(0x00080100, item) or v.text(0x00080119, item) or v.text(0x00080120, item)
        scheme, meaning = v.text(0x00080102, item), v.text(0x00080104, item)
        if code or meaning:
            out.append(CodedValue(code=code, scheme=scheme, meaning=meaning))
    return tuple(out)


def instance_header(v: HeaderValues, name: str, default_tz: tzinfo) -> InstanceHeader:
    """Pick the attributes of standards.md §6a; required ones first so they fail fast."""
    study_uid = v.uid(0x0020000D, required=True)
    series_uid = v.uid(0x0020000E, required=True)
    sop_uid = v.uid(0x00080018, required=True)
    sop_class = v.uid(0x00080016, required=True)
    modality = v.text(0x00080060).upper()
    if not modality:
        raise Problem(f"missing required attribute {tag_text(0x00080060)}")
    frame_of_reference = v.uid(0x00200052)
    offset = v.text(0x00080201)
    issuers = v.items(0x00080051)
    accession_issuer = ""
    if issuers:
        accession_issuer = v.text(0x00400031, issuers[0]) or v.text(0x00400032, issuers[0])
    requests = v.items(0x00400275)
    requested_codes = list(codes(v, 0x00321064))
    requested_id = v.text(0x00401001)
    reason = v.text(0x00401002)
    scheduled_step_id = ""
    for request in requests:
        requested_codes.extend(codes(v, 0x00321064, request))
        requested_id = requested_id or v.text(0x00401001, request)
        reason = reason or v.text(0x00401002, request)
        scheduled_step_id = scheduled_step_id or v.text(0x00400009, request)
    is_rt = modality in _RT_MODALITIES or sop_class.startswith(_RT_SOP_PREFIX)
    return InstanceHeader(
        path=name,
        sop_instance_uid=sop_uid,
        sop_class_uid=sop_class,
        instance_number=v.integer(0x00200013),
        series_instance_uid=series_uid,
        series_number=v.integer(0x00200011),
        modality=modality,
        series_description=v.text(0x0008103E),
        series_started=combine(v.text(0x00080021), v.text(0x00080031), offset, default_tz),
        body_part_examined=v.text(0x00180015),
        laterality=v.text(0x00200060) or v.text(0x00200062),
        frame_of_reference_uid=frame_of_reference,
        protocol_name=v.text(0x00181030),
        station_name=v.text(0x00081010),
        contrast_agent=v.text(0x00180010),
        study_instance_uid=study_uid,
        study_id=v.text(0x00200010),
        accession_number=v.text(0x00080050),
        accession_issuer=accession_issuer,
        study_description=v.text(0x00081030),
        study_started=combine(v.text(0x00080020), v.text(0x00080030), offset, default_tz),
        referring_physician=v.person(0x00080090),
        procedure_codes=codes(v, 0x00081032),
        requested_procedure_codes=tuple(dict.fromkeys(requested_codes)),
        requested_procedure_id=requested_id,
        reason_for_request=reason,
        number_of_study_related_instances=v.integer(0x00201208),
        source_ae_title=v.source_ae_title(),
        patient=PatientSummary(
            patient_id=v.text(0x00100020),
            issuer=v.text(0x00100021),
            name=v.person(0x00100010),
            birth_date=parse_date(v.text(0x00100030)),
            sex=v.text(0x00100040).upper(),
        ),
        rt=_rt_references(v, frame_of_reference) if is_rt else None,
        scheduled_step_id=scheduled_step_id,
    )
