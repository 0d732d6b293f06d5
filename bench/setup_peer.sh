#!/usr/bin/env bash
# Create bench/.venv-dicom2fhir with the peer converter dicom2fhir 0.1.25 (and fhir.resources
# 8.2.0, which conflicts with the project's 8.3.0, hence its own venv). Idempotent; packages
# come from PyPI by name (pins in bench/requirements-dicom2fhir.txt).
#   bash bench/setup_peer.sh            # create or update
#   bash bench/setup_peer.sh --force    # recreate from scratch
#   PYTHON=python3.11 bash bench/setup_peer.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-dicom2fhir"
python="${PYTHON:-python3}"

if [[ "${1:-}" == "--force" ]]; then
    rm -rf "$venv"
fi
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$here/requirements-dicom2fhir.txt"
"$venv/bin/python" - <<'PY'
import importlib.metadata as md
want = {"dicom2fhir": "0.1.25", "fhir.resources": "8.2.0", "pydicom": "3.0.2"}
got = {name: md.version(name) for name in want}
assert got == want, f"peer venv has {got}, expected {want}"
import dicom2fhir.dicom2fhir  # noqa: F401  (the API used by bench/peer_dicom2fhir.py)
print(f"dicom2fhir peer venv ready: {got}")
PY
