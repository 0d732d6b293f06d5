"""Planning-scan classification: conclusive RT evidence, supporting rules, counter-evidence."""

from __future__ import annotations

from dataclasses import replace

from adapter.classify import RTIndex, Strength, classify
from adapter.config import DEFAULT_MAPPINGS_DIR
from adapter.dicom.models import (
    CodedValue,
    Completeness,
    InstanceSummary,
    PatientSummary,
    PersonName,
    RTReferences,
    SeriesSummary,
    StudySummary,
)
from adapter.tables import load_tables

RULES = load_tables(DEFAULT_MAPPINGS_DIR).rules_table("classification-rules")


def series(
    uid: str,
    modality: str,
    *,
    number: int = 1,
    description: str = "",
    station: str = "",
    frame: str = "",
    rt: RTReferences | None = None,
    contrast: str = "",
) -> SeriesSummary:
    return SeriesSummary(
        series_instance_uid=uid,
        series_number=number,
        modality=modality,
        description=description,
        started=None,
        body_part_examined="",
        laterality="",
        frame_of_reference_uid=frame,
        protocol_name="",
        station_name=station,
        contrast_agent=contrast,
        instances=(InstanceSummary(uid + ".1", "1.2.840.10008.5.1.4.1.1.2", 1),),
        rt=rt,
    )


def study(
    uid: str,
    *items: SeriesSummary,
    description: str = "",
    codes: tuple[CodedValue, ...] = (),
    ae: tuple[str, ...] = (),
) -> StudySummary:
    return StudySummary(
        study_instance_uid=uid,
        study_id="",
        accession_number="",
        accession_issuer="",
        description=description,
        started=None,
        referring_physician=PersonName(),
        procedure_codes=codes,
        requested_procedure_codes=(),
        requested_procedure_id="",
        reason_for_request="",
        source_ae_titles=ae,
        patient=PatientSummary("P1"),
        series=items,
        completeness=Completeness(True),
        source_paths=(),
    )


def test_rtstruct_chain_is_conclusive_and_names_the_series() -> None:
    ct = series("1.1", "CT", number=2, frame="9.9")
    rs = series("1.2", "RTSTRUCT", number=3, rt=RTReferences(("9.9",), ("1.1",), ("1.1.1",)))
    s = study("1", ct, rs)
    result = classify(s, RTIndex.from_studies([s]), RULES)
    assert result.is_planning
    assert result.planning_series_uids == ("1.1",)
    assert result.evidence[0].strength is Strength.CONCLUSIVE
    assert "series 2 (CT)" in result.evidence[0].text


def test_shared_frame_of_reference_with_rtplan_in_another_study() -> None:
    mr = series("2.1", "MR", frame="8.8")
    plan_study = study("3", series("3.1", "RTPLAN", rt=RTReferences(("8.8",))))
    s = study("2", mr)
    result = classify(s, RTIndex.from_studies([s, plan_study]), RULES)
    assert result.is_planning
    assert "RT Plan" in result.summary


def test_diagnostic_study_is_not_planning() -> None:
    ct = series("4.1", "CT", description="CT CHEST WITH CONTRAST", station="CT-DIAG2", frame="7.7")
    s = study("4", ct, description="CT CHEST WITH CONTRAST")
    result = classify(s, RTIndex.from_studies([s]), RULES)
    assert not result.is_planning
    assert result.planning_series_uids == ()
    assert result.summary == "no planning evidence"


def test_supporting_rules_need_min_families() -> None:
    ct = series("5.1", "CT", station="CTSIM1")
    s = study("5", ct)
    assert classify(s, RTIndex.from_studies([s]), RULES, min_supporting=1).is_planning
    assert not classify(s, RTIndex.from_studies([s]), RULES, min_supporting=2).is_planning
    both = replace(s, description="RT PLANNING CT")
    assert classify(both, RTIndex.from_studies([both]), RULES, min_supporting=2).is_planning


def test_procedure_code_rule() -> None:
    s = study("6", series("6.1", "CT"), codes=(CodedValue("30582-1", "LN", "CT guidance"),))
    result = classify(s, RTIndex.from_studies([s]), RULES)
    assert result.is_planning
    assert "LN|30582-1" in result.summary


def test_diagnostic_wording_blocks_weak_evidence_but_not_rt_references() -> None:
    weak = study("7", series("7.1", "CT", station="CTSIM1"), description="DIAGNOSTIC CT STAGING")
    assert not classify(weak, RTIndex.from_studies([weak]), RULES).is_planning
    ct = series("8.1", "CT", frame="6.6")
    rs = series("8.2", "RTSTRUCT", rt=RTReferences(("6.6",), ("8.1",)))
    strong = study("8", ct, rs, description="DIAGNOSTIC CT STAGING")
    assert classify(strong, RTIndex.from_studies([strong]), RULES).is_planning


def test_keywords_match_whole_words_only() -> None:
    s = study("9", series("9.1", "CT"), description="HEARTPORT CARDIAC")  # contains "RTP"
    assert not classify(s, RTIndex.from_studies([s]), RULES).is_planning


def test_contrast_is_taken_from_planning_series() -> None:
    ct = series("10.1", "CT", frame="5.5", contrast="OMNIPAQUE")
    rs = series("10.2", "RTSTRUCT", rt=RTReferences(("5.5",), ("10.1",)))
    s = study("10", ct, rs)
    assert classify(s, RTIndex.from_studies([s]), RULES).contrast
