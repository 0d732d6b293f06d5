#!/usr/bin/env bash
# Build the offline HAPI FHIR validator: tests/peers/fhir-validator/target/fhir-validator.jar
# (shaded, R4 + R5 core definitions inside). A no-op when up to date. FORCE_BUILD=1 rebuilds.
exec "$(dirname "$0")/../build-jar.sh" "$(dirname "$0")" target/fhir-validator.jar fhir-validator "$@"
