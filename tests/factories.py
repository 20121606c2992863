"""Builders of the records tests share: prediction records of the fraud and the recommendation services."""

from __future__ import annotations

import sys
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


class PickleWatch:
    """Counts unpickling inside a `with` block through Python's audit events: any pickle that names a class or a
    function (everything beyond plain data, and every pickle that could run code) raises `pickle.find_class`."""

    _active: list[PickleWatch] = []
    _hooked = False

    def __init__(self) -> None:
        self.classes: list[str] = []

    def __enter__(self) -> PickleWatch:
        if not PickleWatch._hooked:  # an audit hook cannot be removed: one for the whole session
            sys.addaudithook(PickleWatch._hear)
            PickleWatch._hooked = True
        PickleWatch._active.append(self)
        return self

    def __exit__(self, *_exc: object) -> None:
        PickleWatch._active.remove(self)

    @staticmethod
    def _hear(event: str, args: tuple[object, ...]) -> None:
        if event == "pickle.find_class":
            for watch in PickleWatch._active:
                watch.classes.append(f"{args[0]}.{args[1]}")
