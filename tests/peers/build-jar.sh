#!/usr/bin/env bash
# Build one Java test peer's jar with Maven, only when its sources changed.
# Usage: build-jar.sh PROJECT_DIR JAR_PATH (relative to PROJECT_DIR) NAME [mvn args...]
# Set FORCE_BUILD=1 to rebuild regardless. Dependencies come from Maven Central only.
set -euo pipefail
dir=$1 jar=$2 name=$3
shift 3
cd "$dir"
if [[ "${FORCE_BUILD:-0}" != 1 && -f "$jar" ]]; then
  newer=$(find pom.xml build.sh src -newer "$jar" -print -quit)
  if [[ -z "$newer" ]]; then
    echo "$name build: $jar is up to date"
    exit 0
  fi
fi
for tool in java mvn; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "$name build: '$tool' is not on PATH (need Java 17 + Maven 3.8+; Debian: apt-get install -y openjdk-17-jdk-headless maven)" >&2
    exit 2
  fi
done
start=$(date +%s)
mvn -q -B -Dstyle.color=never -DskipTests package "$@"
if [[ ! -f "$jar" ]]; then
  echo "$name build: mvn finished but $jar is missing" >&2
  exit 1
fi
# The jar may keep an old mtime if nothing was repackaged; make it the newest file.
touch "$jar"
echo "$name build: built $jar in $(( $(date +%s) - start )) s"
