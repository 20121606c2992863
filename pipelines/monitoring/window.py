"""One monitoring window, pure: drift and data quality against the reference, performance once labels mature.

`evaluate_window` is the core the monitor loop (pipelines/monitoring/monitor.py) and the scenario tests call with
frames they build: no Kafka, no files. What differs per design comes in its `MonitorSpec` (Design contract).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from pipelines.monitoring.alerts import Alert, AlertKind
from pipelines.platform.design import MonitorSpec
from pipelines.platform.drift import DriftSummary, evaluate_drift
from pipelines.platform.predictions import PredictionRecord

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


def model_versions(frame: pd.DataFrame) -> dict[str, int]:
    if "model_version" not in frame:
        return {}
    return {str(k): int(v) for k, v in frame["model_version"].astype(str).value_counts().items()}


def feature_frame(window_frame: pd.DataFrame) -> pd.DataFrame:
    """The model features and the score of a window frame, without the record's bookkeeping columns."""
    return window_frame.drop(columns=[c for c in META_COLUMNS if c in window_frame.columns])


def alert_for(
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
            alert_for(
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
            alert_for(
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
            alert_for(
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


def decay_alert(
    spec: MonitorSpec, result: WindowResult, metrics: dict[str, float], windows: int, max_drop: float | None = None
) -> Alert:
    name = spec.primary_metric
    drop = spec.max_drop if max_drop is None else max_drop
    value, expected = metrics[name], result.baseline[name]
    return alert_for(
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
    versions = model_versions(window_frame)
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
            result.alerts.append(decay_alert(spec, result, result.performance, 1))
    return result


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


def window_rows(windows: Iterable[WindowResult], primary: str) -> list[dict[str, Any]]:
    """One line per window for the CLI table; `primary` is the design's main performance metric."""
    rows = []
    for w in windows:
        perf = w.performance or {}
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
                if perf.get(primary) is not None and math.isfinite(perf[primary])
                else ("awaiting labels" if w.performance is None else "-"),
                "alerts": ", ".join(dict.fromkeys(w.kinds)) or "-",
            }
        )
    return rows
