"""Time stamps: the one module that reads the UTC clock and formats or parses times.

Every time bsipatch writes (preboot history, agent state and reports, signed metadata,
MDM status and fleet views) is RFC 3339 UTC with a ``Z`` and whole seconds,
``2026-11-28T10:00:00Z``. :func:`format_time` writes exactly that and
:func:`parse_time` reads exactly that (optionally with a fraction of a second, as DDM
devices may send). Epoch-second helpers serve the MDM database, which stores floats.

Naive datetimes (no time zone) are refused with :class:`ValueError` (a programming
error: the caller must say which zone it means); malformed text is refused with
:class:`~bsipatch.errors.FormatError`, which names what was found and what was expected.
No I/O beyond reading the clock, no trust decisions.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone  # noqa: F401 (timedelta: example)

from bsipatch.errors import FormatError

__all__ = [
    "TIME_FORMAT",
    "epoch_to_text",
    "format_time",
    "now_text",
    "parse_epoch",
    "parse_time",
    "to_utc",
    "utc_now",
]

#: The ``strftime`` pattern of every time stamp bsipatch writes.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"

_DIGITS = r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
_TIME = re.compile(_DIGITS + r"(?:\.([0-9]{1,6}))?Z")  # ASCII digits only, matched whole


def utc_now() -> datetime:
    """The current time as a timezone-aware UTC datetime (microseconds kept)."""
    return datetime.now(timezone.utc)


def to_utc(when: datetime) -> datetime:
    """``when`` converted to UTC and truncated to whole seconds.

    Raises:
        ValueError: ``when`` is naive (no time zone).
    """
    if when.tzinfo is None or when.utcoffset() is None:
        raise ValueError(f"times must be timezone-aware (use timezone.utc), got naive {when}")
    return when.astimezone(timezone.utc).replace(microsecond=0)


def format_time(when: datetime) -> str:
    """``when`` as ``YYYY-MM-DDTHH:MM:SSZ`` in UTC (fractions of a second dropped).

    Example:
        >>> format_time(datetime(2026, 11, 28, 12, 30, tzinfo=timezone(timedelta(hours=2))))
        '2026-11-28T10:30:00Z'

    Raises:
        ValueError: ``when`` is naive (no time zone).
    """
    return to_utc(when).strftime(TIME_FORMAT)


def now_text() -> str:
    """The current UTC time formatted by :func:`format_time`."""
    return format_time(utc_now())


def parse_time(text: object, what: str = "time", *, fraction: bool = False) -> datetime:
    """Parse ``YYYY-MM-DDTHH:MM:SSZ`` into an aware UTC datetime, strictly.

    Args:
        text: the text; anything that is not a string is refused.
        what: names the value in the error message.
        fraction: also accept 1 to 6 digits of fractional seconds (``...:00.25Z``).

    Raises:
        FormatError: not a string of exactly that form (offsets other than ``Z`` are
            refused), or not a real date and time.
    """
    m = _TIME.fullmatch(text) if isinstance(text, str) else None
    if m is None or (m.group(7) is not None and not fraction):
        raise FormatError(f"{what} must look like 2026-11-28T00:00:00Z, found {text!r}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    micro = int((m.group(7) or "0").ljust(6, "0"))
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone.utc)
    except ValueError as exc:
        raise FormatError(f"{what} {text!r} is not a valid date: {exc}") from None


def parse_epoch(text: object, what: str = "time") -> float:
    """Seconds since the epoch of a time accepted by ``parse_time(..., fraction=True)``.

    Raises:
        FormatError: as :func:`parse_time`.
    """
    return parse_time(text, what, fraction=True).timestamp()


def epoch_to_text(seconds: float | None) -> str | None:
    """Seconds since the epoch -> :func:`format_time`'s text; ``None`` stays ``None``."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, timezone.utc).strftime(TIME_FORMAT)
