"""What the monitor watches for the fraud design (pipelines/monitoring reads it through the Design contract).

Every model feature of the training reference is watched except the calendar ones (they follow the clock, not the
data), each window compared with the reference's same hours of day. Labels are chargebacks on `fraud.labels`; a
transaction without one `fraud_label_delay_days` after it counts as legitimate. Metrics are average precision and
precision@k, compared with the model's validation average precision (its `average_precision` version tag).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from pydantic import BaseModel

from pipelines.fraud.events import LABELS_TOPIC, LabelEvent
from pipelines.platform.design import MonitorSpec
from pipelines.platform.drift import REFERENCE_LABEL, DriftConfig, numeric_columns
from pipelines.settings import Settings

# Fraud features that are functions of the clock: their distribution in a window says which hours it covers.
FRAUD_CALENDAR_FEATURES = ("hour_of_day", "is_weekend", "is_night")


def _fraud_drift_config(reference: pd.DataFrame) -> DriftConfig:
    features = numeric_columns(reference, exclude=("score", REFERENCE_LABEL, *FRAUD_CALENDAR_FEATURES))
    return DriftConfig(
        columns=features,
        prediction="score",
        method="wasserstein",
        threshold=0.15,
        # 24-hour payment counts follow the weekly rhythm (weekends are busier): up to 0.21 sigma on unchanged
        # traffic, so they get a looser bar; every other feature moves less than 0.09 sigma.
        column_thresholds={"customer_tx_count_1d": 0.3, "terminal_tx_count_1d": 0.3},
        prediction_threshold=0.15,
        min_drifted=1,
        context_columns=tuple(c for c in FRAUD_CALENDAR_FEATURES if c in reference.columns),
        match_on=("hour_of_day",) if "hour_of_day" in reference.columns else (),
    )


def _fraud_label_rows(events: Sequence[BaseModel]) -> pd.DataFrame:
    labels = [e for e in events if isinstance(e, LabelEvent)]
    return pd.DataFrame(
        {
            "transaction_id": [e.transaction_id for e in labels],
            "timestamp": pd.to_datetime([e.timestamp for e in labels], utc=True),
            "label_timestamp": pd.to_datetime([e.label_timestamp for e in labels], utc=True),
            "is_fraud": [int(e.is_fraud) for e in labels],
        }
    )


def fraud_labels_for(window: pd.DataFrame, labels: pd.DataFrame | None) -> np.ndarray:
    """1 for a transaction with a chargeback, else 0 (no chargeback after the delay means legitimate)."""
    if labels is None or labels.empty:
        return np.zeros(len(window), dtype=int)
    frauds = labels.loc[labels.get("is_fraud", pd.Series(1, index=labels.index)) == 1, "transaction_id"]
    return window["entity_id"].astype(str).isin(set(frauds.astype(str))).to_numpy(dtype=int)


def _top_precision(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    if len(scores) == 0:
        return float("nan")
    top = np.argsort(-scores, kind="stable")[: max(1, min(k, len(scores)))]
    return float(labels[top].mean())


def _fraud_metrics(labels: np.ndarray, scores: np.ndarray, k: int) -> dict[str, float]:
    from pipelines.fraud.modeling import ranking_metrics

    metrics = ranking_metrics(labels, scores) if len(labels) else {"average_precision": float("nan")}
    return {
        **metrics,
        f"precision_at_{k}": _top_precision(labels, scores, k),
        "frauds": float(labels.sum()),
        "fraud_rate": float(labels.mean()) if len(labels) else float("nan"),
    }


def fraud_spec(
    label_delay_days: float = 7, k: int = 50, max_drop: float = 0.3, performance_windows: int = 6
) -> MonitorSpec:
    def performance(window: pd.DataFrame, labels: pd.DataFrame) -> dict[str, float]:
        return _fraud_metrics(fraud_labels_for(window, labels), window["score"].to_numpy(dtype=float), k)

    def baseline(reference: pd.DataFrame, rows: int) -> dict[str, float]:
        if REFERENCE_LABEL not in reference or "score" not in reference or reference.empty:
            return {}
        # precision@k of a window of `rows` ↔ precision in the same top share of the reference
        share_k = max(1, round(k * len(reference) / max(rows, 1)))
        metrics = _fraud_metrics(
            reference[REFERENCE_LABEL].to_numpy(dtype=int), reference["score"].to_numpy(dtype=float), share_k
        )
        metrics[f"precision_at_{k}"] = metrics.pop(f"precision_at_{share_k}")
        return metrics

    return MonitorSpec(
        design="fraud",
        label_topic=LABELS_TOPIC,
        label_schema=LabelEvent,
        label_delay=pd.Timedelta(days=label_delay_days),
        label_watermark_column="label_timestamp",
        drift_config=_fraud_drift_config,
        label_rows=_fraud_label_rows,
        performance=performance,
        baseline=baseline,
        primary_metric="average_precision",
        baseline_tag="average_precision",
        max_drop=max_drop,
        performance_windows=performance_windows,
        label_rate_metric="fraud_rate",
        positives_metric="frauds",
    )


def monitor_spec(settings: Settings) -> MonitorSpec:
    return fraud_spec(
        settings.fraud_label_delay_days,
        settings.monitor_fraud_k,
        settings.monitor_max_performance_drop,
        settings.monitor_performance_windows,
    )
