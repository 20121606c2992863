"""The recommendation design in the model lifecycle: the promotion gate's holdout and metrics, the retraining data.

The generic gate and loop live in pipelines/monitoring (gate.py, retrain.py); they reach this module through the
Design contract (pipelines/recsys/design.py).

- **Holdout**: the last `holdout_frac` of interactions in time (the temporal split of the offline evaluation); both
  registered recommenders recommend for the holdout users, scored with the shared ranking metrics.
- **Fresh data**: the history file plus every interaction on `recsys.interactions` up to the alert's stream time.
- **Challenger**: candidates and ranker fit on everything before the gate's holdout.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from pipelines.platform.design import Challenger, Evaluate, GateError, GateOptions, Holdout, RetrainInputs
from pipelines.settings import Settings

METRICS = ("ndcg", "recall", "map", "precision", "hit_rate")
_METRIC = re.compile(r"(ndcg|recall|map|precision|hit_rate)@([1-9][0-9]*)")


def check_metric(metric: str) -> str:
    if not _METRIC.fullmatch(metric):
        raise GateError(f"'{metric}' is not a recommendation gate metric; use ndcg@10, recall@10 or map@10 (any k).")
    return metric


@dataclass
class RecsysHoldout:
    relevant: dict[str, set[str]]
    users: list[str]
    catalogue_size: int
    holdout: Holdout


def recsys_holdout(
    interactions: pd.DataFrame, holdout_frac: float = 0.2, max_users: int | None = 5_000, seed: int = 7
) -> RecsysHoldout:
    """The last `holdout_frac` of interactions in time; relevance as the offline evaluation defines it."""
    from pipelines.recsys.splits import split_interactions, test_relevance

    if not 0 < holdout_frac < 1:
        raise GateError(f"--holdout-frac must lie strictly between 0 and 1, got {holdout_frac}.")
    train, test = split_interactions(interactions, "temporal", holdout_frac, seed)
    relevant = test_relevance(train, test)
    if not relevant:
        raise GateError("the holdout holds no new user-item pair to recommend; use a larger --holdout-frac.")
    if max_users is not None and len(relevant) > max_users:
        chosen = pd.Series(sorted(relevant)).sample(max_users, random_state=seed).tolist()
        relevant = {user: relevant[user] for user in chosen}
    times = pd.to_datetime(test["timestamp"], utc=True)
    holdout = Holdout(
        rows=len(test),
        start=times.min().to_pydatetime(),
        end=times.max().to_pydatetime(),
        unit="interactions",
        entities=len(relevant),
        entity_unit="users",
    )
    return RecsysHoldout(relevant, sorted(relevant), int(interactions["item_id"].nunique()), holdout)


def holdout_metrics(version: str, data: RecsysHoldout, ks: tuple[int, ...] = (10,)) -> dict[str, float]:
    """One registered version's top-k lists for the holdout users, scored with the shared ranking metrics."""
    from pipelines.platform.ranking import evaluate_rankings
    from pipelines.recsys.model import load_recommender

    recommender, _ = load_recommender(version)
    found = recommender.recommend(data.users, max(ks))
    recommended = {user: [item for item, _, _ in items] for user, items in found.items()}
    out: dict[str, float] = {}
    for k in sorted(set(ks)):
        report = evaluate_rankings(recommended, data.relevant, k, data.catalogue_size)
        for name in METRICS:
            out[f"{name}@{k}"] = float(getattr(report, name))
        out[f"coverage@{k}"] = float(report.coverage)
    return out


def prepare_gate(settings: Settings, data: pd.DataFrame, options: GateOptions) -> tuple[Holdout, Evaluate]:
    frac = settings.gate_holdout_frac if options.holdout_frac is None else options.holdout_frac
    prepared = recsys_holdout(data, frac, options.max_users, settings.seed)
    ks = tuple(sorted({10, int(options.metric.split("@")[1])}))
    return prepared.holdout, lambda version: holdout_metrics(version, prepared, ks)


def fresh_data(settings: Settings, inputs: RetrainInputs, as_of: datetime | None = None) -> pd.DataFrame:
    """Interactions in the history file and on `recsys.interactions`, up to `as_of` (the alert's stream time)."""
    from pipelines.platform.errors import InvalidInput
    from pipelines.platform.stream import read_topic
    from pipelines.recsys.events import INTERACTIONS_TOPIC, InteractionEvent

    events, _ = read_topic(settings, INTERACTIONS_TOPIC, InteractionEvent)
    streamed = pd.DataFrame(
        [e.model_dump() for e in events], columns=["user_id", "item_id", "timestamp", "event_type", "weight"]
    )
    streamed["timestamp"] = pd.to_datetime(streamed["timestamp"], utc=True)
    frames = [inputs.history, streamed]
    if as_of is not None:
        frames = [
            f[(pd.to_datetime(f["timestamp"], utc=True) <= pd.Timestamp(as_of)).to_numpy()]
            for f in frames
            if f is not None
        ]
    frames = [f for f in frames if f is not None and len(f)]
    if not frames:
        raise InvalidInput("There are no interactions to retrain on: pass --history or replay interactions first.")
    combined = pd.concat(frames, ignore_index=True)
    combined = combined.drop_duplicates(["user_id", "item_id", "timestamp"], keep="first")
    return combined.sort_values("timestamp", kind="stable").reset_index(drop=True)


def fit_challenger(settings: Settings, data: pd.DataFrame, inputs: RetrainInputs) -> Challenger:
    """Candidates and ranker fit on the interactions before the gate's holdout, registered as challenger."""
    from pipelines.platform.registry import CHALLENGER
    from pipelines.recsys.splits import split_interactions
    from pipelines.recsys.train import train_recsys

    # The gate holds out the newest share of interactions; the challenger is fit on the rest.
    train_rows, _ = split_interactions(data, "temporal", settings.gate_holdout_frac, settings.seed)
    version = train_recsys(settings, train_rows, inputs.catalogue, alias=CHALLENGER).model_version
    times = pd.to_datetime(train_rows["timestamp"], utc=True)
    span = f"{times.min():%Y-%m-%d %H:%M} → {times.max():%Y-%m-%d %H:%M}" if len(train_rows) else "empty"
    return Challenger(version, data, {"train_rows": len(train_rows), "train_span": span})


def read_data(_settings: Settings, path: Path) -> pd.DataFrame:
    """An interactions file, validated (the gate's data and the retraining loop's history)."""
    from pipelines.recsys.data import read_interactions

    return read_interactions(path)
