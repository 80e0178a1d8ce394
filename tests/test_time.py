"""bsipatch._time: the one place time stamps are read from the clock, written and parsed."""

from __future__ import annotations

import calendar
import time
from datetime import datetime, timedelta, timezone

import pytest

from bsipatch._time import (
    TIME_FORMAT,
    epoch_to_text,
    format_time,
    now_text,
    parse_epoch,
    parse_time,
    to_utc,
    utc_now,
)
from bsipatch.errors import FormatError

# Well-known instants: 1,700,000,000 s after the epoch was 2023-11-14 22:13:20 UTC
# (and 2,000,000,000 s will be 2033-05-18 03:33:20 UTC).
KNOWN_EPOCH = 1_700_000_000
KNOWN_TEXT = "2023-11-14T22:13:20Z"


def test_known_answers() -> None:
    assert calendar.timegm(time.strptime(KNOWN_TEXT, TIME_FORMAT)) == KNOWN_EPOCH  # cross-check
    assert epoch_to_text(2_000_000_000) == "2033-05-18T03:33:20Z"
    when = datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)
    assert format_time(when) == KNOWN_TEXT
    assert parse_time(KNOWN_TEXT) == when
    assert parse_epoch(KNOWN_TEXT) == KNOWN_EPOCH
    assert epoch_to_text(KNOWN_EPOCH) == KNOWN_TEXT
    assert epoch_to_text(KNOWN_EPOCH + 0.999) == KNOWN_TEXT  # truncated, not rounded
    assert epoch_to_text(None) is None


def test_round_trip_keeps_whole_seconds() -> None:
    when = datetime(2024, 2, 29, 23, 59, 59, 987654, tzinfo=timezone.utc)
    text = format_time(when)
    assert text == "2024-02-29T23:59:59Z"
    assert parse_time(text) == when.replace(microsecond=0)
    assert format_time(parse_time(text)) == text
    assert epoch_to_text(parse_epoch(text)) == text


def test_non_utc_offset_is_converted() -> None:
    plus_5_30 = timezone(timedelta(hours=5, minutes=30))
    when = datetime(2026, 1, 1, 3, 0, 0, tzinfo=plus_5_30)
    assert format_time(when) == "2025-12-31T21:30:00Z"
    assert to_utc(when) == datetime(2025, 12, 31, 21, 30, tzinfo=timezone.utc)
    assert to_utc(when).tzinfo is timezone.utc
    minus_8 = timezone(timedelta(hours=-8))
    assert format_time(datetime(2026, 11, 28, 20, 0, tzinfo=minus_8)) == "2026-11-29T04:00:00Z"


def test_naive_datetime_is_refused() -> None:
    naive = datetime(2026, 1, 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        format_time(naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        to_utc(naive)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage",
        "2026-11-28",
        "2026-11-28 10:00:00Z",  # space, not T
        "2026-11-28T10:00:00",  # no zone
        "2026-11-28T10:00:00+00:00",  # an offset instead of Z
        "2026-11-28T10:00:00z",
        "2026-11-28T10:00Z",
        " 2026-11-28T10:00:00Z",
        "2026-11-28T10:00:00Z\n",
        "2026-11-28T10:00:00.Z",
        "2026-11-28T10:00:00.1234567Z",  # more than microseconds
        "\uff12\uff10\uff12\uff16-11-28T10:00:00Z",  # non-ASCII (fullwidth) digits
    ],
)
def test_malformed_text_is_refused(text: str) -> None:
    with pytest.raises(FormatError, match="must look like 2026-11-28T00:00:00Z"):
        parse_time(text, fraction=True)


@pytest.mark.parametrize(
    "text", ["2026-13-01T00:00:00Z", "2026-02-29T00:00:00Z", "2026-11-28T24:00:00Z"]
)
def test_impossible_dates_are_refused(text: str) -> None:
    with pytest.raises(FormatError, match="not a valid date"):
        parse_time(text)
    with pytest.raises(FormatError, match="not a valid date"):
        parse_epoch(text)


@pytest.mark.parametrize("value", [None, 1700000000, b"2023-11-14T22:13:20Z"])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(FormatError, match="found"):
        parse_time(value, "published")


def test_fractions_only_when_asked() -> None:
    with pytest.raises(FormatError):
        parse_time("2023-11-14T22:13:20.5Z")
    assert parse_time("2023-11-14T22:13:20.5Z", fraction=True).microsecond == 500000
    assert parse_epoch("2023-11-14T22:13:20.25Z") == KNOWN_EPOCH + 0.25


def test_error_names_the_value() -> None:
    with pytest.raises(FormatError, match=r"--now must look like .*found 'tomorrow'"):
        parse_time("tomorrow", "--now")


def test_clock_is_aware_utc_now() -> None:
    before = time.time()
    now = utc_now()
    after = time.time()
    assert now.tzinfo is timezone.utc
    assert before - 1e-3 <= now.timestamp() <= after + 1e-3
    text = now_text()
    assert abs(parse_epoch(text) - time.time()) < 5
    assert text == format_time(parse_time(text))
