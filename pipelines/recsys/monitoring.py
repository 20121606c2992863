"""What the monitor watches for the recommendation design (read through the Design contract).

The watched numbers are the request features the service logs (`REQUEST_FEATURES`), compared with the same numbers
the training run logged for a sample of its users (the first window for a model registered without them). A
recommendation is a hit when the user interacts with one of its items within the horizon; metrics are precision@k,
hit rate and nDCG@k, compared with the first matured windows (training logs no online metric).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel

from pipelines.platform.design import MonitorSpec
from pipelines.platform.drift import REFERENCE_LABEL, DriftConfig, numeric_columns
from pipelines.recsys.candidates import GENERATORS
from pipelines.recsys.events import INTERACTIONS_TOPIC, InteractionEvent
from pipelines.settings import Settings

if TYPE_CHECKING:
    from pipelines.recsys.candidates import Candidate


# What the prediction log records per request, and the training reference holds per sampled user: user-level
# numbers only (the request's user row, whether the model knows the user, where its candidates came from), so a
# shift in who asks, or in what the candidate stage finds for them, shows up without the item table.
USER_ACTIVITY = ("user_events_1d", "user_events_7d", "user_events_30d", "user_weight_30d")
REQUEST_FEATURES: tuple[str, ...] = (
    *USER_ACTIVITY,
    "user_recent_count",
    "known_user",
    *(f"candidates_{name}" for name in GENERATORS),
)


def request_features(
    user: Mapping[Any, Any] | None, known_user: bool, candidates: Sequence[Candidate]
) -> dict[str, float]:
    """The monitored numbers of one request: `user` is its online row (None without one), `candidates` its merge.

    A user without a row had no events: counts are 0, not missing, so a cold-start share reads as a distribution.
    """
    row = user or {}
    features = {name: _count(row.get(name)) for name in USER_ACTIVITY}
    recent = row.get("user_recent_items")
    features["user_recent_count"] = float(len(recent)) if isinstance(recent, list | np.ndarray) else 0.0
    features["known_user"] = float(known_user)
    made_by = [generator for _, _, generator in candidates]
    for name in GENERATORS:
        features[f"candidates_{name}"] = float(made_by.count(name))
    return features


def top_score(ranked: Sequence[Candidate], final: Sequence[Candidate]) -> float:
    """The ranker's score of the item the list starts with (re-ranking may have adjusted the one it shows)."""
    if not final:
        return 0.0
    first = final[0][0]
    return next((score for item, score, _ in ranked if item == first), final[0][1])


def _count(value: Any) -> float:
    return 0.0 if value is None or (isinstance(value, float) and np.isnan(value)) else float(value)


def interaction_rows(events: Sequence[BaseModel]) -> pd.DataFrame:
    """user_id, item_id, timestamp of the interaction events among `events`: the recommendation's labels."""
    interactions = [e for e in events if isinstance(e, InteractionEvent)]
    return pd.DataFrame(
        {
            "user_id": [e.user_id for e in interactions],
            "item_id": [e.item_id for e in interactions],
            "timestamp": pd.to_datetime([e.timestamp for e in interactions], utc=True),
        }
    )


def recsys_hits(window: pd.DataFrame, interactions: pd.DataFrame | None, horizon: pd.Timedelta) -> list[set[str]]:
    """Per recommendation: the items the user interacted with in (request time, request time + horizon]."""
    if interactions is None or interactions.empty:
        return [set() for _ in range(len(window))]
    by_user = {user: group for user, group in interactions.groupby(interactions["user_id"].astype(str))}
    out: list[set[str]] = []
    for user, moment in zip(
        window["entity_id"].astype(str), pd.to_datetime(window["timestamp"], utc=True), strict=True
    ):
        group = by_user.get(user)
        if group is None:
            out.append(set())
            continue
        inside = (group["timestamp"] > moment) & (group["timestamp"] <= moment + horizon)
        out.append(set(group.loc[inside, "item_id"].astype(str)))
    return out


def recsys_spec(
    horizon_hours: float = 24, k: int = 10, max_drop: float = 0.3, performance_windows: int = 6
) -> MonitorSpec:
    from pipelines.platform.ranking import ndcg_at_k, precision_at_k

    horizon = pd.Timedelta(hours=horizon_hours)

    def drift_config(reference: pd.DataFrame) -> DriftConfig:
        return DriftConfig(columns=numeric_columns(reference, exclude=("score", REFERENCE_LABEL)), prediction="score")

    def performance(window: pd.DataFrame, interactions: pd.DataFrame) -> dict[str, float]:
        relevant = recsys_hits(window, interactions, horizon)
        lists = [list(items) if isinstance(items, list | tuple | np.ndarray) else [] for items in window["items"]]
        if not lists:
            return {}
        return {
            f"precision_at_{k}": float(
                np.mean([precision_at_k(r, h, k) for r, h in zip(lists, relevant, strict=True)])
            ),
            f"hit_rate_at_{k}": float(np.mean([bool(set(r[:k]) & h) for r, h in zip(lists, relevant, strict=True)])),
            f"ndcg_at_{k}": float(np.mean([ndcg_at_k(r, h, k) for r, h in zip(lists, relevant, strict=True)])),
        }

    return MonitorSpec(
        design="recsys",
        label_topic=INTERACTIONS_TOPIC,
        label_schema=InteractionEvent,
        label_delay=horizon,
        label_watermark_column="timestamp",
        drift_config=drift_config,
        label_rows=interaction_rows,
        performance=performance,
        baseline=lambda reference, rows: {},  # training logs no online metric: the first matured windows are it
        primary_metric=f"hit_rate_at_{k}",
        max_drop=max_drop,
        performance_windows=performance_windows,
    )


def monitor_spec(settings: Settings) -> MonitorSpec:
    return recsys_spec(
        settings.monitor_recsys_horizon_hours,
        settings.monitor_recsys_k,
        settings.monitor_max_performance_drop,
        settings.monitor_performance_windows,
    )
