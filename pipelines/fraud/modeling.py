"""XGBoost for imbalanced fraud data: imbalance strategies, fitting, ranking and card metrics, cost-based thresholds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.platform.errors import InvalidInput

IMBALANCE_STRATEGIES = ("none", "class_weight", "smote", "smote_class_weight")


@dataclass(frozen=True)
class XGBParams:
    n_estimators: int = 200
    max_depth: int = 6
    learning_rate: float = 0.1
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    min_child_weight: float = 1.0
    n_jobs: int = 2


def rebalance(
    features: pd.DataFrame, labels: np.ndarray, strategy: str, smote_ratio: float, seed: int
) -> tuple[pd.DataFrame, np.ndarray, float]:
    """Apply one imbalance strategy to a training fold only; return (X, y, scale_pos_weight)."""
    if strategy not in IMBALANCE_STRATEGIES:
        raise InvalidInput(f"unknown imbalance strategy '{strategy}'; choose one of {', '.join(IMBALANCE_STRATEGIES)}")
    positives = int(labels.sum())
    if positives == 0:
        raise InvalidInput("the training window holds no known fraud; use a longer window or more data")
    weight = 1.0
    negatives = len(labels) - positives
    target = int(smote_ratio * negatives)  # minority size SMOTE should reach
    if strategy.startswith("smote") and target > positives:  # a fold already at the ratio is left alone
        from imblearn.over_sampling import SMOTE

        k_neighbors = max(1, min(5, positives - 1))
        sampler = SMOTE(sampling_strategy={1: target}, k_neighbors=k_neighbors, random_state=seed)
        resampled_x, resampled_y = sampler.fit_resample(features.to_numpy(dtype=np.float32), labels)
        features = pd.DataFrame(resampled_x, columns=features.columns)
        labels = np.asarray(resampled_y)
    if strategy.endswith("class_weight"):
        positives = int(labels.sum())
        weight = (len(labels) - positives) / positives
    return features, labels, weight


def fit_classifier(
    features: pd.DataFrame, labels: np.ndarray, strategy: str, params: XGBParams, smote_ratio: float, seed: int
) -> Any:
    from xgboost import XGBClassifier

    x, y, weight = rebalance(features, labels, strategy, smote_ratio, seed)
    model = XGBClassifier(
        n_estimators=params.n_estimators,
        max_depth=params.max_depth,
        learning_rate=params.learning_rate,
        subsample=params.subsample,
        colsample_bytree=params.colsample_bytree,
        min_child_weight=params.min_child_weight,
        n_jobs=params.n_jobs,
        tree_method="hist",
        scale_pos_weight=weight,
        eval_metric="aucpr",
        random_state=seed,
    )
    model.fit(x, y)
    return model


def ranking_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    if labels.min() == labels.max():
        return {"average_precision": float("nan"), "roc_auc": float("nan")}
    return {
        "average_precision": float(average_precision_score(labels, scores)),
        "roc_auc": float(roc_auc_score(labels, scores)),
    }


def precision_recall_at(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    flagged = scores >= threshold
    true_positive = int((flagged & (labels == 1)).sum())
    return {
        "precision": true_positive / int(flagged.sum()) if flagged.any() else 0.0,
        "recall": true_positive / int(labels.sum()) if labels.any() else 0.0,
        "flagged_share": float(flagged.mean()),
    }


def card_precision_at_k(frame: pd.DataFrame, k: int = 100, card: str = "customer_id") -> float:
    """Mean over days of the share of truly compromised cards among the k highest-scored cards that day.

    `frame` holds `day`, the card column, `score` and `label`; a card's daily score is its highest one.
    """
    daily = frame.groupby(["day", card], sort=False).agg(score=("score", "max"), label=("label", "max"))
    per_day = daily.sort_values("score", ascending=False).groupby(level="day", sort=False).head(k)
    return float(per_day.groupby(level="day")["label"].sum().div(k).mean()) if len(per_day) else float("nan")


def cost_curve(
    labels: np.ndarray, scores: np.ndarray, cost_missed: float, cost_false_alarm: float, points: int = 200
) -> pd.DataFrame:
    """Total cost of each threshold: missed frauds × their cost + false alarms × theirs."""
    thresholds = np.unique(np.quantile(scores, np.linspace(0.5, 1.0, points)))
    thresholds = np.unique(np.concatenate([thresholds, np.linspace(0.01, 0.99, 99)]))
    order = np.argsort(scores)
    sorted_scores, sorted_labels = scores[order], labels[order]
    positives_below = np.concatenate([[0], np.cumsum(sorted_labels)])
    below = np.searchsorted(sorted_scores, thresholds, side="left")
    missed = positives_below[below]
    flagged = len(scores) - below
    caught = int(labels.sum()) - missed
    false_alarms = flagged - caught
    cost = missed * cost_missed + false_alarms * cost_false_alarm
    return pd.DataFrame(
        {"threshold": thresholds, "cost": cost, "missed": missed, "false_alarms": false_alarms, "flagged": flagged}
    )


def choose_threshold(curve: pd.DataFrame) -> float:
    return float(curve["threshold"].to_numpy()[int(np.argmin(curve["cost"].to_numpy()))])


def plot_pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """One precision-recall curve per strategy; `curves` maps name -> (labels, scores)."""
    from matplotlib.figure import Figure
    from sklearn.metrics import average_precision_score, precision_recall_curve

    figure = Figure(figsize=(6, 4.5))
    axes = figure.subplots()
    for name, (labels, scores) in curves.items():
        precision, recall, _ = precision_recall_curve(labels, scores)
        axes.plot(recall, precision, label=f"{name} (AP {average_precision_score(labels, scores):.3f})")
    axes.set(xlabel="recall", ylabel="precision", title=title, xlim=(0, 1), ylim=(0, 1.02))
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def plot_cost_curve(curve: pd.DataFrame, threshold: float, path: Path, title: str) -> Path:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))
    axes = figure.subplots()
    axes.plot(curve["threshold"], curve["cost"])
    axes.axvline(threshold, color="red", linestyle="--", label=f"chosen {threshold:.3f}")
    axes.set(xlabel="decision threshold", ylabel="total cost", title=title)
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def time_ordered_split(
    times: pd.Series, valid_fraction: float, gap: pd.Timedelta
) -> tuple[np.ndarray, np.ndarray, pd.Timestamp]:
    """Train on the earliest rows, validate on the latest; a gap (the label delay) separates them."""
    times = pd.to_datetime(times, utc=True)
    start, end = times.min(), times.max()
    split = start + (end - start) * (1 - valid_fraction)
    train = (times < split - gap).to_numpy()
    valid = (times >= split).to_numpy()
    return train, valid, split
