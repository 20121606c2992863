"""Alerts: one threshold crossed in one window, as the monitor publishes them on `monitoring.alerts`."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

AlertKind = Literal["data_drift", "prediction_drift", "data_quality", "performance_decay", "label_shift"]
ALERT_KINDS: tuple[AlertKind, ...] = (
    "data_drift",
    "prediction_drift",
    "data_quality",
    "performance_decay",
    "label_shift",
)


class Alert(BaseModel):
    """One threshold crossed in one window, as published on `monitoring.alerts`."""

    design: str
    window: int
    kind: AlertKind
    scores: dict[str, float | None]
    thresholds: dict[str, float | None] = {}
    model_version: str | None
    event_time_start: datetime | None
    event_time_end: datetime | None
    message: str
    detected_at: datetime
    # The stream's clock when the alert was raised: the window's end for drift and quality, the label watermark
    # for label-based alerts (a window's labels mature a delay after it). Replays compare alerts on this clock.
    stream_time: datetime | None = None
