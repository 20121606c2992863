"""Fraud stream: replay a transaction file to Kafka, and the feature processor that consumes it.

`replay_transactions` sends each transaction to `fraud.transactions` and each chargeback to `fraud.labels` at its
label time, in event-time order, at a chosen rate. `FraudFeatureSink` is the processor's sink: it feeds the
shared `FraudFeatureEngine` (the same code as the backfill), pushes the newest row per customer and terminal to
the Feast online store and appends every row to the offline store, before the platform loop commits offsets.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pydantic import BaseModel

from feature_repo.fraud import CUSTOMER_VIEW, TERMINAL_VIEW
from pipelines.fraud.events import LABELS_TOPIC, TRANSACTIONS_TOPIC, LabelEvent, TransactionEvent
from pipelines.fraud.features import FraudFeatureEngine, backfill_features, feature_frames
from pipelines.platform.features import write_feature_rows
from pipelines.platform.stream import Envelope, encode, send_at_rate
from pipelines.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore
    from kafka import KafkaProducer

SCHEMAS: dict[str, type[BaseModel]] = {TRANSACTIONS_TOPIC: TransactionEvent, LABELS_TOPIC: LabelEvent}
# How many recent ids to remember for dropping redelivered events (at-least-once delivery).
DEDUPE_MEMORY = 2_000_000


def replay_events(transactions: pd.DataFrame) -> pd.DataFrame:
    """Transactions and chargebacks merged in the order they become known (event time, then label time)."""
    tx = transactions[["transaction_id", "timestamp", "customer_id", "terminal_id", "amount"]].copy()
    tx["topic"] = TRANSACTIONS_TOPIC
    tx["at"] = tx["timestamp"]
    frauds = transactions[transactions["is_fraud"] == 1]
    labels = frauds[["transaction_id", "timestamp", "customer_id", "terminal_id", "label_timestamp"]].copy()
    labels["is_fraud"] = 1
    labels["topic"] = LABELS_TOPIC
    labels["at"] = labels["label_timestamp"]
    merged = pd.concat([tx, labels], ignore_index=True)
    return merged.sort_values(["at", "topic"], kind="stable").reset_index(drop=True)


def _records(events: pd.DataFrame) -> list[tuple[str, bytes, bytes]]:
    out = []
    tx_cols = ["transaction_id", "timestamp", "customer_id", "terminal_id", "amount"]
    label_cols = ["transaction_id", "customer_id", "terminal_id", "timestamp", "label_timestamp", "is_fraud"]
    for row in events.itertuples(index=False):
        columns = tx_cols if row.topic == TRANSACTIONS_TOPIC else label_cols
        payload = {c: getattr(row, c) for c in columns}
        for key in ("timestamp", "label_timestamp"):
            if key in payload:
                payload[key] = payload[key].isoformat()
        out.append((str(row.topic), str(row.customer_id).encode(), encode(payload)))
    return out


def replay_transactions(
    producer: KafkaProducer,
    transactions: pd.DataFrame,
    rate: float,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Send events at `rate` per second (0 = as fast as possible); keyed by customer to keep their order."""
    return send_at_rate(producer, _records(replay_events(transactions)), rate, progress)


class _RecentIds:
    """A bounded set of ids, oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, key: str) -> bool:
        """Remember `key`; False if it was already known."""
        if key in self._ids:
            return False
        self._ids[key] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True


@dataclass
class SinkStats:
    transactions: int = 0
    labels: int = 0
    duplicates: int = 0
    online_rows: int = 0
    offline_rows: int = 0
    freshness_ms: list[float] = field(default_factory=list)


class FraudFeatureSink:
    """Engine update → Feast online push → offline append, per micro-batch."""

    def __init__(self, settings: Settings, store: FeatureStore, engine: FraudFeatureEngine) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.seen_tx = _RecentIds(DEDUPE_MEMORY)
        self.seen_labels = _RecentIds(DEDUPE_MEMORY)
        self.stats = SinkStats()

    def __call__(self, batch: list[Envelope]) -> None:
        transactions: list[TransactionEvent] = []
        produced_ms: list[int] = []
        for envelope in batch:
            event = envelope.event
            if isinstance(event, LabelEvent):
                if event.is_fraud and self.seen_labels.add(event.transaction_id):
                    self.engine.add_label(
                        event.terminal_id, event.timestamp.timestamp(), event.label_timestamp.timestamp()
                    )
                    self.stats.labels += 1
            elif isinstance(event, TransactionEvent):
                if self.seen_tx.add(event.transaction_id):
                    transactions.append(event)
                    produced_ms.append(envelope.produced_ms)
                else:
                    self.stats.duplicates += 1
        if not transactions:
            return
        frame = pd.DataFrame(
            {
                "transaction_id": [t.transaction_id for t in transactions],
                "timestamp": pd.to_datetime([t.timestamp for t in transactions], utc=True),
                "customer_id": [t.customer_id for t in transactions],
                "terminal_id": [t.terminal_id for t in transactions],
                "amount": [t.amount for t in transactions],
            }
        )
        customer_rows, terminal_rows = self.engine.run(
            frame["customer_id"].tolist(),
            frame["terminal_id"].tolist(),
            [t.timestamp.timestamp() for t in transactions],
            frame["amount"].tolist(),
        )
        customers, terminals = feature_frames(frame, customer_rows, terminal_rows)
        online, offline = write_feature_rows(
            self.settings,
            self.store,
            [(CUSTOMER_VIEW, "customer_id", customers), (TERMINAL_VIEW, "terminal_id", terminals)],
        )
        readable_ms = time.time() * 1000
        self.stats.transactions += len(transactions)
        self.stats.online_rows += online
        self.stats.offline_rows += offline
        self.stats.freshness_ms.extend(readable_ms - np.asarray(produced_ms, dtype=float))


def warm_engine(history: pd.DataFrame | None, label_delay_days: float) -> FraudFeatureEngine:
    """Rebuild window state from history (the engine keeps state in memory), so live rows continue it."""
    engine = FraudFeatureEngine(label_delay_days)
    if history is not None and not history.empty:
        backfill_features(history, label_delay_days, engine=engine)
    return engine
