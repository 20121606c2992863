"""The recommendation design's Kafka topics and event schemas."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

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


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def derived_interaction_id(user_id: str, item_id: str, micros: int, event_type: str) -> str:
    """The id of an interaction that came without one: its content (the same user, item, microsecond and type
    count once — the one case two such events cannot be told apart)."""
    content = f"{user_id}\x00{item_id}\x00{micros}\x00{event_type}".encode()
    return "h" + hashlib.blake2b(content, digest_size=10).hexdigest()


class InteractionEvent(BaseModel):
    """A user acting on an item (view, click, purchase, rating); `weight` says how much it counts.

    `interaction_id` makes a redelivered event recognisable (the processor counts each id once); without one the
    id is derived from the content (`derived_interaction_id`)."""

    model_config = ConfigDict(extra="ignore")

    user_id: EntityId
    item_id: EntityId
    timestamp: EventTime
    event_type: str = Field(default="interaction", max_length=32, pattern=ID_PATTERN)
    weight: Amount = Field(default=1.0, ge=0, le=1_000)
    interaction_id: EntityId | None = None

    @property
    def event_id(self) -> str:
        if self.interaction_id is not None:
            return self.interaction_id
        micros = (self.timestamp - EPOCH) // timedelta(microseconds=1)
        return derived_interaction_id(self.user_id, self.item_id, micros, self.event_type)


class ItemEvent(BaseModel):
    """A catalogue item appearing (or changing category)."""

    model_config = ConfigDict(extra="ignore")

    item_id: EntityId
    category: EntityId = "unknown"
    created_at: EventTime

    @property
    def event_time(self) -> datetime:
        return self.created_at
