"""The fraud design's Kafka topics and event schemas (also the scoring service's request body)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.platform.events import Amount, EntityId, EventTime
from pipelines.platform.predictions import Variant
from pipelines.platform.stream import DLQ_SUFFIX

TRANSACTIONS_TOPIC = "fraud.transactions"
LABELS_TOPIC = "fraud.labels"
PREDICTIONS_TOPIC = "fraud.predictions"  # served and shadow decisions (pipelines/platform/predictions.py)
# Transactions and chargebacks again, keyed by terminal: terminal features are computed after this repartition.
BY_TERMINAL_TOPIC = "fraud.by-terminal"
TOPICS = (
    TRANSACTIONS_TOPIC,
    TRANSACTIONS_TOPIC + DLQ_SUFFIX,
    LABELS_TOPIC,
    LABELS_TOPIC + DLQ_SUFFIX,
    BY_TERMINAL_TOPIC,
    BY_TERMINAL_TOPIC + DLQ_SUFFIX,
)
# Split into `stream_partitions` partitions (processors in one group share them); the others have one.
PARTITIONED_TOPICS = (TRANSACTIONS_TOPIC, LABELS_TOPIC, BY_TERMINAL_TOPIC)


class TransactionEvent(BaseModel):
    """A card payment as it arrives; extra fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    transaction_id: EntityId
    timestamp: EventTime
    customer_id: EntityId
    terminal_id: EntityId
    amount: Amount = Field(ge=0, le=1_000_000)


class LabelEvent(BaseModel):
    """A chargeback: a transaction confirmed as fraud, known only at `label_timestamp`."""

    model_config = ConfigDict(extra="ignore")

    transaction_id: EntityId
    customer_id: EntityId
    terminal_id: EntityId
    timestamp: EventTime
    label_timestamp: EventTime
    is_fraud: Literal[0, 1] = 1

    @property
    def event_time(self) -> datetime:
        """When it became known: where a chargeback sits in the stream."""
        return self.label_timestamp


class Decision(BaseModel):
    """The response of /score; `request_id` finds its record (and its shadow's) on `fraud.predictions`."""

    transaction_id: str
    decision: Literal["approve", "review", "decline"]
    score: float | None  # None when degraded: the rules decided without a model score
    model_version: str
    variant: Variant = "champion"  # "challenger" when a canary share served this customer
    request_id: str = ""
    reasons: list[str]
    rule: str | None = None
    latency_ms: float
    degraded: bool = False  # True: the features could not be read in time, the rules alone decided
    degraded_reason: str = ""  # why, in one sentence
