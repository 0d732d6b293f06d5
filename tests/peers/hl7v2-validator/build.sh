#!/usr/bin/env bash
# Build the HAPI HL7v2 validator: tests/peers/hl7v2-validator/target/hl7v2-validator.jar
# (shaded). A no-op when up to date; ~25 MB into ~/.m2 on a cold cache. FORCE_BUILD=1 rebuilds.
exec "$(dirname "$0")/../build-jar.sh" "$(dirname "$0")" target/hl7v2-validator.jar hl7v2-validator "$@"
