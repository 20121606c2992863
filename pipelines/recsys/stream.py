"""Recommendation stream: replay interactions (and new catalogue items) to Kafka, and the feature processor sink.

`replay_interactions` sends items to `recsys.items` when they are created and interactions to
`recsys.interactions`, in time order, at a chosen rate. `RecsysFeatureSink` feeds the shared
`RecsysFeatureEngine` (the same code as the backfill) and writes through the platform's `write_feature_rows`,
before the platform loop commits offsets.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pydantic import BaseModel

from feature_repo.recsys import ITEM_VIEW, USER_VIEW
from pipelines.platform.features import write_feature_rows
from pipelines.platform.stream import Envelope, encode, send_at_rate
from pipelines.recsys.events import INTERACTIONS_TOPIC, ITEMS_TOPIC, InteractionEvent, ItemEvent
from pipelines.recsys.features import RecsysFeatureEngine, feature_frames
from pipelines.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore
    from kafka import KafkaProducer

SCHEMAS: dict[str, type[BaseModel]] = {INTERACTIONS_TOPIC: InteractionEvent, ITEMS_TOPIC: ItemEvent}


def replay_records(interactions: pd.DataFrame, items: pd.DataFrame | None) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) for every item creation and interaction, in the order they happened."""
    events = []
    if items is not None and not items.empty and "created_at" in items:
        for row in items.itertuples(index=False):
            at = pd.Timestamp(str(row.created_at))
            payload = {
                "item_id": str(row.item_id),
                "category": str(getattr(row, "category", "unknown")),
                "created_at": at.isoformat(),
            }
            events.append((at.value, 0, ITEMS_TOPIC, str(row.item_id).encode(), encode(payload)))
    weights = interactions["weight"] if "weight" in interactions else pd.Series(1.0, index=interactions.index)
    types = (
        interactions["event_type"]
        if "event_type" in interactions
        else pd.Series("interaction", index=interactions.index)
    )
    for user, item, at, weight, kind in zip(
        interactions["user_id"],
        interactions["item_id"],
        pd.to_datetime(interactions["timestamp"], utc=True),
        weights,
        types,
        strict=True,
    ):
        body: dict[str, object] = {
            "user_id": str(user),
            "item_id": str(item),
            "timestamp": at.isoformat(),
            "event_type": str(kind),
            "weight": float(weight),
        }
        events.append((at.value, 1, INTERACTIONS_TOPIC, str(user).encode(), encode(body)))
    events.sort(key=lambda e: (e[0], e[1]))
    return [(topic, key, value) for _, _, topic, key, value in events]


def replay_interactions(
    producer: KafkaProducer,
    interactions: pd.DataFrame,
    items: pd.DataFrame | None,
    rate: float,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Send events at `rate` per second (0 = as fast as possible); keyed by user to keep each user's order."""
    return send_at_rate(producer, replay_records(interactions, items), rate, progress)


@dataclass
class RecsysSinkStats:
    interactions: int = 0
    items: int = 0
    online_rows: int = 0
    offline_rows: int = 0
    freshness_ms: list[float] = field(default_factory=list)


class RecsysFeatureSink:
    """Engine update → Feast online write → offline append, per micro-batch."""

    def __init__(self, settings: Settings, store: FeatureStore, engine: RecsysFeatureEngine) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.stats = RecsysSinkStats()

    def __call__(self, batch: list[Envelope]) -> None:
        interactions: list[InteractionEvent] = []
        produced_ms: list[int] = []
        for envelope in batch:
            event = envelope.event
            if isinstance(event, ItemEvent):
                self.engine.add_item(event.item_id, event.category, event.created_at.timestamp())
                self.stats.items += 1
            elif isinstance(event, InteractionEvent):
                interactions.append(event)
                produced_ms.append(envelope.produced_ms)
        if not interactions:
            return
        frame = pd.DataFrame(
            {
                "user_id": [e.user_id for e in interactions],
                "item_id": [e.item_id for e in interactions],
                "timestamp": pd.to_datetime([e.timestamp for e in interactions], utc=True),
            }
        )
        user_rows, item_rows = self.engine.run(
            frame["user_id"].tolist(),
            frame["item_id"].tolist(),
            [e.timestamp.timestamp() for e in interactions],
            [e.weight for e in interactions],
        )
        users, items = feature_frames(frame, user_rows, item_rows)
        online, offline = write_feature_rows(
            self.settings, self.store, [(USER_VIEW, "user_id", users), (ITEM_VIEW, "item_id", items)]
        )
        readable_ms = time.time() * 1000
        self.stats.interactions += len(interactions)
        self.stats.online_rows += online
        self.stats.offline_rows += offline
        self.stats.freshness_ms.extend(readable_ms - np.asarray(produced_ms, dtype=float))
