"""Recommendation stream: replay interactions (and new catalogue items) to Kafka, and the feature processor sink.

`replay_interactions` sends items to `recsys.items` when they are created and interactions (with their ids) to
`recsys.interactions`, in time order, at a chosen rate. `RecsysFeatureSink` feeds the shared
`RecsysFeatureEngine` (the same code as the backfill), writes through the platform's `write_feature_rows`, and is
checkpointed with the source positions (pipelines/platform/state.py): a restart resumes from the checkpoint and
an interaction delivered twice counts once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pydantic import BaseModel

from feature_repo.recsys import ITEM_VIEW, USER_VIEW
from pipelines.platform.features import write_feature_rows
from pipelines.platform.microbatch import clock_entries
from pipelines.platform.sinkstate import SinkBookkeeping
from pipelines.platform.state import Checkpoint, EntryKey, Position, StateStore, TopicPartitionKey
from pipelines.platform.stream import Envelope, encode, send_at_rate
from pipelines.recsys.data import interaction_ids
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
    ids = interactions["interaction_id"] if "interaction_id" in interactions else interaction_ids(interactions)
    for user, item, at, weight, kind, interaction_id in zip(
        interactions["user_id"],
        interactions["item_id"],
        pd.to_datetime(interactions["timestamp"], utc=True),
        weights,
        types,
        ids,
        strict=True,
    ):
        body: dict[str, object] = {
            "user_id": str(user),
            "item_id": str(item),
            "timestamp": at.isoformat(),
            "event_type": str(kind),
            "weight": float(weight),
            "interaction_id": str(interaction_id),
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
    duplicates: int = 0
    online_rows: int = 0
    offline_rows: int = 0
    freshness_ms: list[float] = field(default_factory=list)


USER, ITEM, CATALOGUE = "user", "item", "catalogue"


class RecsysFeatureSink:
    """Engine update → Feast online write → offline file per partition and batch; the platform loop's stateful sink.

    User and item window states and the interaction ids counted live in the checkpoint of the interactions
    partition, item categories and creation times in that of the items partition. Both topics have one partition,
    and Kafka's range assignment gives partition 0 of both to the same processor: a second processor in the group
    is a standby that takes over when the first dies (item features keyed by item would need a repartition by item,
    as the fraud design does for terminals, to spread users over several partitions).
    """

    def __init__(self, settings: Settings, store: FeatureStore, engine: RecsysFeatureEngine) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.books = SinkBookkeeping()
        self.catalogue: dict[str, tuple[str, float]] = {}  # item → (category, created at) from recsys.items
        self.stats = RecsysSinkStats()

    def __call__(self, batch: list[Envelope]) -> None:
        interactions: list[Envelope] = []
        for envelope in batch:
            event, key = envelope.event, (envelope.topic, envelope.partition)
            if isinstance(event, ItemEvent):
                self.engine.add_item(event.item_id, event.category, event.created_at.timestamp())
                self.catalogue[event.item_id] = (event.category, event.created_at.timestamp())
                self.books.place(key, CATALOGUE, event.item_id)
                self.books.place(key, ITEM, event.item_id)  # its creation time is part of the item's state
                self.stats.items += 1
            elif isinstance(event, InteractionEvent):
                if self.books.first_time(key, event.event_id):
                    interactions.append(envelope)
                else:
                    self.stats.duplicates += 1
        for partition in sorted({e.partition for e in interactions}):
            self._interactions(partition, [e for e in interactions if e.partition == partition])

    def _interactions(self, partition: int, envelopes: list[Envelope]) -> None:
        events = [e.event for e in envelopes]
        assert all(isinstance(e, InteractionEvent) for e in events)
        frame = pd.DataFrame(
            {
                "user_id": [e.user_id for e in events],  # type: ignore[attr-defined]
                "item_id": [e.item_id for e in events],  # type: ignore[attr-defined]
                "timestamp": pd.to_datetime([e.timestamp for e in events], utc=True),  # type: ignore[attr-defined]
            }
        )
        user_rows, item_rows = self.engine.run(
            frame["user_id"].tolist(),
            frame["item_id"].tolist(),
            [e.timestamp.timestamp() for e in events],  # type: ignore[attr-defined]
            [e.weight for e in events],  # type: ignore[attr-defined]
        )
        key = (INTERACTIONS_TOPIC, partition)
        for user_id, item_id in zip(frame["user_id"], frame["item_id"], strict=True):
            self.books.place(key, USER, user_id)
            self.books.place(key, ITEM, item_id)
        users, items = feature_frames(frame, user_rows, item_rows)
        names = {view: self.books.part_name(INTERACTIONS_TOPIC, partition, view) for view in (USER_VIEW, ITEM_VIEW)}
        online, offline = write_feature_rows(
            self.settings, self.store, [(USER_VIEW, "user_id", users), (ITEM_VIEW, "item_id", items)], names
        )
        readable_ms = time.time() * 1000
        self.stats.interactions += len(events)
        self.stats.online_rows += online
        self.stats.offline_rows += offline
        self.stats.freshness_ms.extend(readable_ms - np.asarray([e.produced_ms for e in envelopes], dtype=float))

    # -- checkpoints (pipelines/platform/microbatch.py: StatefulSink)

    def restore(self, checkpoint: Checkpoint, partitions: list[TopicPartitionKey]) -> None:
        self.books.restore(checkpoint, partitions)
        for topic, partition in partitions:
            key = (topic, partition)
            for item_id, data in checkpoint.of(topic, partition, CATALOGUE).items():
                category, created_at = json.loads(data)
                self.catalogue[item_id] = (category, created_at)
                self.engine.add_item(item_id, category, created_at)
                self.books.home[(CATALOGUE, item_id)] = key
            for user_id, data in checkpoint.of(topic, partition, USER).items():
                self.engine.import_user(user_id, data)
                self.books.home[(USER, user_id)] = key
            for item_id, data in checkpoint.of(topic, partition, ITEM).items():
                self.engine.import_item(item_id, data)
                self.books.home[(ITEM, item_id)] = key

    def release(self, partitions: list[TopicPartitionKey]) -> None:
        for kind, entity in self.books.release(partitions):
            if kind == USER:
                self.engine.users.pop(entity, None)
            elif kind == ITEM:
                self.engine.items.pop(entity, None)
            else:
                self.catalogue.pop(entity, None)

    def changes(self) -> tuple[dict[EntryKey, bytes | None], dict[tuple[str, int, str], int]]:
        return self.books.changes(self._encode)

    def _encode(self, kind: str, key: str) -> bytes | None:
        if kind == USER:
            return self.engine.export_user(key) if key in self.engine.users else None
        if kind == ITEM:
            return self.engine.export_item(key) if key in self.engine.items else None
        entry = self.catalogue.get(key)
        return json.dumps(list(entry)).encode() if entry is not None else None

    def positions(self, consumed: dict[TopicPartitionKey, Position]) -> dict[TopicPartitionKey, Position]:
        return consumed


def seed_state(state: StateStore, engine: RecsysFeatureEngine) -> bool:
    """Checkpoint the state a history file built, once; False if the processor already has state (then the
    history is not read again: the checkpoint is newer than any file)."""
    entries: dict[EntryKey, bytes] = {}
    for user_id in engine.users:
        entries[(INTERACTIONS_TOPIC, 0, USER, user_id)] = engine.export_user(user_id)
    for item_id in engine.items:
        entries[(INTERACTIONS_TOPIC, 0, ITEM, item_id)] = engine.export_item(item_id)
    if engine.users:  # events far older than the history are late, from the first batch on
        newest = datetime.fromtimestamp(max(u.clock for u in engine.users.values()), UTC)
        entries.update(clock_entries([(INTERACTIONS_TOPIC, 0), (ITEMS_TOPIC, 0)], newest))
    return state.seed(entries)
