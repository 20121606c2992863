"""Builders of the records tests share: prediction records of the fraud and the recommendation services."""

from __future__ import annotations

from datetime import UTC, datetime

from pipelines.platform.predictions import PredictionRecord

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def record(
    request: str,
    score: float,
    decision: str,
    variant: str = "champion",
    served: bool = True,
    version: str = "1",
    latency: float = 2.0,
    entity: str | None = None,
    at: datetime = T0,
) -> PredictionRecord:
    return PredictionRecord(
        design="fraud",
        request_id=request,
        entity_id=entity or request,
        timestamp=at,
        model_name="fraud-xgboost",
        model_version=version,
        variant=variant,  # type: ignore[arg-type]
        served=served,
        score=score,
        decision=decision,
        latency_ms=latency,
    )


def recommendation(
    request: str, user: str, items: list[str], variant: str = "champion", served: bool = True, at: datetime = T0
) -> PredictionRecord:
    return PredictionRecord(
        design="recsys",
        request_id=request,
        entity_id=user,
        timestamp=at,
        model_name="recsys-ranker",
        model_version="1" if variant == "champion" else "2",
        variant=variant,  # type: ignore[arg-type]
        served=served,
        score=0.5,
        decision="recommend",
        items=items,
        latency_ms=10.0,
    )
