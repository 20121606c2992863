"""The fraud design's Kafka topics and event schemas (also the scoring service's request body)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.platform.predictions import Variant
from pipelines.platform.stream import DLQ_SUFFIX

TRANSACTIONS_TOPIC = "fraud.transactions"
LABELS_TOPIC = "fraud.labels"
PREDICTIONS_TOPIC = "fraud.predictions"  # served and shadow decisions (pipelines/platform/predictions.py)
TOPICS = (
    TRANSACTIONS_TOPIC,
    TRANSACTIONS_TOPIC + DLQ_SUFFIX,
    LABELS_TOPIC,
    LABELS_TOPIC + DLQ_SUFFIX,
)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class TransactionEvent(BaseModel):
    """A card payment as it arrives; extra fields are accepted and ignored."""

    model_config = ConfigDict(extra="ignore")

    transaction_id: str = Field(min_length=1, max_length=64)
    timestamp: datetime
    customer_id: str = Field(min_length=1, max_length=64)
    terminal_id: str = Field(min_length=1, max_length=64)
    amount: float = Field(ge=0, le=1_000_000, allow_inf_nan=False)

    _utc_timestamp = field_validator("timestamp")(_utc)


class LabelEvent(BaseModel):
    """A chargeback: a transaction confirmed as fraud, known only at `label_timestamp`."""

    model_config = ConfigDict(extra="ignore")

    transaction_id: str = Field(min_length=1, max_length=64)
    customer_id: str = Field(min_length=1, max_length=64)
    terminal_id: str = Field(min_length=1, max_length=64)
    timestamp: datetime
    label_timestamp: datetime
    is_fraud: Literal[0, 1] = 1

    _utc_timestamps = field_validator("timestamp", "label_timestamp")(_utc)


class Decision(BaseModel):
    """The response of /score; `request_id` finds its record (and its shadow's) on `fraud.predictions`."""

    transaction_id: str
    decision: Literal["approve", "review", "decline"]
    score: float
    model_version: str
    variant: Variant = "champion"  # "challenger" when a canary share served this customer
    request_id: str = ""
    reasons: list[str]
    rule: str | None = None
    latency_ms: float
