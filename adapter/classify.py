"""Decide whether a study is a radiotherapy planning scan, and say why.

Evidence comes in two strengths:

*conclusive*
    An RT Structure Set whose referenced-frame-of-reference chain
    (3006,0010 > 0012 > 0014 > 0016) points at an image series, or an image series that shares
    its Frame of Reference UID with an RTSTRUCT or RTPLAN. RT objects are looked up across every
    study read in the same run, because treatment-planning systems often export them under a
    study of their own.
*supporting*
    Values from ``mappings/classification-rules.yaml``: planning procedure codes, description,
    protocol, station name and sending AE title. Each family counts once.

A study is a planning scan when it has conclusive evidence, or at least
``min_supporting_evidence`` supporting families and no diagnostic wording. Evidence sentences
name series numbers, modalities and rule values, never patient data, because they are written
into the ImagingStudy and shown on the CLI.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from adapter.dicom.models import SeriesSummary, StudySummary
from adapter.tables import RulesTable

IMAGE_MODALITIES = frozenset({"CT", "MR", "PT"})
RT_REFERENCING_MODALITIES = frozenset({"RTSTRUCT", "RTPLAN"})


class Strength(StrEnum):
    CONCLUSIVE = "conclusive"
    SUPPORTING = "supporting"
    COUNTER = "counter"


@dataclass(frozen=True, slots=True)
class Evidence:
    rule: str  # e.g. "rtstruct-reference", "description"
    strength: Strength
    text: str
    series_uid: str = ""  # the series the evidence is about, if any


@dataclass(frozen=True, slots=True)
class Classification:
    is_planning: bool
    evidence: tuple[Evidence, ...]
    planning_series_uids: tuple[str, ...]
    """Image series the planning evidence is about (all image series for supporting-only)."""
    contrast: bool
    """A contrast agent is recorded on a planning image series."""

    @property
    def summary(self) -> str:
        kept = [e.text for e in self.evidence if e.strength is not Strength.COUNTER]
        return "; ".join(kept) if kept else "no planning evidence"


@dataclass(frozen=True, slots=True)
class RTIndex:
    """What the RT objects of one run point at, keyed for quick lookup."""

    referenced_series: frozenset[str]
    structure_set_for: frozenset[str]
    plan_for: frozenset[str]

    @classmethod
    def from_studies(cls, studies: Iterable[StudySummary]) -> RTIndex:
        series: set[str] = set()
        struct_for: set[str] = set()
        plan_for: set[str] = set()
        for study in studies:
            for s in study.series:
                if s.rt is None:
                    continue
                if s.modality == "RTSTRUCT":
                    series.update(s.rt.series_uids)
                    struct_for.update(s.rt.frame_of_reference_uids)
                elif s.modality == "RTPLAN":
                    plan_for.update(s.rt.frame_of_reference_uids)
        return cls(frozenset(series), frozenset(struct_for), frozenset(plan_for))


def classify(
    study: StudySummary, rt: RTIndex, rules: RulesTable, *, min_supporting: int = 1
) -> Classification:
    """Collect planning evidence for ``study`` and decide.

    Args:
        study: the grouped study.
        rt: RT references of every study read in the same run.
        rules: the ``classification-rules`` table.
        min_supporting: supporting families needed when nothing conclusive is found.
    """
    images = [s for s in study.series if s.modality in IMAGE_MODALITIES]
    evidence = [*_conclusive(images, rt)]
    evidence += _supporting(study, rules)
    conclusive_series = tuple(
        dict.fromkeys(e.series_uid for e in evidence if e.strength is Strength.CONCLUSIVE)
    )
    families = {e.rule for e in evidence if e.strength is Strength.SUPPORTING}
    counter = any(e.strength is Strength.COUNTER for e in evidence)
    if conclusive_series:
        planning, series_uids = True, conclusive_series
    else:
        planning = len(families) >= min_supporting and not counter and bool(images)
        series_uids = tuple(s.series_instance_uid for s in images) if planning else ()
    contrast = any(s.contrast_agent for s in images if s.series_instance_uid in series_uids)
    return Classification(planning, tuple(evidence), series_uids, contrast)


def _label(series: SeriesSummary) -> str:
    number = series.series_number if series.series_number is not None else "?"
    return f"series {number} ({series.modality})"


def _conclusive(images: list[SeriesSummary], rt: RTIndex) -> Iterable[Evidence]:
    for s in images:
        uid = s.series_instance_uid
        if uid in rt.referenced_series:
            yield Evidence(
                "rtstruct-reference",
                Strength.CONCLUSIVE,
                f"an RT Structure Set references the images of {_label(s)}",
                uid,
            )
        elif s.frame_of_reference_uid and s.frame_of_reference_uid in rt.structure_set_for:
            yield Evidence(
                "shared-frame-of-reference",
                Strength.CONCLUSIVE,
                f"{_label(s)} shares its frame of reference with an RT Structure Set",
                uid,
            )
        elif s.frame_of_reference_uid and s.frame_of_reference_uid in rt.plan_for:
            yield Evidence(
                "shared-frame-of-reference",
                Strength.CONCLUSIVE,
                f"{_label(s)} shares its frame of reference with an RT Plan",
                uid,
            )


def _supporting(study: StudySummary, rules: RulesTable) -> list[Evidence]:
    found: list[Evidence] = []
    codes = set(rules.get("procedure_codes"))
    for coded in (*study.procedure_codes, *study.requested_procedure_codes):
        key = f"{coded.scheme}|{coded.code}"
        if key in codes:
            found.append(
                Evidence("procedure-code", Strength.SUPPORTING, f"procedure code {key} is listed")
            )
            break
    descriptions = [("study description", study.description)]
    descriptions += [(f"{_label(s)} description", s.description) for s in study.series]
    found += _first_keyword("description", descriptions, rules.get("description_keywords"))
    protocols = [(f"{_label(s)} protocol", s.protocol_name) for s in study.series]
    found += _first_keyword("protocol", protocols, rules.get("protocol_keywords"))
    stations = {name.upper() for name in rules.get("station_names")}
    for s in study.series:
        if s.station_name.upper() in stations:
            text = f"station name {s.station_name!r} is a listed simulator"
            found.append(Evidence("station", Strength.SUPPORTING, text))
            break
    titles = {t.upper() for t in rules.get("ae_titles")}
    for title in study.source_ae_titles:
        if title.upper() in titles:
            text = f"sent by listed AE title {title!r}"
            found.append(Evidence("ae-title", Strength.SUPPORTING, text))
            break
    diagnostic = _first_keyword(
        "diagnostic-wording", descriptions, rules.get("diagnostic_keywords")
    )
    found += [Evidence(e.rule, Strength.COUNTER, e.text) for e in diagnostic]
    return found


def _first_keyword(
    rule: str, texts: list[tuple[str, str]], keywords: tuple[str, ...]
) -> list[Evidence]:
    for where, text in texts:
        for keyword in keywords:
            if _contains_phrase(text, keyword):
                sentence = f"{where} contains {keyword!r}"
                return [Evidence(rule, Strength.SUPPORTING, sentence)]
    return []


def _contains_phrase(text: str, phrase: str) -> bool:
    """Whole-word, case-insensitive match, so 'RTP' does not match inside 'HEARTPORT'."""
    if not text:
        return False
    pattern = r"(?<![A-Z0-9])" + re.escape(phrase.upper()) + r"(?![A-Z0-9])"
    return re.search(pattern, text.upper()) is not None
