"""The oncologist's review of a planning scan: input model, prior-imaging check, submission.

Public API::

    from adapter.review import submit_review, preview_review, parse_review, ReviewInput

Names are loaded on first use: ``adapter.mapping`` imports the input model from this package,
and the service imports ``adapter.mapping``, so an eager import here would be circular.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adapter.review.model import ReviewError, ReviewInput, UnknownStudyError, parse_review
    from adapter.review.service import (
        SubmitResult,
        preview_review,
        submit_review,
        submit_review_async,
    )

_WHERE = {
    "ReviewError": "model",
    "ReviewInput": "model",
    "UnknownStudyError": "model",
    "parse_review": "model",
    "SubmitResult": "service",
    "preview_review": "service",
    "submit_review": "service",
    "submit_review_async": "service",
}
__all__ = [
    "ReviewError",
    "ReviewInput",
    "SubmitResult",
    "UnknownStudyError",
    "parse_review",
    "preview_review",
    "submit_review",
    "submit_review_async",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(name)
    return getattr(importlib.import_module(f"adapter.review.{_WHERE[name]}"), name)
