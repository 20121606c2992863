"""The prediction log: one record per prediction a service makes, served or shadow, on `<design>.predictions`.

It is the contract between serving and monitoring: the services write it (features used, score, decision,
model version and variant, latency), the monitor reads it in windows and joins the labels that arrive later
(fraud chargebacks on `fraud.labels`, recommendation clicks/purchases on `recsys.interactions`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipelines.platform.events import EntityId, EventTime

ALERTS_TOPIC = "monitoring.alerts"

Variant = Literal["champion", "challenger"]


def predictions_topic(design: str) -> str:
    """`<design>.predictions`: where a design's services log every prediction."""
    return f"{design}.predictions"


class PredictionRecord(BaseModel):
    """One model's answer to one request.

    `served` is False for a shadow prediction (the challenger scoring the same request without affecting the
    response); a canary request served by the challenger has `variant="challenger"` and `served=True`.
    `request_id` is shared by the served and the shadow record of the same request, so they can be paired.
    """

    model_config = ConfigDict(extra="ignore")

    design: str = Field(pattern=r"^[a-z][a-z0-9_]{0,31}$")
    request_id: EntityId
    entity_id: EntityId  # transaction_id (fraud) or user_id (recsys)
    timestamp: EventTime  # event time of the request (the transaction's time; the request time for recsys)
    model_name: str
    model_version: str
    variant: Variant = "champion"
    served: bool = True
    features: dict[str, float | None] = Field(default_factory=dict)
    score: float
    decision: str  # approve | review | decline (fraud); "recommend" (recsys)
    items: list[str] = Field(default_factory=list)  # recommended item ids, best first (recsys)
    latency_ms: float
