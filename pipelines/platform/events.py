"""Field types every design's events and requests share, so that implausible input is refused the same way.

- `EntityId`: 1-64 printable characters (no control characters: they break logs, keys and files downstream).
- `Amount`: a finite number; booleans and numeric strings are refused (JSON `true` is not an amount).
- `EventTime`: a UTC time between 1970 and `now + max_future` (a year-2262 event would move a window's clock past
  every real event). `now` and `max_future` come from the validation context (`event_context`), so a stream
  processor and a service apply the bounds its Settings name; without a context the defaults apply.

How far *behind* the stream an event may arrive is a property of the stream, not of one event: the platform loop
checks it against its watermark (pipelines/platform/stream.py).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StringConstraints, ValidationInfo

EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
DEFAULT_MAX_FUTURE = timedelta(days=1)
# Printable characters only: no C0 control characters and no DEL.
ID_PATTERN = r"^[^\x00-\x1f\x7f]+$"

EntityId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=ID_PATTERN)]
Amount = Annotated[float, Field(strict=True, allow_inf_nan=False)]


def utc(value: datetime) -> datetime:
    """Naive times are read as UTC; aware ones are converted."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


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


EventTime = Annotated[datetime, AfterValidator(_plausible)]
