"""DICOM DA/TM pairs to time-zone-aware datetimes.

Policy: every datetime the reader returns carries an offset. (0008,0201) Timezone Offset From
UTC wins when present and valid; otherwise the site's IANA zone (``default_tz``) is applied,
which is DST-aware (Europe/London gives +01:00 in summer, +00:00 in winter). An invalid
optional date or time yields ``None``: a bad StudyTime must never quarantine a study.
"""

from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from functools import lru_cache
from typing import Final

_DA: Final = re.compile(r"(\d{4})(\d{2})(\d{2})")
# TM is HH[MM[SS[.F{1,6}]]]; the ACR-NEMA "HH:MM:SS" form is still seen and accepted.
_TM: Final = re.compile(r"(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?")
_OFFSET: Final = re.compile(r"([+-])(\d{2})(\d{2})")


@lru_cache(maxsize=1024)  # the slices of a series repeat the same study/series dates
def parse_date(value: str) -> date | None:
    """YYYYMMDD to a date, or ``None`` if empty or invalid."""
    match = _DA.fullmatch(value.strip())
    if match is None:
        return None
    try:
        return date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def parse_time(value: str) -> time | None:
    """HH[MM[SS[.ffffff]]] to a naive time, or ``None`` if empty or invalid."""
    match = _TM.fullmatch(value.strip())
    if match is None:
        return None
    hour, minute, second = int(match[1]), int(match[2] or 0), int(match[3] or 0)
    micro = int((match[4] or "0").ljust(6, "0"))
    second = min(second, 59)  # TM allows 60 for a leap second; datetime does not
    try:
        return time(hour, minute, second, micro)
    except ValueError:
        return None


def parse_offset(value: str) -> tzinfo | None:
    """``+HHMM``/``-HHMM`` (0008,0201) to a fixed offset, or ``None`` if invalid."""
    match = _OFFSET.fullmatch(value.strip())
    if match is None:
        return None
    hours, minutes = int(match[2]), int(match[3])
    if hours > 14 or minutes > 59:
        return None
    delta = timedelta(hours=hours, minutes=minutes)
    return timezone(-delta if match[1] == "-" else delta)


@lru_cache(maxsize=1024)  # datetimes are immutable: sharing one per distinct input is safe
def combine(da: str, tm: str, offset: str, default_tz: tzinfo) -> datetime | None:
    """A tz-aware datetime from DA + TM (+ offset), ``None`` if either is invalid.

    An *empty* time gives midnight of the date (StudyTime is type 2, so may be empty, and
    the day is still useful for matching); a present but invalid time gives ``None``
    rather than a made-up clock time.
    """
    day = parse_date(da)
    if day is None:
        return None
    clock = None
    if tm.strip():
        clock = parse_time(tm)
        if clock is None:
            return None
    zone = parse_offset(offset) if offset.strip() else None
    return datetime.combine(day, clock or time(0), tzinfo=zone or default_tz)
