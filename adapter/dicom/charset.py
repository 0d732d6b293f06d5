"""Decoded text and person names from pydicom values.

pydicom applies (0008,0005) Specific Character Set while converting a raw element, including
ISO 2022 escape sequences (e.g. ``\\ISO 2022 IR 87`` for Japanese kanji) and the character set
inherited by sequence items. This module only turns the converted values into the plain
``str`` and :class:`~adapter.dicom.models.PersonName` shapes of ``models.py``.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from adapter.dicom.models import PersonName


def text(value: Any) -> str:
    """A converted text value as one ``str``: multi-values joined with ``\\``, stripped.

    ``None`` (absent or empty element) becomes ``""``, so callers never branch on type.
    """
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, bytes):
        # Only reached for VR UN/OB oddities; never guess a charset for them.
        return value.decode("ascii", "replace").strip("\0 ")
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(text(item) for item in value)
    return str(value).strip()


def person_name(value: Any) -> PersonName:
    """Split a converted PN into the alphabetic components and the other two groups.

    A PN holds up to three ``=``-separated groups (alphabetic, ideographic, phonetic), each
    ``family^given^middle^prefix^suffix`` (PS3.5 §6.2.1). Middle names join ``given``.
    Only the first value of a multi-valued PN is kept.
    """
    if value is None:
        return PersonName()
    if not hasattr(value, "components"):
        if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            return person_name(value[0]) if len(value) else PersonName()
        value = str(value)
        groups = ([*value.split("="), "", ""])[:3]
        return _from_groups(groups[0], groups[1], groups[2])
    return _from_groups(str(value.alphabetic), str(value.ideographic), str(value.phonetic))


@lru_cache(maxsize=1024)  # PersonName is frozen: one per distinct name is safe to share
def _from_groups(alphabetic: str, ideographic: str, phonetic: str) -> PersonName:
    parts = (alphabetic.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (p.strip() for p in parts)
    return PersonName(
        family=family,
        given=tuple(g for g in (given, middle) if g),
        prefix=prefix,
        suffix=suffix,
        ideographic=ideographic.strip(),
        phonetic=phonetic.strip(),
    )
