"""Golden Bundles for every bundled fixture case, each valid FHIR.

Regenerate after an intended change with ``UPDATE_GOLDEN=1 pytest tests/golden`` and review the
diff: the expected files are the contract an interface analyst signs off.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fhir.resources import get_fhir_model_class

from adapter.config import ArchiveSettings, FhirSettings, IngestSettings, Settings
from adapter.mapping.tables import load_tables
from adapter.service.ingest import Status, run_ingest
from tests.fhir_validation import validate_r4

ROOT = Path(__file__).resolve().parents[2]
DICOM = ROOT / "fixtures" / "dicom"
EXPECTED = ROOT / "fixtures" / "expected"
BASE = Settings(ingest=IngestSettings(workers=1))
WITH_PATIENT = replace(BASE, fhir=FhirSettings(create_patient=True))
ARCHIVE = ArchiveSettings(wado_rs_base_url="https://pacs.example.org/dicom-web")

CASES: dict[str, tuple[str, Settings]] = {
    "planning-ct": ("planning-ct", replace(WITH_PATIENT, archive=ARCHIVE)),
    "planning-ct-r5": (
        "planning-ct",
        replace(BASE, fhir=FhirSettings(version="R5"), archive=ARCHIVE),
    ),
    "planning-mr": ("planning-mr", BASE),
    "pet-ct": ("pet-ct", BASE),
    "charset-latin1": ("charset-latin1", WITH_PATIENT),
    "charset-utf8": ("charset-utf8", WITH_PATIENT),
    "charset-jp": ("charset-jp", WITH_PATIENT),
    "tz-none-summer": ("tz-none-summer", BASE),
    "tz-none-winter": ("tz-none-winter", BASE),
    "diagnostic-ct-mapped": (
        "diagnostic-ct",
        replace(BASE, ingest=IngestSettings(workers=1, diagnostic_studies="map")),
    ),
}
TABLES = load_tables(BASE.mappings_dir)


def bundle_for(case: str) -> dict[str, Any]:
    folder, settings = CASES[case]
    result = run_ingest([DICOM / folder], settings, TABLES)
    assert not result.rejections, result.rejections
    assert [s.status for s in result.studies] == [Status.MAPPED]
    bundle = result.studies[0].bundle
    assert bundle is not None
    return bundle


@pytest.mark.parametrize("case", sorted(CASES))
def test_bundle_matches_golden(case: str) -> None:
    bundle = bundle_for(case)
    path = EXPECTED / f"{case}.bundle.json"
    text = json.dumps(bundle, ensure_ascii=False, indent=2) + "\n"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"no golden file {path.name}: run with UPDATE_GOLDEN=1 and review it"
    assert json.loads(path.read_text(encoding="utf-8")) == bundle


@pytest.mark.parametrize("case", sorted(c for c in CASES if not c.endswith("-r5")))
def test_every_r4_resource_is_valid(case: str) -> None:
    bundle = bundle_for(case)
    assert validate_r4(bundle) == []


def test_r5_resources_are_valid_r5() -> None:
    for entry in bundle_for("planning-ct-r5")["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        assert "procedureCode" not in resource and "reasonCode" not in resource


def test_golden_files_have_no_orphans() -> None:
    names = {p.name.removesuffix(".bundle.json") for p in EXPECTED.glob("*.bundle.json")}
    assert names == set(CASES)
