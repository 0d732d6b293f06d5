"""Instance headers -> study summaries, with completeness problems a reviewer must see.

Study- and series-level attributes are taken from the first instance (in sorted order);
instances that disagree on a study-level attribute produce a problem naming the attribute,
never the values (they are patient data). Completeness problems are plain strings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Final

from adapter.dicom.models import (
    Completeness,
    DuplicateInstance,
    InstanceHeader,
    InstanceSummary,
    RTReferences,
    SeriesSummary,
    StudySummary,
)

__all__ = ["group_studies"]

_IMAGE_MODALITIES: Final = frozenset({"CT", "MR", "PT"})
# Attributes every instance of one study should share; a disagreement is a problem.
_STUDY_ATTRIBUTES: Final[tuple[tuple[str, Callable[[InstanceHeader], object]], ...]] = (
    ("PatientID", lambda h: h.patient.patient_id),
    ("IssuerOfPatientID", lambda h: h.patient.issuer),
    ("PatientName", lambda h: h.patient.name),
    ("PatientBirthDate", lambda h: h.patient.birth_date),
    ("AccessionNumber", lambda h: h.accession_number),
    ("StudyID", lambda h: h.study_id),
)


def _instance_key(h: InstanceHeader) -> tuple[bool, int, str]:
    return (h.instance_number is None, h.instance_number or 0, h.sop_instance_uid)


def _series_key(s: SeriesSummary) -> tuple[bool, int, str]:
    return (s.series_number is None, s.series_number or 0, s.series_instance_uid)


def group_studies(headers: Iterable[InstanceHeader]) -> list[StudySummary]:
    """Group headers by study and series, sorted deterministically.

    Studies are sorted by Study Instance UID, series by (Series Number, UID) and instances
    by (Instance Number, UID), unnumbered last. A SOP Instance UID seen twice in a study
    is kept once (the first by path) and reported.
    """
    by_study: dict[str, list[InstanceHeader]] = {}
    for header in sorted(headers, key=lambda h: h.path):
        by_study.setdefault(header.study_instance_uid, []).append(header)
    return [_study(uid, by_study[uid]) for uid in sorted(by_study)]


def _study(study_uid: str, headers: list[InstanceHeader]) -> StudySummary:
    problems: list[str] = []
    unique: dict[str, InstanceHeader] = {}
    dropped: list[DuplicateInstance] = []
    for header in headers:
        kept = unique.get(header.sop_instance_uid)
        if kept is not None:
            same = _content(kept) == _content(header)
            dropped.append(DuplicateInstance(header.path, header.sop_instance_uid, same))
        else:
            unique[header.sop_instance_uid] = header
    if dropped:
        problems.append(f"{len(dropped)} duplicate SOP instance(s) ignored")
    instances = sorted(unique.values(), key=_instance_key)
    first = instances[0]
    for keyword, getter in _STUDY_ATTRIBUTES:
        if len({getter(h) for h in instances}) > 1:
            problems.append(f"instances disagree on {keyword}")

    by_series: dict[str, list[InstanceHeader]] = {}
    for header in instances:
        by_series.setdefault(header.series_instance_uid, []).append(header)
    series = sorted((_series(members, problems) for members in by_series.values()), key=_series_key)

    declared = {h.number_of_study_related_instances for h in instances} - {None}
    expected = None
    if len(declared) == 1:
        (expected,) = declared
        if expected is not None and expected != len(instances):
            problems.append(
                f"study declares {expected} instances (0020,1208), {len(instances)} received"
            )
    elif len(declared) > 1:
        problems.append("instances disagree on NumberOfStudyRelatedInstances")

    present = set(unique)
    for s in series:
        if s.rt is None:
            continue
        missing = [uid for uid in s.rt.sop_instance_uids if uid not in present]
        if missing:
            problems.append(f"{s.modality} references {len(missing)} instances not present")
        absent_series = [u for u in s.rt.series_uids if u not in by_series]
        if absent_series:
            problems.append(f"{s.modality} references {len(absent_series)} series not present")

    return StudySummary(
        study_instance_uid=study_uid,
        study_id=first.study_id,
        accession_number=first.accession_number,
        accession_issuer=first.accession_issuer,
        description=first.study_description,
        started=first.study_started,
        referring_physician=first.referring_physician,
        procedure_codes=first.procedure_codes,
        requested_procedure_codes=first.requested_procedure_codes,
        requested_procedure_id=first.requested_procedure_id,
        reason_for_request=first.reason_for_request,
        source_ae_titles=tuple(sorted({h.source_ae_title for h in instances} - {""})),
        patient=first.patient,
        series=tuple(series),
        completeness=Completeness(not problems, tuple(problems), declared=expected),
        source_paths=tuple(sorted(h.path for h in instances)),
        scheduled_step_id=first.scheduled_step_id,
        patients=tuple(dict.fromkeys(h.patient for h in instances)),
        duplicates=tuple(dropped),
    )


def _content(header: InstanceHeader) -> InstanceHeader:
    """What a repeated instance must match: everything but where the file came from."""
    return replace(header, path="", source_ae_title="")


def _series(members: list[InstanceHeader], problems: list[str]) -> SeriesSummary:
    members = sorted(members, key=_instance_key)
    first = members[0]
    if first.modality in _IMAGE_MODALITIES:
        numbers = sorted({h.instance_number for h in members if h.instance_number is not None})
        if numbers:
            gaps = (numbers[-1] - numbers[0] + 1) - len(numbers)
            if gaps:
                problems.append(
                    f"{first.modality} series {first.series_number} has "
                    f"{gaps} gap(s) in InstanceNumber"
                )
    return SeriesSummary(
        series_instance_uid=first.series_instance_uid,
        series_number=first.series_number,
        modality=first.modality,
        description=first.series_description,
        started=first.series_started,
        body_part_examined=first.body_part_examined,
        laterality=first.laterality,
        frame_of_reference_uid=first.frame_of_reference_uid,
        protocol_name=first.protocol_name,
        station_name=first.station_name,
        contrast_agent=first.contrast_agent,
        instances=tuple(
            InstanceSummary(h.sop_instance_uid, h.sop_class_uid, h.instance_number) for h in members
        ),
        rt=_union([h.rt for h in members if h.rt is not None]),
    )


def _union(refs: list[RTReferences]) -> RTReferences | None:
    if not refs:
        return None

    def merged(field: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(uid for r in refs for uid in getattr(r, field)))

    return RTReferences(
        frame_of_reference_uids=merged("frame_of_reference_uids"),
        series_uids=merged("series_uids"),
        sop_instance_uids=merged("sop_instance_uids"),
        referenced_structure_set_uids=merged("referenced_structure_set_uids"),
    )
