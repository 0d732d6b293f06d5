#!/usr/bin/env bash
# Build the HAPI FHIR JPA test peer: tests/peers/hapi/target/hapi-peer.jar (Spring Boot fat jar).
# A no-op when the jar is newer than pom.xml, build.sh and src/. ~340 MB into ~/.m2 on a cold
# cache. FORCE_BUILD=1 rebuilds regardless; extra args go to mvn.
exec "$(dirname "$0")/../build-jar.sh" "$(dirname "$0")" target/hapi-peer.jar hapi-peer "$@"
