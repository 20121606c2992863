"""The recommendation design's Kafka topics and event schemas."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from pipelines.platform.events import ID_PATTERN, Amount, EntityId, EventTime
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


class InteractionEvent(BaseModel):
    """A user acting on an item (view, click, purchase, rating); `weight` says how much it counts."""

    model_config = ConfigDict(extra="ignore")

    user_id: EntityId
    item_id: EntityId
    timestamp: EventTime
    event_type: str = Field(default="interaction", max_length=32, pattern=ID_PATTERN)
    weight: Amount = Field(default=1.0, ge=0, le=1_000)


class ItemEvent(BaseModel):
    """A catalogue item appearing (or changing category)."""

    model_config = ConfigDict(extra="ignore")

    item_id: EntityId
    category: EntityId = "unknown"
    created_at: EventTime

    @property
    def event_time(self) -> datetime:
        return self.created_at
