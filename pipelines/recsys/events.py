"""The recommendation design's Kafka topics and event schemas."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.platform.stream import DLQ_SUFFIX

INTERACTIONS_TOPIC = "recsys.interactions"
ITEMS_TOPIC = "recsys.items"
PREDICTIONS_TOPIC = "recsys.predictions"  # served and shadow lists (pipelines/platform/predictions.py)
TOPICS = (
    INTERACTIONS_TOPIC,
    INTERACTIONS_TOPIC + DLQ_SUFFIX,
    ITEMS_TOPIC,
    ITEMS_TOPIC + DLQ_SUFFIX,
)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class InteractionEvent(BaseModel):
    """A user acting on an item (view, click, purchase, rating); `weight` says how much it counts."""

    model_config = ConfigDict(extra="ignore")

    user_id: str = Field(min_length=1, max_length=64)
    item_id: str = Field(min_length=1, max_length=64)
    timestamp: datetime
    event_type: str = Field(default="interaction", max_length=32)
    weight: float = Field(default=1.0, ge=0, le=1_000, allow_inf_nan=False)

    _utc_timestamp = field_validator("timestamp")(_utc)


class ItemEvent(BaseModel):
    """A catalogue item appearing (or changing category)."""

    model_config = ConfigDict(extra="ignore")

    item_id: str = Field(min_length=1, max_length=64)
    category: str = Field(default="unknown", min_length=1, max_length=64)
    created_at: datetime

    _utc_created = field_validator("created_at")(_utc)
