"""group_studies: ordering, de-duplication and completeness problems (no PHI)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from adapter.dicom.group import group_studies
from adapter.dicom.models import (
    InstanceHeader,
    PatientSummary,
    PersonName,
    RTReferences,
)

STUDY = "1.2.3"


def inst(
    sop: str,
    number: int | None,
    *,
    series: str = "1.2.3.1",
    modality: str = "CT",
    series_number: int | None = 1,
    study: str = STUDY,
    **kw: object,
) -> InstanceHeader:
    base = InstanceHeader(
        path=f"/in/{sop}.dcm",
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        instance_number=number,
        series_instance_uid=series,
        series_number=series_number,
        modality=modality,
        series_description="",
        series_started=None,
        body_part_examined="",
        laterality="",
        frame_of_reference_uid="1.2.3.77",
        protocol_name="",
        station_name="",
        contrast_agent="",
        study_instance_uid=study,
        study_id="S1",
        accession_number="CANARYACC",
        accession_issuer="",
        study_description="",
        study_started=datetime(2024, 1, 1, tzinfo=UTC),
        referring_physician=PersonName(),
        procedure_codes=(),
        requested_procedure_codes=(),
        requested_procedure_id="",
        reason_for_request="",
        number_of_study_related_instances=None,
        source_ae_title="CT1",
        patient=PatientSummary("CANARY123", name=PersonName("ZZCANARY", ("PHI",))),
        rt=None,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def test_sorting_and_complete_study() -> None:
    headers = [
        inst("1.2.3.1.3", 3),
        inst("1.2.3.1.1", 1),
        inst("1.2.3.1.2", 2),
        inst("1.2.3.2.1", 1, series="1.2.3.2", series_number=None),
        inst("1.2.3.0.1", None, series="1.2.3.0", series_number=2),
    ]
    other = inst("1.2.0.1", 1, study="1.2.0", series="1.2.0.1")
    studies = group_studies([*headers, other])
    assert [s.study_instance_uid for s in studies] == ["1.2.0", STUDY]
    study = studies[1]
    assert [s.series_instance_uid for s in study.series] == ["1.2.3.1", "1.2.3.0", "1.2.3.2"]
    assert [i.sop_instance_uid for i in study.series[0].instances] == [
        "1.2.3.1.1",
        "1.2.3.1.2",
        "1.2.3.1.3",
    ]
    assert study.completeness.complete and study.completeness.problems == ()
    assert study.number_of_instances == 5
    assert study.source_ae_titles == ("CT1",)
    assert group_studies(reversed([*headers, other])) == studies


def test_duplicates_are_deduplicated_and_reported() -> None:
    a = inst("1.2.3.1.1", 1)
    study = group_studies([a, replace(a, path="/in/copy.dcm")])[0]
    assert study.number_of_instances == 1
    assert study.completeness.problems == ("1 duplicate SOP instance(s) ignored",)


def test_declared_instance_count() -> None:
    headers = [inst(f"1.2.3.1.{i}", i, number_of_study_related_instances=4) for i in (1, 2, 3)]
    problems = group_studies(headers)[0].completeness.problems
    assert problems == ("study declares 4 instances (0020,1208), 3 received",)
    full = [*headers, inst("1.2.3.1.4", 4, number_of_study_related_instances=4)]
    assert group_studies(full)[0].completeness.complete


def test_instance_number_gaps_only_for_image_series() -> None:
    ct = group_studies([inst("1.2.3.1.1", 1), inst("1.2.3.1.4", 4)])[0]
    assert ct.completeness.problems == ("CT series 1 has 2 gap(s) in InstanceNumber",)
    assert not ct.completeness.complete
    rt = group_studies(
        [inst("1.2.3.1.1", 1, modality="RTDOSE"), inst("1.2.3.1.4", 4, modality="RTDOSE")]
    )[0]
    assert rt.completeness.complete


def test_rtstruct_missing_references_and_union() -> None:
    refs = RTReferences(("1.2.3.77",), ("1.2.3.1",), ("1.2.3.1.1", "1.2.3.1.2", "1.2.3.1.9"))
    more = RTReferences(("1.2.3.78",), ("1.2.3.1",), ("1.2.3.1.8",))
    rs = [
        inst("1.2.3.9.1", 1, series="1.2.3.9", modality="RTSTRUCT", rt=refs),
        inst("1.2.3.9.2", 2, series="1.2.3.9", modality="RTSTRUCT", rt=more),
    ]
    study = group_studies([inst("1.2.3.1.1", 1), inst("1.2.3.1.2", 2), *rs])[0]
    assert study.completeness.problems == ("RTSTRUCT references 2 instances not present",)
    rt = study.series[1].rt
    assert rt is not None
    assert rt.frame_of_reference_uids == ("1.2.3.77", "1.2.3.78")
    assert rt.sop_instance_uids == ("1.2.3.1.1", "1.2.3.1.2", "1.2.3.1.9", "1.2.3.1.8")
    assert study.series[0].rt is None


def test_disagreement_named_without_values() -> None:
    other = PatientSummary("OTHER999", name=PersonName("ZZCANARY", ("PHI",)))
    study = group_studies([inst("1.2.3.1.1", 1), inst("1.2.3.1.2", 2, patient=other)])[0]
    assert study.completeness.problems == ("instances disagree on PatientID",)
    for problem in study.completeness.problems:
        for canary in ("CANARY", "OTHER999", "PHI"):
            assert canary not in problem
