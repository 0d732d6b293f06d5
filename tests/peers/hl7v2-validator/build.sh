#!/usr/bin/env bash
# Build the HAPI HL7v2 validator: tests/peers/hl7v2-validator/target/hl7v2-validator.jar (shaded).
# Idempotent: does nothing when the jar is newer than pom.xml, build.sh and everything under src/.
# Needs Java 17 and Maven 3.8+; dependencies come from Maven Central only (~25 MB on a cold cache).
# Set HL7V2_VALIDATOR_FORCE_BUILD=1 to rebuild regardless. Extra args go to mvn.
set -euo pipefail
cd "$(dirname "$0")"
JAR=target/hl7v2-validator.jar

if [[ "${HL7V2_VALIDATOR_FORCE_BUILD:-0}" != 1 && -f "$JAR" ]]; then
  newer=$(find pom.xml build.sh src -newer "$JAR" -print -quit)
  if [[ -z "$newer" ]]; then
    echo "hl7v2-validator build: $JAR is up to date"
    exit 0
  fi
fi

for tool in java mvn; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "hl7v2-validator build: '$tool' is not on PATH (need Java 17 + Maven 3.8+)" >&2
    exit 2
  fi
done

start=$(date +%s)
mvn -q -B -Dstyle.color=never -DskipTests package "$@"
if [[ ! -f "$JAR" ]]; then
  echo "hl7v2-validator build: mvn finished but $JAR is missing" >&2
  exit 1
fi
touch "$JAR"
echo "hl7v2-validator build: built $JAR in $(( $(date +%s) - start )) s"
