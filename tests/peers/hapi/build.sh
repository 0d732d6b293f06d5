#!/usr/bin/env bash
# Build the HAPI FHIR JPA test peer: tests/peers/hapi/target/hapi-peer.jar (Spring Boot fat jar).
# Idempotent: does nothing when the jar is newer than pom.xml, build.sh and everything under src/.
# Needs Java 17 and Maven 3.8+; dependencies come from Maven Central only (~340 MB into ~/.m2 on a
# cold cache). Set HAPI_PEER_FORCE_BUILD=1 to rebuild regardless. Extra args go to mvn.
set -euo pipefail
cd "$(dirname "$0")"
JAR=target/hapi-peer.jar

if [[ "${HAPI_PEER_FORCE_BUILD:-0}" != 1 && -f "$JAR" ]]; then
  newer=$(find pom.xml build.sh src -newer "$JAR" -print -quit)
  if [[ -z "$newer" ]]; then
    echo "hapi-peer build: $JAR is up to date"
    exit 0
  fi
fi

for tool in java mvn; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "hapi-peer build: '$tool' is not on PATH (need Java 17 + Maven 3.8+; Debian: apt-get install -y openjdk-17-jdk-headless maven)" >&2
    exit 2
  fi
done

start=$(date +%s)
mvn -q -B -Dstyle.color=never -DskipTests package "$@"
if [[ ! -f "$JAR" ]]; then
  echo "hapi-peer build: mvn finished but $JAR is missing" >&2
  exit 1
fi
# The jar may keep an old mtime if nothing was repackaged; make it the newest file.
touch "$JAR"
echo "hapi-peer build: built $JAR in $(( $(date +%s) - start )) s"
