"""The monitor: prediction logs in count-based windows → drift, data quality, delayed-label performance → reports,
alerts on `monitoring.alerts` and Prometheus gauges.

One loop serves both designs; what differs lives in a `MonitorSpec`:

- fraud: watch every model feature of the training reference except the calendar ones (they follow the clock,
  not the data), compare each window with the reference's same hours of day; labels are chargebacks on
  `fraud.labels`, a transaction without one `fraud_label_delay_days` after it counts as legitimate; metrics are
  average precision and precision@k, compared with the model's validation average precision;
- recsys: watch the request features the service logs (`pipelines.recsys.serving.REQUEST_FEATURES`) against
  the same numbers the training run logged for a sample of its users (the first window for a model registered
  without them); a recommendation is a hit when the user interacts with one of its items within the horizon;
  metrics are precision@k, hit rate and nDCG@k, compared with the first matured windows.

Performance is reported for a window only once its labels are complete in event time: when the label stream's
watermark (the newest label time seen) passes the window's last event time plus the label delay. A single window
of 5,000 transactions holds about 40 frauds, too few for a stable average precision: on unchanged simulated traffic
it fell up to 46% below the reference's value in single windows, 34% over 4 pooled windows and 16% over 6
(benchmarks/drift_detection.py). So decay is judged on the last 6 matured windows pooled (30,000 transactions)
and means a drop of more than 30%.

`evaluate_window` is the pure core (no Kafka, no files): scenario tests call it with frames they build.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel

from pipelines.fraud.events import LABELS_TOPIC, LabelEvent
from pipelines.platform.drift import (
    DriftConfig,
    DriftSummary,
    evaluate_drift,
    load_reference,
    numeric_columns,
    version_tags,
    write_json,
    write_report,
)
from pipelines.platform.predictions import ALERTS_TOPIC, PREDICTION_TOPICS, PredictionRecord
from pipelines.recsys.events import INTERACTIONS_TOPIC, InteractionEvent
from pipelines.settings import Settings

if TYPE_CHECKING:
    from kafka import KafkaProducer

    from pipelines.platform.stream import Envelope

AlertKind = Literal["data_drift", "prediction_drift", "data_quality", "performance_decay", "label_shift"]
ALERT_KINDS: tuple[AlertKind, ...] = (
    "data_drift",
    "prediction_drift",
    "data_quality",
    "performance_decay",
    "label_shift",
)
# Columns a window frame carries besides the model features and the score; never tested for drift.
META_COLUMNS = (
    "request_id",
    "entity_id",
    "timestamp",
    "model_name",
    "model_version",
    "variant",
    "served",
    "decision",
    "items",
    "latency_ms",
    "design",
)
LABEL_COLUMN = "label"  # the reference's outcome column (fraud)
# Fraud features that are functions of the clock: their distribution in a window says which hours it covers.
FRAUD_CALENDAR_FEATURES = ("hour_of_day", "is_weekend", "is_night")


class Alert(BaseModel):
    """One threshold crossed in one window, as published on `monitoring.alerts`."""

    design: str
    window: int
    kind: AlertKind
    scores: dict[str, float | None]
    thresholds: dict[str, float | None] = {}
    model_version: str | None
    event_time_start: datetime | None
    event_time_end: datetime | None
    message: str
    detected_at: datetime
    # The stream's clock when the alert was raised: the window's end for drift and quality, the label watermark
    # for label-based alerts (a window's labels mature a delay after it). Replays compare alerts on this clock.
    stream_time: datetime | None = None


# ----------------------------------------------------------------------------------------------------------
# Design specs


@dataclass(frozen=True)
class MonitorSpec:
    """What one design monitors; the loop and the reports are shared."""

    design: str
    label_topic: str
    label_schema: type[BaseModel]
    label_delay: pd.Timedelta  # a window's labels are complete this long after its last event
    label_watermark_column: str  # the label frame's column whose maximum is the label stream's watermark
    drift_config: Callable[[pd.DataFrame], DriftConfig]  # from the reference frame
    label_rows: Callable[[Sequence[BaseModel]], pd.DataFrame]  # label events → label frame
    performance: Callable[[pd.DataFrame, pd.DataFrame], dict[str, float]]  # window frame + label frame → metrics
    baseline: Callable[[pd.DataFrame, int], dict[str, float]]  # reference, rows → expected metrics ({} unknown)
    primary_metric: str
    max_drop: float = 0.3  # relative drop of the primary metric that counts as decay
    performance_windows: int = 6  # matured windows pooled for the decay decision
    # A sudden collapse (a new attack the model cannot see) should not wait for six windows: the last
    # `fast_windows` pooled, more than `fast_max_drop` below the baseline, also count as decay.
    fast_windows: int = 2
    fast_max_drop: float = 0.5
    # With few positives a metric is noise: the fast pool grows (up to `performance_windows`) until it holds this
    # many (the spec's `positives_metric` counts them; None: `fast_windows` as they are).
    fast_min_positives: int = 40
    positives_metric: str | None = None
    # Label (prior) shift: the positive rate of the last `fast_windows` matured windows against the reference's.
    label_rate_metric: str | None = None
    label_shift_ratio: float = 1.5  # rate ratio beyond which (either way) the shift counts ...
    # ... when a two-proportion z-test agrees it is not noise. 4.5, not 4: unchanged simulated traffic reached
    # z = -4.2 over two low-fraud windows (0.5 % vs 0.94 %); the new-fraud-pattern test's first alert has z = 5.1.
    label_shift_z: float = 4.5


def _fraud_drift_config(reference: pd.DataFrame) -> DriftConfig:
    features = numeric_columns(reference, exclude=("score", LABEL_COLUMN, *FRAUD_CALENDAR_FEATURES))
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
    from pipelines.platform.training import ranking_metrics

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
        if LABEL_COLUMN not in reference or "score" not in reference or reference.empty:
            return {}
        # precision@k of a window of `rows` ↔ precision in the same top share of the reference
        share_k = max(1, round(k * len(reference) / max(rows, 1)))
        metrics = _fraud_metrics(
            reference[LABEL_COLUMN].to_numpy(dtype=int), reference["score"].to_numpy(dtype=float), share_k
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
        max_drop=max_drop,
        performance_windows=performance_windows,
        label_rate_metric="fraud_rate",
        positives_metric="frauds",
    )


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
        return DriftConfig(columns=numeric_columns(reference, exclude=("score", LABEL_COLUMN)), prediction="score")

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


def spec_for(design: str, settings: Settings) -> MonitorSpec:
    if design == "fraud":
        return fraud_spec(
            settings.fraud_label_delay_days,
            settings.monitor_fraud_k,
            settings.monitor_max_performance_drop,
            settings.monitor_performance_windows,
        )
    if design == "recsys":
        return recsys_spec(
            settings.monitor_recsys_horizon_hours,
            settings.monitor_recsys_k,
            settings.monitor_max_performance_drop,
            settings.monitor_performance_windows,
        )
    raise ValueError(f"Unknown design '{design}'; choose fraud or recsys.")


# ----------------------------------------------------------------------------------------------------------
# One window, pure


@dataclass
class WindowResult:
    design: str
    window: int
    rows: int
    start: datetime | None
    end: datetime | None
    model_version: str | None
    model_versions: dict[str, int]
    reference: str
    drift: DriftSummary
    performance: dict[str, float] | None = None
    rolling: dict[str, float] | None = None  # pooled over the last matured windows: what decay is judged on
    rolling_windows: int = 0
    baseline: dict[str, float] = field(default_factory=dict)
    performance_decay: bool = False
    alerts: list[Alert] = field(default_factory=list)
    html: str | None = None
    json: str | None = None

    @property
    def kinds(self) -> list[str]:
        return [a.kind for a in self.alerts]

    def to_dict(self) -> dict[str, Any]:
        return {
            "design": self.design,
            "window": self.window,
            "rows": self.rows,
            "event_time_start": self.start.isoformat() if self.start else None,
            "event_time_end": self.end.isoformat() if self.end else None,
            "model_version": self.model_version,
            "model_versions": self.model_versions,
            "reference": self.reference,
            "drift": self.drift.to_dict(),
            "performance": self.performance,
            "rolling_performance": self.rolling,
            "rolling_windows": self.rolling_windows,
            "baseline": self.baseline,
            "performance_decay": self.performance_decay,
            "alerts": [json.loads(a.model_dump_json()) for a in self.alerts],
            "html": self.html,
        }


def _times(frame: pd.DataFrame) -> tuple[datetime | None, datetime | None]:
    if "timestamp" not in frame or frame.empty:
        return None, None
    stamps = pd.to_datetime(frame["timestamp"], utc=True)
    return stamps.min().to_pydatetime(), stamps.max().to_pydatetime()


def _versions(frame: pd.DataFrame) -> dict[str, int]:
    if "model_version" not in frame:
        return {}
    return {str(k): int(v) for k, v in frame["model_version"].astype(str).value_counts().items()}


def feature_frame(window_frame: pd.DataFrame) -> pd.DataFrame:
    """The model features and the score of a window frame, without the record's bookkeeping columns."""
    return window_frame.drop(columns=[c for c in META_COLUMNS if c in window_frame.columns])


def _alert(
    result: WindowResult,
    kind: AlertKind,
    scores: dict[str, float | None],
    thresholds: dict[str, float | None],
    message: str,
) -> Alert:
    return Alert(
        design=result.design,
        window=result.window,
        kind=kind,
        scores=scores,
        thresholds=thresholds,
        model_version=result.model_version,
        event_time_start=result.start,
        event_time_end=result.end,
        message=message,
        detected_at=datetime.now(UTC),
        stream_time=result.end,
    )


def _drift_alerts(result: WindowResult) -> list[Alert]:
    drift, alerts = result.drift, []
    # Quality first: a consumer (the retraining loop) then knows a window's drift comes from a broken feed.
    if drift.findings:
        alerts.append(
            _alert(
                result,
                "data_quality",
                {f"{f.kind}:{f.column}": f.value for f in drift.findings},
                {},
                " ".join(f.message for f in drift.findings[:3])
                + (f" (+{len(drift.findings) - 3} more)" if len(drift.findings) > 3 else ""),
            )
        )
    if drift.data_drift:
        drifted = {name: drift.features[name] for name in drift.drifted_features}
        alerts.append(
            _alert(
                result,
                "data_drift",
                {n: round(d.score, 4) for n, d in drifted.items()},
                {n: d.threshold for n, d in drifted.items()},
                f"{len(drifted)} feature(s) drifted in {result.design} window {result.window}: "
                + ", ".join(f"{n} {d.score:.3f} > {d.threshold:.2f}" for n, d in drifted.items())
                + ".",
            )
        )
    if drift.prediction_drift and drift.prediction:
        p = drift.prediction
        alerts.append(
            _alert(
                result,
                "prediction_drift",
                {p.column: round(p.score, 4)},
                {p.column: p.threshold},
                f"The {result.design} model's {p.column} drifted in window {result.window}: "
                f"{p.score:.3f} > {p.threshold:.2f}.",
            )
        )
    return alerts


def judge_performance(
    spec: MonitorSpec, metrics: dict[str, float], baseline: dict[str, float], max_drop: float | None = None
) -> bool:
    """Decay: the primary metric fell more than `max_drop` (relative; the spec's by default) below the baseline."""
    value, expected = metrics.get(spec.primary_metric), baseline.get(spec.primary_metric)
    if value is None or expected is None or not math.isfinite(value) or not math.isfinite(expected) or expected <= 0:
        return False
    return value < (1 - (spec.max_drop if max_drop is None else max_drop)) * expected


def label_shift(
    positives: float, rows: int, reference_rate: float, reference_rows: int, ratio: float, z_min: float
) -> tuple[bool, float, float]:
    """(shifted, rate ratio, z) of a window's positive rate against the reference's.

    Both conditions must hold: the rate moved by more than `ratio` either way (a size that matters), and a
    two-proportion z-test puts it beyond `z_min` standard errors (not the noise of a few dozen frauds).
    """
    if rows <= 0 or reference_rows <= 0 or not 0 < reference_rate < 1:
        return False, float("nan"), float("nan")
    rate = positives / rows
    pooled = (positives + reference_rate * reference_rows) / (rows + reference_rows)
    error = math.sqrt(pooled * (1 - pooled) * (1 / rows + 1 / reference_rows))
    z = (rate - reference_rate) / error if error > 0 else 0.0
    change = rate / reference_rate
    return (change >= ratio or change <= 1 / ratio) and abs(z) >= z_min, change, z


def _decay_alert(
    spec: MonitorSpec, result: WindowResult, metrics: dict[str, float], windows: int, max_drop: float | None = None
) -> Alert:
    name = spec.primary_metric
    drop = spec.max_drop if max_drop is None else max_drop
    value, expected = metrics[name], result.baseline[name]
    return _alert(
        result,
        "performance_decay",
        {name: round(value, 4), f"baseline_{name}": round(expected, 4)},
        {f"min_{name}": round((1 - drop) * expected, 4)},
        f"{result.design} {name} over {windows} matured window(s) ending at window {result.window} is {value:.3f}, "
        f"more than {drop:.0%} below the baseline {expected:.3f}.",
    )


def evaluate_window(
    spec: MonitorSpec,
    reference: pd.DataFrame,
    window_frame: pd.DataFrame,
    labels: pd.DataFrame | None = None,
    *,
    baseline: dict[str, float] | None = None,
    window: int = 1,
    reference_name: str = "reference",
) -> WindowResult:
    """Drift and data quality of one window against the reference and, with labels, its performance.

    `window_frame` holds the model features and `score` (plus optional record columns such as `entity_id`,
    `timestamp`, `model_version`, `items`); `labels` is a frame of the design's label events (fraud:
    `transaction_id` of chargebacks; recsys: `user_id, item_id, timestamp`), assumed complete for the window.
    Decay is judged on this window alone: pass a frame large enough for a stable metric.
    """
    reference_features = feature_frame(reference)
    current = feature_frame(window_frame)
    drift = evaluate_drift(reference_features, current, spec.drift_config(reference_features))
    start, end = _times(window_frame)
    versions = _versions(window_frame)
    result = WindowResult(
        design=spec.design,
        window=window,
        rows=len(window_frame),
        start=start,
        end=end,
        model_version=max(versions, key=lambda v: versions[v]) if versions else None,
        model_versions=versions,
        reference=reference_name,
        drift=drift,
        baseline=dict(baseline) if baseline is not None else spec.baseline(reference, len(window_frame)),
    )
    result.alerts = _drift_alerts(result)
    if labels is not None:
        result.performance = spec.performance(window_frame, labels)
        result.rolling, result.rolling_windows = result.performance, 1
        result.performance_decay = judge_performance(spec, result.performance, result.baseline)
        if result.performance_decay:
            result.alerts.append(_decay_alert(spec, result, result.performance, 1))
    return result


# ----------------------------------------------------------------------------------------------------------
# Prometheus


class MonitorMetrics:
    """The monitor's gauges in their own registry (several monitors can live in one test process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.drift_score = Gauge(
            "mlsd_drift_score",
            "Latest drift score per feature (prediction included)",
            ["design", "feature"],
            registry=self.registry,
        )
        self.drift_detected = Gauge(
            "mlsd_drift_detected",
            "1 if the latest window crossed the threshold of this kind",
            ["design", "kind"],
            registry=self.registry,
        )
        self.performance = Gauge(
            "mlsd_window_performance", "Latest matured window's metric", ["design", "metric"], registry=self.registry
        )
        self.windows = Counter("mlsd_monitor_windows", "Windows evaluated", ["design"], registry=self.registry)
        self._server: Any = None

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        from pipelines.platform.metrics import start_metrics_server

        self._server = start_metrics_server(port, self.registry, host)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def window(self, result: WindowResult) -> None:
        drift = result.drift
        for name, column in drift.features.items():
            self.drift_score.labels(result.design, name).set(column.score)
        if drift.prediction:
            self.drift_score.labels(result.design, drift.prediction.column).set(drift.prediction.score)
        flags = {
            "data_drift": drift.data_drift,
            "prediction_drift": drift.prediction_drift,
            "data_quality": not drift.quality_ok,
        }
        for kind, flag in flags.items():
            self.drift_detected.labels(result.design, kind).set(int(flag))
        self.windows.labels(result.design).inc()

    def matured(self, result: WindowResult) -> None:
        for name, value in (result.performance or {}).items():
            if value is not None and math.isfinite(value):
                self.performance.labels(result.design, name).set(value)
        self.drift_detected.labels(result.design, "performance_decay").set(int(result.performance_decay))

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()


# ----------------------------------------------------------------------------------------------------------
# The loop


def records_frame(records: Iterable[PredictionRecord]) -> pd.DataFrame:
    """Prediction records as one row each: the feature dict spread into columns, then score and bookkeeping."""
    rows = [
        {
            **{name: math.nan if value is None else float(value) for name, value in r.features.items()},
            "score": r.score,
            "request_id": r.request_id,
            "entity_id": r.entity_id,
            "timestamp": r.timestamp,
            "model_name": r.model_name,
            "model_version": r.model_version,
            "variant": r.variant,
            "decision": r.decision,
            "items": list(r.items),
        }
        for r in records
    ]
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame


@dataclass
class _Pending:
    result: WindowResult
    frame: pd.DataFrame
    reference: pd.DataFrame


@dataclass
class MonitorRun:
    """What one run of the loop saw and produced."""

    design: str
    windows: list[WindowResult] = field(default_factory=list)
    served_records: int = 0
    shadow_records: int = 0
    label_events: int = 0
    dead_lettered: int = 0
    alerts_published: int = 0
    label_watermark: datetime | None = None
    seconds: float = 0.0
    out_dir: str = ""

    @property
    def pending(self) -> list[int]:
        return [w.window for w in self.windows if w.performance is None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "design": self.design,
            "windows": len(self.windows),
            "served_records": self.served_records,
            "shadow_records": self.shadow_records,
            "label_events": self.label_events,
            "dead_lettered": self.dead_lettered,
            "alerts_published": self.alerts_published,
            "label_watermark": self.label_watermark.isoformat() if self.label_watermark else None,
            "windows_awaiting_labels": self.pending,
            "seconds": round(self.seconds, 2),
            "reports": self.out_dir,
            "results": [w.to_dict() for w in self.windows],
        }


class _Finished(Exception):
    """Raised between batches once the run has what it was asked for."""


class Monitor:
    """Window state, label store and outputs of one design; `sink` is the platform loop's sink."""

    def __init__(
        self,
        settings: Settings,
        spec: MonitorSpec,
        window_size: int,
        producer: KafkaProducer | None = None,
        metrics: MonitorMetrics | None = None,
        max_windows: int | None = None,
        on_window: Callable[[WindowResult], None] | None = None,
        on_matured: Callable[[WindowResult], None] | None = None,
    ) -> None:
        if window_size < 2:
            raise ValueError(f"--window-size must be at least 2 records, got {window_size}.")
        self.settings = settings
        self.spec = spec
        self.window_size = window_size
        self.producer = producer
        self.metrics = metrics
        self.max_windows = max_windows
        self.on_window = on_window
        self.on_matured = on_matured
        self.out_dir = settings.reports_dir / "monitoring" / spec.design
        self.run = MonitorRun(spec.design, out_dir=str(self.out_dir))
        self.buffer: list[PredictionRecord] = []
        self.pending: list[_Pending] = []
        self.matured: list[_Pending] = []  # the last few, pooled for the decay decision
        self.labels: list[pd.DataFrame] = []
        self.label_frame = pd.DataFrame()
        self.watermark: pd.Timestamp | None = None
        self.references: dict[tuple[str, str], tuple[pd.DataFrame, str, dict[str, float]]] = {}
        self.baseline_from_windows: dict[str, float] | None = None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.summary_path = self.out_dir / "summary.jsonl"

    # -- inputs

    @property
    def done(self) -> bool:
        return self.max_windows is not None and len(self.run.windows) >= self.max_windows and not self.pending

    def sink(self, envelopes: list[Envelope]) -> None:
        label_events: list[BaseModel] = []
        for envelope in envelopes:
            event = envelope.event
            if isinstance(event, PredictionRecord):
                if event.design != self.spec.design:
                    continue
                if not event.served:
                    self.run.shadow_records += 1  # the challenger's silent answers stay out of drift
                    continue
                self.run.served_records += 1
                if self.max_windows is None or len(self.run.windows) < self.max_windows:
                    self.buffer.append(event)
                    if len(self.buffer) >= self.window_size:
                        self._close(self.buffer[: self.window_size])
                        self.buffer = self.buffer[self.window_size :]
            else:
                label_events.append(event)
        if label_events:
            self._add_labels(label_events)
        self._mature()

    def _add_labels(self, events: list[BaseModel]) -> None:
        rows = self.spec.label_rows(events)
        self.run.label_events += len(rows)
        self.labels.append(rows)
        newest = pd.to_datetime(rows[self.spec.label_watermark_column], utc=True).max()
        if self.watermark is None or newest > self.watermark:
            self.watermark = newest
            self.run.label_watermark = newest.to_pydatetime()

    def _label_frame(self) -> pd.DataFrame:
        if self.labels:
            parts = [self.label_frame, *self.labels] if not self.label_frame.empty else self.labels
            self.label_frame = pd.concat(parts, ignore_index=True)
            self.labels = []
            self._prune_labels()
        return self.label_frame

    def _prune_labels(self) -> None:
        """Drop labels of events older than every window still waiting or filling (they can no longer count)."""
        starts = [p.result.start for p in self.pending if p.result.start is not None]
        if self.buffer:
            starts.append(min(r.timestamp for r in self.buffer))
        if not starts or self.label_frame.empty:
            return
        horizon = pd.Timestamp(min(starts)) - pd.Timedelta(days=1)
        self.label_frame = self.label_frame[pd.to_datetime(self.label_frame["timestamp"], utc=True) >= horizon]

    # -- references

    def _reference(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, str, dict[str, float]]:
        """The reference of the window's (majority) model version, loaded once per version.

        Without a logged reference (recsys today) or a registry entry, the version's first window becomes its
        reference: later windows are then compared with how the model started out in production.
        """
        versions = _versions(frame)
        version = max(versions, key=lambda v: versions[v])
        name = str(frame.loc[frame["model_version"].astype(str) == version, "model_name"].iloc[0])
        key = (name, version)
        if key not in self.references:
            baseline: dict[str, float] = {}
            try:
                reference = load_reference(self.settings, name, version)
                missing = "its training run logged no reference"
            except ValueError:
                reference, missing = None, "the registry has no such version"
            if reference is not None:
                tags = version_tags(self.settings, name, version)
                if "average_precision" in tags:  # the validation metric of the training run
                    baseline["average_precision"] = float(tags["average_precision"])
                source = f"{name} v{version} training reference ({len(reference):,} rows)"
            else:
                reference = feature_frame(frame).reset_index(drop=True)
                source = f"{name} v{version} window {len(self.run.windows) + 1} ({missing})"
            self.references[key] = (reference, source, baseline)
        return self.references[key]

    # -- windows

    def _close(self, records: list[PredictionRecord]) -> None:
        frame = records_frame(records)
        reference, source, registry_baseline = self._reference(frame)
        number = len(self.run.windows) + 1
        baseline = {**self.spec.baseline(reference, len(frame)), **registry_baseline}
        result = evaluate_window(self.spec, reference, frame, baseline=baseline, window=number, reference_name=source)
        html_path = self.out_dir / f"window-{number:05d}.html"
        result.html, result.json = str(html_path), str(html_path.with_suffix(".json"))
        reference_features = feature_frame(reference)
        write_report(
            reference_features,
            feature_frame(frame),
            self.spec.drift_config(reference_features),
            result.drift,
            html_path,
            result.to_dict(),
            title=f"{self.spec.design} window {number}",
            facts={
                "records": f"{result.rows:,} served predictions",
                "event time": f"{result.start} → {result.end}",
                "model version": ", ".join(f"v{v} ({n:,})" for v, n in result.model_versions.items()),
                "reference": result.reference,
                "performance": f"in {html_path.with_suffix('.json').name} once labels mature "
                f"({self.spec.label_delay} after the window's last event)",
            },
        )
        self.run.windows.append(result)
        self._publish(result.alerts)
        self._summary("window", result.to_dict())
        if self.metrics:
            self.metrics.window(result)
        self.pending.append(_Pending(result, frame, reference))
        if self.on_window:
            self.on_window(result)

    def _mature(self) -> None:
        if self.watermark is None or not self.pending:
            return
        ready = [
            p
            for p in self.pending
            if p.result.end is not None and pd.Timestamp(p.result.end) + self.spec.label_delay <= self.watermark
        ]
        if not ready:
            return
        labels = self._label_frame()
        for item in ready:
            self.pending.remove(item)
            self._report_performance(item, labels)

    def _report_performance(self, item: _Pending, labels: pd.DataFrame) -> None:
        spec, result, primary = self.spec, item.result, self.spec.primary_metric
        result.performance = spec.performance(item.frame, labels)
        self.matured = [*self.matured, item][-spec.performance_windows :]
        if len(self.matured) > 1:
            pooled = pd.concat([p.frame for p in self.matured], ignore_index=True)
            value = spec.performance(pooled, labels).get(primary)
        else:
            value = result.performance.get(primary)
        result.rolling = {primary: value} if value is not None else {}
        result.rolling_windows = len(self.matured)
        full_pool = len(self.matured) >= spec.performance_windows
        if primary not in result.baseline:
            if self.baseline_from_windows is None and full_pool and result.rolling:
                self.baseline_from_windows = dict(result.rolling)  # no training metric: the first full pool sets it
            result.baseline = {**result.baseline, **(self.baseline_from_windows or {})}
        result.performance_decay = full_pool and judge_performance(spec, result.rolling, result.baseline)
        recent, recent_frame, recent_metrics = self._fast_pool(item, labels)
        new_alerts: list[Alert] = []
        if result.performance_decay:
            new_alerts.append(_decay_alert(spec, result, result.rolling, len(self.matured)))
        elif recent and judge_performance(spec, recent_metrics, result.baseline, spec.fast_max_drop):
            result.performance_decay = True
            new_alerts.append(_decay_alert(spec, result, recent_metrics, len(recent), spec.fast_max_drop))
        shift = self._label_shift(result, recent_metrics, len(recent_frame), item.reference) if recent else None
        if shift is not None:
            new_alerts.append(shift)
        for alert in new_alerts:
            alert.stream_time = self.watermark.to_pydatetime() if self.watermark is not None else alert.stream_time
        result.alerts.extend(new_alerts)
        self._publish(new_alerts)
        if result.json:
            write_json(Path(result.json), result.to_dict())
        self._summary(
            "performance",
            {
                "design": spec.design,
                "window": result.window,
                "event_time_start": result.start.isoformat() if result.start else None,
                "event_time_end": result.end.isoformat() if result.end else None,
                "model_version": result.model_version,
                "performance": result.performance,
                "rolling_performance": result.rolling,
                "rolling_windows": result.rolling_windows,
                "baseline": result.baseline,
                "performance_decay": result.performance_decay,
                "label_watermark": self.watermark.isoformat() if self.watermark is not None else None,
            },
        )
        if self.metrics:
            self.metrics.matured(result)
        if self.on_matured:
            self.on_matured(result)

    def _fast_pool(self, item: _Pending, labels: pd.DataFrame) -> tuple[list[_Pending], pd.DataFrame, dict[str, float]]:
        """The newest matured windows, at least `fast_windows` of them and enough positives; ([], ...) if too few."""
        spec = self.spec
        for size in range(spec.fast_windows, len(self.matured) + 1):
            pool = self.matured[-size:]
            frame = pd.concat([p.frame for p in pool], ignore_index=True) if size > 1 else item.frame
            metrics = spec.performance(frame, labels) if size > 1 else dict(item.result.performance or {})
            if spec.positives_metric is None or metrics.get(spec.positives_metric, 0) >= spec.fast_min_positives:
                return pool, frame, metrics
        return [], item.frame, dict(item.result.performance or {})

    def _label_shift(
        self, result: WindowResult, metrics: dict[str, float], rows: int, reference: pd.DataFrame
    ) -> Alert | None:
        name, spec = self.spec.label_rate_metric, self.spec
        if name is None or name not in metrics or name not in result.baseline or LABEL_COLUMN not in reference:
            return None
        rate, expected = metrics[name], result.baseline[name]
        shifted, change, z = label_shift(
            rate * rows, rows, expected, len(reference), spec.label_shift_ratio, spec.label_shift_z
        )
        result.performance = {**(result.performance or {}), f"{name}_ratio": change, f"{name}_z": z}
        if not shifted:
            return None
        return _alert(
            result,
            "label_shift",
            {name: round(rate, 5), f"baseline_{name}": round(expected, 5), "z": round(z, 2)},
            {"ratio": spec.label_shift_ratio, "z": spec.label_shift_z},
            f"{result.design} {name} over the last matured window(s) "
            f"ending at window {result.window} is {rate:.4f}, {change:.2f}× the reference's {expected:.4f} "
            f"(z = {z:.1f}).",
        )

    # -- outputs

    def _publish(self, alerts: list[Alert]) -> None:
        if self.producer is None:
            return
        from pipelines.platform.stream import encode

        for alert in alerts:
            self.producer.send(ALERTS_TOPIC, encode(alert), key=alert.design.encode())
            self.run.alerts_published += 1

    def _summary(self, event: str, payload: dict[str, Any]) -> None:
        from pipelines.platform.drift import _clean

        with self.summary_path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(_clean({"event": event, **payload}), default=str) + "\n")


def monitor_topics(spec: MonitorSpec) -> list[str]:
    from pipelines.platform.stream import DLQ_SUFFIX

    prediction_topic = PREDICTION_TOPICS[spec.design]
    return [
        prediction_topic,
        prediction_topic + DLQ_SUFFIX,
        spec.label_topic,
        spec.label_topic + DLQ_SUFFIX,
        ALERTS_TOPIC,
    ]


def place_consumer(consumer: Any, topics: Sequence[str], from_beginning: bool, since: datetime | None) -> None:
    """Take every partition of `topics` directly and set where reading starts.

    The monitor is an observer: it needs no group membership (no join wait, no competing for partitions with
    another monitor), and it rebuilds its windows from the log, so its start is explicit rather than a committed
    offset. `since` starts at the first record the broker received at or after that moment.
    """
    from kafka import TopicPartition

    consumer.unsubscribe()
    partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
    consumer.assign(partitions)
    if since is not None:
        found = consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in partitions})
        for tp in partitions:
            hit = found.get(tp)
            if hit is None or hit.timestamp < 0:  # nothing that recent yet
                consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, hit.offset)
    elif from_beginning:
        consumer.seek_to_beginning(*partitions)
    else:
        consumer.seek_to_end(*partitions)


def run_monitor(
    settings: Settings,
    design: str,
    window_size: int | None = None,
    max_windows: int | None = None,
    idle_timeout: float | None = None,
    from_beginning: bool = True,
    metrics_port: int | None = None,
    on_window: Callable[[WindowResult], None] | None = None,
    on_matured: Callable[[WindowResult], None] | None = None,
    since: datetime | None = None,
) -> MonitorRun:
    """Consume `<design>.predictions` and the design's labels until stopped; see the module docstring.

    Reads from the beginning of the log, from its end (`from_beginning=False`) or from the records received
    since a moment (`since`, for runs on a shared broker). Stops on Ctrl-C, after `idle_timeout` seconds without
    records, or once `max_windows` windows are evaluated and their labels have matured.
    """
    from pipelines.platform.stream import ensure_topics, make_consumer, make_producer, run_micro_batches

    spec = spec_for(design, settings)
    ensure_topics(settings, monitor_topics(spec))
    schemas: dict[str, type[BaseModel]] = {
        PREDICTION_TOPICS[design]: PredictionRecord,
        spec.label_topic: spec.label_schema,
    }
    metrics = MonitorMetrics()
    with contextlib.ExitStack() as cleanup:
        if metrics_port:
            metrics.serve(metrics_port, settings.metrics_host)
            cleanup.callback(metrics.stop)
        consumer = make_consumer(settings, list(schemas), f"mlsd-monitor-{design}")
        cleanup.callback(consumer.close)
        place_consumer(consumer, list(schemas), from_beginning, since)
        producer = make_producer(settings)
        cleanup.callback(producer.close)
        cleanup.callback(producer.flush)  # callbacks run last-in first-out: flush, then close
        monitor = Monitor(
            settings,
            spec,
            window_size or settings.monitor_window_size,
            producer,
            metrics,
            max_windows,
            on_window,
            on_matured,
        )
        started = time.perf_counter()

        def check(stats: Any, _size: int) -> None:
            monitor.run.dead_lettered = stats.dead_lettered
            if monitor.done:
                raise _Finished

        with contextlib.suppress(_Finished):
            stats = run_micro_batches(
                consumer,
                producer,
                schemas,
                monitor.sink,
                settings.stream_batch_size,
                settings.stream_batch_ms,
                idle_stop_s=idle_timeout,
                on_batch=check,
            )
            monitor.run.dead_lettered = stats.dead_lettered
        monitor.run.seconds = time.perf_counter() - started
    return monitor.run


def window_rows(run: MonitorRun) -> list[dict[str, Any]]:
    """One line per window for the CLI table."""
    rows = []
    for w in run.windows:
        perf = w.performance or {}
        primary = next((k for k in ("average_precision", "hit_rate_at_10") if k in perf), None)
        rows.append(
            {
                "window": w.window,
                "rows": w.rows,
                "events": f"{w.start:%m-%d %H:%M} → {w.end:%m-%d %H:%M}" if w.start and w.end else "",
                "model": w.model_version or "",
                "drifted features": ", ".join(w.drift.drifted_features) or "-",
                "prediction drift": f"{w.drift.prediction.score:.3f}" if w.drift.prediction else "-",
                "quality": str(len(w.drift.findings)) if w.drift.findings else "ok",
                "performance": f"{primary} {perf[primary]:.3f}"
                if primary and perf[primary] is not None and math.isfinite(perf[primary])
                else ("awaiting labels" if w.performance is None else "-"),
                "alerts": ", ".join(dict.fromkeys(w.kinds)) or "-",
            }
        )
    return rows
