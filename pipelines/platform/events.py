"""Field types every design's events and requests share, so that implausible input is refused the same way.

- `EntityId`: 1-64 printable characters (no control characters: they break logs, keys and files downstream).
- `Amount`: a finite number; booleans and numeric strings are refused (JSON `true` is not an amount).
- `EventTime`: an RFC 3339 date-time string (no Unix-time numbers, which pydantic would otherwise read, and no bare
  dates: the published schema says date-time), read as a UTC time between 1970 and `now + max_future` (a year-2262
  event would move a window's clock past every real event). `now` and `max_future` come from the validation
  context (`event_context`), so a stream processor applies the bounds its Settings name; without a context (the
  services' request bodies) the defaults apply.

How far *behind* the stream an event may arrive is a property of the stream, not of one event: the platform loop
checks it against its watermark (pipelines/platform/stream.py).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, StringConstraints, ValidationInfo

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_MAX_FUTURE = timedelta(days=1)
# Printable characters only: no C0 control characters and no DEL.
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"

EntityId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=ID_PATTERN)]
Amount = Annotated[float, Field(strict=True, allow_inf_nan=False)]


DATE_TIME_START = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]")


def utc(value: datetime) -> datetime:
    """Naive times are read as UTC; aware ones are converted."""
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00+01:00: the conversion leaves datetime's range
        raise ValueError("is out of range") from None


def _date_time_text(value: object) -> object:
    if isinstance(value, datetime) or (isinstance(value, str) and DATE_TIME_START.match(value)):
        return value
    raise ValueError("must be an RFC 3339 date-time such as 2026-01-01T12:00:00Z")


def event_context(max_future_seconds: float, now: datetime | None = None) -> dict[str, Any]:
    """The validation context that sets the future bound of `EventTime` fields."""
    return {"now": now or datetime.now(UTC), "max_future": timedelta(seconds=max_future_seconds)}


def _plausible(value: datetime, info: ValidationInfo) -> datetime:
    value = utc(value)
    context = info.context or {}
    now = context.get("now") or datetime.now(UTC)
    max_future = context.get("max_future", DEFAULT_MAX_FUTURE)
    if value < EARLIEST:
        raise ValueError("is before 1970")
    if value > now + max_future:
        raise ValueError(f"is more than {max_future} ahead of now")
    return value


EventTime = Annotated[datetime, BeforeValidator(_date_time_text), AfterValidator(_plausible)]
