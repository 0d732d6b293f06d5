"""FHIR strings may hold no control characters except tab, CR and LF (the R4 ``string``
regex ``[ \\r\\n\\t\\S]+``). DICOM text can carry NUL padding or stray control bytes from a
modality; they are removed before anything reaches a FHIR server, because a server may store
them (and a reader may truncate at the NUL) or reject the whole transaction."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["without_control_characters"]

_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def without_control_characters(document: Any) -> Any:
    """A copy of a JSON document with the forbidden control characters removed from every
    string value (keys are ours and never carry them). Lists and objects only, no recursion
    limit concerns: Bundles are a few levels deep."""
    if isinstance(document, str):
        return _FORBIDDEN.sub("", document) if _FORBIDDEN.search(document) else document
    if isinstance(document, dict):
        return {key: without_control_characters(value) for key, value in document.items()}
    if isinstance(document, list):
        return [without_control_characters(value) for value in document]
    return document
