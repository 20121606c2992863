"""Fraud stream: replay a transaction file to Kafka, and the feature processor that consumes it.

`replay_transactions` sends each transaction to `fraud.transactions` and each chargeback to `fraud.labels` at its
label time, in event-time order, keyed by customer, at a chosen rate.

`FraudFeatureSink` is the processor, in two stages that any number of processes in one consumer group share:

1. **customer stage** (partitions of `fraud.transactions` and `fraud.labels`, keyed by customer): each transaction
   updates its customer's windows (`FraudFeatureEngine.customer_row`, the backfill's code); the row goes to Feast
   online (newest per customer) and offline (every row). Transactions and chargebacks are forwarded to
   `fraud.by-terminal`, keyed by terminal, with the watermark of each source partition (platform/repartition.py).
2. **terminal stage** (partitions of `fraud.by-terminal`): events are released in event-time order once every
   source partition has passed them, and update their terminal's delayed windows (`terminal_row`, `add_label`).

State (customers, terminals, the ids seen, the watermarks) is checkpointed with the source positions after every
batch (platform/state.py), so a killed processor resumes exactly where its state left off, and a rebalance moves
a partition's state to its new reader. Redelivered transactions are recognised by id; a transaction the engine
cannot take is rejected (dead-lettered) without touching the state.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from pydantic import BaseModel

from feature_repo.fraud import CUSTOMER_FEATURES, CUSTOMER_VIEW, TERMINAL_FEATURES, TERMINAL_VIEW
from pipelines.fraud.events import BY_TERMINAL_TOPIC, LABELS_TOPIC, TRANSACTIONS_TOPIC, LabelEvent, TransactionEvent
from pipelines.fraud.features import FraudFeatureEngine, backfill_features
from pipelines.platform.features import write_feature_rows
from pipelines.platform.microbatch import Rejection, clock_entries
from pipelines.platform.repartition import EventTimeBuffer, Forwarded, Forwarder, Mark, origin_name, partition_for
from pipelines.platform.sinkstate import SEEN, SinkBookkeeping
from pipelines.platform.state import Checkpoint, EntryKey, Position, StateStore, TopicPartitionKey
from pipelines.platform.stream import Envelope, encode, send_at_rate
from pipelines.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore
    from kafka import KafkaProducer

SOURCE_SCHEMAS: dict[str, type[BaseModel]] = {TRANSACTIONS_TOPIC: TransactionEvent, LABELS_TOPIC: LabelEvent}
SCHEMAS: dict[str, type[BaseModel]] = {**SOURCE_SCHEMAS, BY_TERMINAL_TOPIC: Forwarded}
ORDER_LABEL, ORDER_TRANSACTION = 0, 1  # at equal times a chargeback counts before a payment, as in the backfill


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


@dataclass
class SinkStats:
    transactions: int = 0
    labels: int = 0
    duplicates: int = 0
    online_rows: int = 0
    offline_rows: int = 0
    terminal_rows: int = 0
    late: int = 0  # released after later events (an idle source partition woke up)
    freshness_ms: list[float] = field(default_factory=list)


@dataclass
class _Customer:
    envelope: Envelope
    event: TransactionEvent
    row: tuple


class FraudFeatureSink:
    """Both stages of the fraud feature processor (see the module docstring): the platform loop's stateful sink.

    Without a `forwarder` (one process fed directly, as in unit tests) the stages run in one step: chargebacks go
    straight to their terminal and terminal rows follow arrival order.
    """

    def __init__(
        self,
        settings: Settings,
        store: FeatureStore,
        engine: FraudFeatureEngine,
        forwarder: Forwarder | None = None,
        buffer: EventTimeBuffer | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.engine = engine
        self.forwarder = forwarder
        self.buffer = buffer or EventTimeBuffer(BY_TERMINAL_TOPIC, [])
        self.books = SinkBookkeeping()
        self.stats = SinkStats()

    # -- one batch

    def __call__(self, batch: list[Envelope]) -> list[Rejection]:
        rejected: list[Rejection] = []
        customers: list[_Customer] = []
        for envelope in batch:
            event = envelope.event
            if isinstance(event, Forwarded):
                self.buffer.add(envelope)
            elif isinstance(event, LabelEvent):
                if event.is_fraud:
                    self._label(envelope, event)
            elif isinstance(event, TransactionEvent):
                key = (envelope.topic, envelope.partition)
                if event.transaction_id in self.books.seen.get(key, ()):
                    self.stats.duplicates += 1
                    continue
                try:
                    row = self.engine.customer_row(event.customer_id, event.timestamp.timestamp(), event.amount)
                except Exception as exc:  # this event only: dead-lettered, the rest of the batch goes on
                    rejected.append(Rejection(envelope, f"processing: {type(exc).__name__}: {exc}"))
                    continue
                self.books.first_time(key, event.transaction_id)
                self.books.place(key, "customer", event.customer_id)
                customers.append(_Customer(envelope, event, row))
        self._write_customers(customers)
        if self.forwarder is not None:
            self.forwarder.watermarks(self._origins(self.books.owned))
        self._release()
        return rejected

    def tick(self, caught_up: dict[TopicPartitionKey, int]) -> None:
        """After every poll: source partitions read to their end for long enough are idle; tell the second stage."""
        if self.forwarder is not None:
            read_to = {origin_name(t, p): offset for (t, p), offset in caught_up.items() if t in SOURCE_SCHEMAS}
            self.forwarder.watermarks(self._origins(self.books.owned), read_to)

    def _label(self, envelope: Envelope, event: LabelEvent) -> None:
        self.stats.labels += 1
        tx_time, label_time = event.timestamp.timestamp(), event.label_timestamp.timestamp()
        if self.forwarder is None:  # one step: the chargeback goes straight to its terminal
            self.engine.add_label(event.terminal_id, tx_time, label_time)
            self._terminal_home(TRANSACTIONS_TOPIC, envelope.partition, event.terminal_id)
            return
        origin = origin_name(envelope.topic, envelope.partition)
        self.forwarder.forward(
            event.terminal_id,
            origin,
            event.label_timestamp,
            ORDER_LABEL,
            f"L:{event.transaction_id}",
            {"terminal_id": event.terminal_id, "tx_time": tx_time},
        )
        self.books.touch((envelope.topic, envelope.partition), "newest", origin)

    def _write_customers(self, customers: list[_Customer]) -> None:
        if not customers:
            return
        rows = pd.DataFrame([c.row for c in customers], columns=CUSTOMER_FEATURES)
        rows.insert(0, "customer_id", [c.event.customer_id for c in customers])
        rows.insert(1, "event_timestamp", pd.to_datetime([c.event.timestamp for c in customers], utc=True))
        partitions = np.asarray([c.envelope.partition for c in customers])
        for partition in sorted(set(partitions.tolist())):
            self._write(TRANSACTIONS_TOPIC, partition, CUSTOMER_VIEW, "customer_id", rows[partitions == partition])
        self.stats.transactions += len(customers)
        readable_ms = time.time() * 1000
        self.stats.freshness_ms.extend(readable_ms - np.asarray([c.envelope.produced_ms for c in customers], float))
        if self.forwarder is None:  # one step: terminals in arrival order
            self._terminals([(c.envelope.partition, c.event.terminal_id, c.event.timestamp) for c in customers])
            return
        for c in customers:
            origin = origin_name(c.envelope.topic, c.envelope.partition)
            self.forwarder.forward(
                c.event.terminal_id,
                origin,
                c.event.timestamp,
                ORDER_TRANSACTION,
                f"T:{c.event.transaction_id}",
                {"terminal_id": c.event.terminal_id},
            )
            self.books.touch((c.envelope.topic, c.envelope.partition), "newest", origin)

    def _release(self) -> None:
        """The second stage: every event the watermark has passed, in event-time order."""
        items = []
        for partition, record in self.buffer.release():
            assert record.at is not None
            terminal_id = str(record.payload["terminal_id"])
            key = (BY_TERMINAL_TOPIC, partition)
            self.books.touch(key, SEEN, record.id)
            if record.order == ORDER_LABEL:
                self.engine.add_label(terminal_id, float(record.payload["tx_time"]), record.at.timestamp())
                self._terminal_home(*key, terminal_id)
            else:
                items.append((partition, terminal_id, record.at))
        self.stats.late = self.buffer.late
        self.stats.duplicates += self.buffer.duplicates
        self.buffer.duplicates = 0
        self._terminals(items, BY_TERMINAL_TOPIC)

    def _terminals(self, items: list[tuple[int, str, datetime]], topic: str = TRANSACTIONS_TOPIC) -> None:
        if not items:
            return
        rows = [self.engine.terminal_row(terminal_id, at.timestamp()) for _, terminal_id, at in items]
        frame = pd.DataFrame(rows, columns=TERMINAL_FEATURES)
        frame.insert(0, "terminal_id", [terminal_id for _, terminal_id, _ in items])
        frame.insert(1, "event_timestamp", pd.to_datetime([at for _, _, at in items], utc=True))
        partitions = np.asarray([partition for partition, _, _ in items])
        for partition, terminal_id, _ in items:
            self._terminal_home(topic, partition, terminal_id)
        for partition in sorted(set(partitions.tolist())):
            self._write(topic, partition, TERMINAL_VIEW, "terminal_id", frame[partitions == partition])
        self.stats.terminal_rows += len(items)

    def _write(self, topic: str, partition: int, view: str, key: str, rows: pd.DataFrame) -> None:
        """Online and offline, the offline part named by partition and number: a replayed batch rewrites it."""
        name = self.books.part_name(topic, partition, view)
        online, offline = write_feature_rows(self.settings, self.store, [(view, key, rows)], {view: name})
        self.stats.online_rows += online
        self.stats.offline_rows += offline

    # -- bookkeeping

    def _terminal_home(self, topic: str, partition: int, terminal_id: str) -> None:
        self.books.place((topic, partition), "terminal", terminal_id)

    @staticmethod
    def _origins(partitions: set[TopicPartitionKey]) -> set[str]:
        return {origin_name(t, p) for t, p in partitions if t in SOURCE_SCHEMAS}

    # -- checkpoints (pipelines/platform/microbatch.py: StatefulSink)

    def restore(self, checkpoint: Checkpoint, partitions: list[TopicPartitionKey]) -> None:
        """The state of newly read partitions, as their checkpoint holds it."""
        if self.forwarder is not None:
            self.forwarder.rebalanced()
        self.books.restore(checkpoint, partitions)
        for topic, partition in partitions:
            key = (topic, partition)
            for customer_id, data in checkpoint.of(topic, partition, "customer").items():
                self.engine.import_customer(customer_id, data)
                self.books.home[("customer", customer_id)] = key
            for terminal_id, data in checkpoint.of(topic, partition, "terminal").items():
                self.engine.import_terminal(terminal_id, data)
                self.books.home[("terminal", terminal_id)] = key
            if self.forwarder is not None:
                for origin, newest in checkpoint.of(topic, partition, "newest").items():
                    self.forwarder.newest[origin] = datetime.fromisoformat(newest.decode())
            if topic == BY_TERMINAL_TOPIC:
                channel = self.buffer.channel(partition)
                channel.seen = self.books.seen[key]  # the ids released: one set for the sink and the buffer
                for origin, value in checkpoint.of(topic, partition, "watermark").items():
                    mark = Mark.decode(json.loads(value))
                    channel.mark(origin, mark.at, mark.idle, mark.through)
                position = checkpoint.positions.get(key)
                if position is not None:
                    self.buffer.resume(partition, position)

    def release(self, partitions: list[TopicPartitionKey]) -> None:
        """Forget the state of partitions another processor reads now (it restores them from the checkpoint)."""
        if self.forwarder is not None:
            self.forwarder.rebalanced()
        gone = set(partitions)
        self.buffer.release_partitions({p for t, p in gone if t == BY_TERMINAL_TOPIC})
        if self.forwarder is not None:
            self.forwarder.forget(self._origins(gone))
        for kind, entity in self.books.release(gone):
            (self.engine.customers if kind == "customer" else self.engine.terminals).pop(entity, None)

    def changes(self) -> tuple[dict[EntryKey, bytes | None], dict[tuple[str, int, str], int]]:
        out, keep = self.books.changes(self._encode)
        for topic, partition in self.books.owned:
            if topic == BY_TERMINAL_TOPIC:
                for origin, mark in self.buffer.channel(partition).marks.items():
                    out[(topic, partition, "watermark", origin)] = json.dumps(mark.encode()).encode()
        return out, keep

    def _encode(self, kind: str, key: str) -> bytes | None:
        if kind == "customer":
            return self.engine.export_customer(key) if key in self.engine.customers else None
        if kind == "terminal":
            return self.engine.export_terminal(key) if key in self.engine.terminals else None
        newest = self.forwarder.newest.get(key) if self.forwarder is not None else None  # kind "newest"
        return newest.isoformat().encode() if newest is not None else None

    def positions(self, consumed: dict[TopicPartitionKey, Position]) -> dict[TopicPartitionKey, Position]:
        return self.buffer.hold_back(consumed)


def _transactions_frame(events: list[TransactionEvent]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "transaction_id": [t.transaction_id for t in events],
            "timestamp": pd.to_datetime([t.timestamp for t in events], utc=True),
            "customer_id": [t.customer_id for t in events],
            "terminal_id": [t.terminal_id for t in events],
            "amount": [t.amount for t in events],
        }
    )


def seed_state(
    state: StateStore, history: pd.DataFrame, label_delay_days: float, source_partitions: int, repartitions: int
) -> bool:
    """Checkpoint the state a history file builds, once, for every partition it belongs to; False if the processor
    already has state (then the history is not read again: the checkpoint is newer than any file)."""
    engine = warm_engine(history, label_delay_days)
    entries: dict[tuple[str, int, str, str], bytes] = {}
    for customer_id in engine.customers:
        partition = partition_for(customer_id, source_partitions)
        entries[(TRANSACTIONS_TOPIC, partition, "customer", customer_id)] = engine.export_customer(customer_id)
    for terminal_id in engine.terminals:
        partition = partition_for(terminal_id, repartitions)
        entries[(BY_TERMINAL_TOPIC, partition, "terminal", terminal_id)] = engine.export_terminal(terminal_id)
    if not history.empty:  # events years older than the history are late, from the first batch on
        newest = pd.Timestamp(history["timestamp"].max()).to_pydatetime()
        sources = [(topic, p) for topic in (TRANSACTIONS_TOPIC, LABELS_TOPIC) for p in range(source_partitions)]
        entries.update(clock_entries(sources, newest))
    return state.seed(entries)


def warm_engine(history: pd.DataFrame | None, label_delay_days: float) -> FraudFeatureEngine:
    """Window state rebuilt from a history file: a first start with no checkpoint continues from it."""
    engine = FraudFeatureEngine(label_delay_days)
    if history is not None and not history.empty:
        backfill_features(history, label_delay_days, engine=engine)
    return engine
