"""pytest plugin: the HAPI HL7v2 validator (tests/peers/hl7v2-validator, HAPI 2.6.0).

Load with ``pytest_plugins = ["tests.peers.hl7v2_validator_fixture"]``.

* ``hl7v2_validate`` (session): builds the jar once (``build.sh`` is a no-op when it is up to
  date; a cold Maven cache downloads ~25 MB) and returns ``validate(messages) -> list[Result]``,
  which runs the JVM ONCE per batch (start-up is ~0.5 s) with the messages on stdin separated by
  a blank line. Each message is decoded in its MSH-18 charset (strictly), parsed by HAPI's
  ``PipeParser`` with ``ValidationContextFactory.defaultValidation()``, then checked against
  our conformance profile (``src/main/resources/conformance.properties``: required fields per
  structure, and MSH-18/OBR-24/ORC-1/PID-8 values from the version's HL7 tables).

A missing ``java``/``mvn`` or a failed build FAILS the test: real validators are never skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

VALIDATOR_DIR = Path(__file__).resolve().parent / "hl7v2-validator"
BUILD_SH = VALIDATOR_DIR / "build.sh"
JAR = VALIDATOR_DIR / "target" / "hl7v2-validator.jar"
BUILD_TIMEOUT = 900.0
RUN_TIMEOUT = 120.0


@dataclass(frozen=True)
class Result:
    ok: bool
    structure: str = ""
    version: str = ""
    roundtrip: bool = False  # HAPI re-encodes the message identically
    reencoded: str = ""  # else HAPI's encoding of the first segment that differs
    error: str = ""


Validate = Callable[[Sequence[bytes]], list[Result]]


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        pytest.fail("HAPI HL7v2 validator: `java` (17+) is not on PATH", pytrace=False)
    return java


def build_jar(name: str, build_sh: Path, jar: Path, timeout: float = BUILD_TIMEOUT) -> None:
    """Run a Java peer's build.sh (idempotent); pytest.fail with its output when it fails."""
    proc = subprocess.run(
        ["bash", str(build_sh)],
        cwd=build_sh.parent,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0 or not jar.is_file():
        pytest.fail(
            f"{name}: build.sh failed (exit code {proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}",
            pytrace=False,
        )


def build_validator() -> None:
    build_jar("HAPI HL7v2 validator", BUILD_SH, JAR)


def run_validator(java: str, messages: Sequence[bytes]) -> list[Result]:
    """Validate a batch in one JVM; one :class:`Result` per message, in order."""
    for m in messages:
        if b"\r\r" in m.rstrip(b"\r") or b"\n" in m:
            raise ValueError("a message holds an empty segment or LF: it would split the batch")
    stdin = b"\r\r".join(m.rstrip(b"\r") for m in messages) + b"\r"
    proc = subprocess.run(
        [java, "-Xss1m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-jar", str(JAR)],
        input=stdin,
        capture_output=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    lines = [ln for ln in proc.stdout.decode("utf-8").splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or len(lines) != len(messages):
        raise RuntimeError(
            f"HAPI HL7v2 validator: exit {proc.returncode}, {len(lines)} results for "
            f"{len(messages)} messages; stderr:\n{proc.stderr.decode('utf-8', 'replace')[-3000:]}"
        )
    results = []
    for line in lines:
        data = json.loads(line)
        results.append(
            Result(
                ok=bool(data["ok"]),
                structure=data.get("structure", ""),
                version=data.get("version", ""),
                roundtrip=bool(data.get("roundtrip", False)),
                reencoded=data.get("reencoded", ""),
                error=data.get("error", ""),
            )
        )
    return results


@pytest.fixture(scope="session")
def hl7v2_validate() -> Validate:
    """``validate(messages) -> list[Result]`` backed by HAPI HL7v2 (one JVM per call)."""
    java = _java()
    if shutil.which("mvn") is None and not JAR.is_file():
        pytest.fail(
            "HAPI HL7v2 validator: `mvn` is not on PATH and the jar is not built", pytrace=False
        )
    build_validator()

    def validate(messages: Sequence[bytes]) -> list[Result]:
        return run_validator(java, messages)

    return validate
