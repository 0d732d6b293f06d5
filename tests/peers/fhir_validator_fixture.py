"""pytest plugin: the offline HAPI FHIR validator (tests/peers/fhir-validator, HAPI FHIR 8.8.0).

Registered in ``tests/conftest.py``.

* ``fhir_validate`` (session): builds the jar once (``build.sh`` is a no-op when it is up to
  date) and returns ``validate(resources, version="R4") -> list[FhirResult]``, which runs the JVM
  ONCE per call with the resources as a JSON array on stdin. Validation uses
  ``hapi-fhir-validation`` with the core definitions of
  ``hapi-fhir-validation-resources-r4``/``-r5``
  and no terminology server: nothing is downloaded, and codes of external systems (SNOMED CT,
  LOINC) are reported as not checkable rather than fetched.

A missing ``java``/``mvn`` or a failed build FAILS the test: real validators are never skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.peers.hl7v2_validator_fixture import _java, build_jar

VALIDATOR_DIR = Path(__file__).resolve().parent / "fhir-validator"
BUILD_SH = VALIDATOR_DIR / "build.sh"
JAR = VALIDATOR_DIR / "target" / "fhir-validator.jar"
BUILD_TIMEOUT = 1200.0
RUN_TIMEOUT = 300.0
VERSIONS = ("R4", "R5")


@dataclass(frozen=True)
class FhirResult:
    ok: bool  # no error or fatal issue
    errors: list[str] = field(default_factory=list)  # "location: text"
    warnings: list[str] = field(default_factory=list)


Validate = Callable[..., list[FhirResult]]


def build_validator() -> None:
    build_jar("HAPI FHIR validator", BUILD_SH, JAR, BUILD_TIMEOUT)


def run_validator(
    java: str, resources: Sequence[Mapping[str, Any]], version: str = "R4"
) -> list[FhirResult]:
    """Validate a batch in one JVM; one :class:`FhirResult` per resource, in order."""
    if version not in VERSIONS:
        raise ValueError(f"FHIR version must be one of {VERSIONS}, not {version!r}")
    if not resources:
        return []
    proc = subprocess.run(
        [java, "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-jar", str(JAR), version],
        input=json.dumps(list(resources)).encode("utf-8"),
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    lines = [ln for ln in proc.stdout.decode("utf-8").splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or len(lines) != len(resources):
        raise RuntimeError(
            f"HAPI FHIR validator: exit {proc.returncode}, {len(lines)} results for "
            f"{len(resources)} resources; stderr:\n{proc.stderr.decode('utf-8', 'replace')[-3000:]}"
        )
    results = []
    for line in lines:
        data = json.loads(line)
        results.append(
            FhirResult(
                ok=bool(data["ok"]),
                errors=[str(e) for e in data.get("errors", [])],
                warnings=[str(w) for w in data.get("warnings", [])],
            )
        )
    return results


@pytest.fixture(scope="session")
def fhir_validate() -> Validate:
    """``validate(resources, version="R4") -> list[FhirResult]`` (one JVM per call)."""
    java = _java()
    if shutil.which("mvn") is None and not JAR.is_file():
        pytest.fail(
            "HAPI FHIR validator: `mvn` is not on PATH and the jar is not built", pytrace=False
        )
    build_validator()

    def validate(resources: Sequence[Mapping[str, Any]], version: str = "R4") -> list[FhirResult]:
        return run_validator(java, resources, version)

    return validate
