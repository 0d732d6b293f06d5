"""``python -m adapter.api.openapi``: print the OpenAPI document (published as
``docs/openapi.json``; a test checks that it matches the app)."""

from __future__ import annotations

import json
import sys

from adapter.api.app import openapi_document
from adapter.config import load_settings

if __name__ == "__main__":  # pragma: no cover
    json.dump(openapi_document(load_settings(None, env={})), sys.stdout, indent=2)
    sys.stdout.write("\n")
