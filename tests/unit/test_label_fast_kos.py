"""The fast KOS encoder (``adapter.label.fast_kos``) against the reference pydicom builder
(``adapter.label.kos.build_kos`` + ``encode``): the same bytes, for every golden case and for
generated studies with many series and instances in the Latin-1 and Japanese character sets."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from adapter.classify import Classification
from adapter.config import IngestSettings, LabelSettings, Settings
from adapter.dicom.models import InstanceSummary, StudySummary
from adapter.ingest.pipeline import StudyOutcome, run_ingest
from adapter.label.fast_kos import kos_document
from adapter.label.kos import build_kos, encode
from adapter.label.plan import KosPlan
from adapter.label.service import build_for, document_for, labelled
from adapter.label.source import read_study_attributes
from adapter.label.titles import DicomCode, RejectionTitleRefused, load_vocabulary
from adapter.tables import load_tables
from tests.support import FIXTURES

DICOM = FIXTURES / "dicom"
SETTINGS = Settings(ingest=IngestSettings(workers=1))
TABLES = load_tables(SETTINGS.mappings_dir)
VOCABULARY = load_vocabulary(TABLES)
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
GOLDEN_CASES = ["planning-ct", "planning-mr", "pet-ct", "charset-latin1", "charset-utf8",
                "charset-jp", "tz-none-summer", "tz-none-winter"]  # fmt: skip
CT_IMAGE, MR_IMAGE, PET_IMAGE = (
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.128",
)


def planning_outcome(case: str) -> StudyOutcome:
    result = run_ingest([DICOM / case], SETTINGS, TABLES)
    (outcome,) = [s for s in result.studies if labelled(s)]
    return outcome


def reference_and_fast(
    outcome: StudyOutcome, settings: Settings = SETTINGS, number: int = 1
) -> tuple[bytes, bytes]:
    ds, digest = build_for(outcome, settings, VOCABULARY, NOW, instance_number=number)
    fast, plan = document_for(outcome, settings, VOCABULARY, NOW, instance_number=number)
    assert plan.digest == digest
    assert plan.sop_instance_uid == str(ds.SOPInstanceUID)
    return encode(ds), fast


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_every_golden_case_gets_the_reference_bytes(case: str) -> None:
    reference, fast = reference_and_fast(planning_outcome(case))
    assert fast == reference


def generated_study(study: StudySummary, seed: int, series_count: int) -> StudySummary:
    """``study`` with generated image series (and one RT series the KOS must leave out): UIDs
    of odd and even length up to 64 characters, up to 400 instances a series."""
    rng = random.Random(seed)

    def uid() -> str:
        tail = "".join(rng.choices("0123456789", k=rng.randint(0, 58)))
        return f"2.25.{rng.randint(1, 9)}{tail}"

    series = []
    for number in range(1, series_count + 1):
        modality, sop_class = rng.choice([("CT", CT_IMAGE), ("MR", MR_IMAGE), ("PT", PET_IMAGE)])
        instances = tuple(
            InstanceSummary(uid(), sop_class, i) for i in range(1, rng.randint(1, 400) + 1)
        )
        template = study.series[0]
        fields = {"series_number": number, "modality": modality, "instances": instances}
        series.append(replace(template, series_instance_uid=uid(), **fields))
    structure_set = InstanceSummary(uid(), "1.2.840.10008.5.1.4.1.1.481.3", 1)
    rt_fields = {"modality": "RTSTRUCT", "instances": (structure_set,)}
    rt = replace(study.series[0], series_instance_uid=uid(), **rt_fields)
    series.insert(rng.randrange(len(series) + 1), rt)
    return replace(study, series=tuple(series))


@pytest.mark.parametrize("case", ["charset-latin1", "charset-jp", "charset-utf8", "planning-ct"])
@pytest.mark.parametrize("seed", [1, 2])
def test_generated_studies_with_many_series_get_the_reference_bytes(case: str, seed: int) -> None:
    outcome = planning_outcome(case)
    assert outcome.study is not None
    study = generated_study(outcome.study, seed, series_count=6 + seed * 3)
    assert sum(len(s.instances) for s in study.series) > 600
    big = replace(outcome, study=study)
    settings = replace(SETTINGS, label=LabelSettings(series_number=7000 + seed))
    reference, fast = reference_and_fast(big, settings, number=seed + 1)
    assert fast == reference


def test_a_study_in_another_time_zone_gets_the_reference_bytes() -> None:
    outcome = planning_outcome("charset-jp")
    assert outcome.study is not None
    copied = read_study_attributes(outcome.study.source_paths[0], outcome.study_uid)
    plan = KosPlan(outcome.study_uid, "digest", 3, 9901)
    later = NOW + timedelta(hours=15, minutes=7, seconds=9)
    args = (outcome.study, outcome.classification, copied, VOCABULARY, plan, later)
    assert kos_document(*args) == encode(build_kos(*args))


def test_an_invalid_uid_goes_to_the_reference_builder_and_its_checks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A leading-zero UID component (invalid, PS3.5 9.1): pydicom's own check sees it."""
    outcome = planning_outcome("planning-ct")
    assert outcome.study is not None
    first = outcome.study.series[0]
    odd = replace(first.instances[0], sop_instance_uid="1.2.03")
    study = replace(outcome.study, series=(replace(first, instances=(odd,)),))
    copied = read_study_attributes(outcome.study.source_paths[0], outcome.study_uid)
    plan = KosPlan(outcome.study_uid, "d", 1, 9901)
    with pytest.warns(UserWarning, match="Invalid value for VR UI"):
        kos_document(study, outcome.classification, copied, VOCABULARY, plan, NOW)


def test_the_fast_encoder_refuses_a_rejection_title() -> None:
    outcome = planning_outcome("planning-ct")
    assert outcome.study is not None
    forced = replace(VOCABULARY, title=DicomCode("113001", "DCM", "Rejected for Quality Reasons"))
    copied = read_study_attributes(outcome.study.source_paths[0], outcome.study_uid)
    plan = KosPlan(outcome.study_uid, "d", 1, 9901)
    with pytest.raises(RejectionTitleRefused):
        kos_document(outcome.study, outcome.classification, copied, forced, plan, NOW)


def test_a_diagnostic_classification_is_refused_like_the_reference() -> None:
    outcome = planning_outcome("planning-ct")
    assert outcome.study is not None
    copied = read_study_attributes(outcome.study.source_paths[0], outcome.study_uid)
    plan = KosPlan(outcome.study_uid, "d", 1, 9901)
    diagnostic = replace(outcome.classification, is_planning=False)
    assert isinstance(diagnostic, Classification)
    with pytest.raises(Exception, match="not a planning scan"):
        kos_document(outcome.study, diagnostic, copied, VOCABULARY, plan, NOW)
