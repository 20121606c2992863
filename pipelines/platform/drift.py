"""Drift and data-quality checks of one window against a reference, shared by every design (Evidently 0.7).

The "how" only: which columns to watch, which thresholds and what a window is come from the caller (a design's
monitoring spec). Per-column drift scores are computed with Evidently's registered statistical tests, the same
functions its `ValueDrift` metric runs, so the JSON summary and the HTML report show the same numbers; the HTML
report (a `DataDriftPreset` plus prediction drift) is rendered only when a window is written, because rendering
costs seconds while scoring costs milliseconds.

Why a distance and not a p-value: with thousands of rows per window and a reference of 20,000, a KS or t-test
rejects on the ordinary day-to-day variation of real traffic (the benchmark measures it), so every window would
alarm. The normalised Wasserstein distance is an effect size in units of the reference's standard deviation: a
threshold of 0.15 reads as "the distribution moved by more than about 0.15 sigma", independent of window size.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from pipelines.platform.errors import InvalidInput
from pipelines.settings import Settings

if TYPE_CHECKING:
    from evidently.core.report import Snapshot

REFERENCE_ARTIFACT = "reference/reference.parquet"  # logged by a design's training run (see pipelines/fraud/train.py)
REFERENCE_LABEL = "label"  # the reference's outcome column, where the design has labels at training time

FindingKind = Literal["missing_column", "unexpected_column", "wrong_type", "missing_values", "out_of_range"]


@dataclass(frozen=True)
class DriftConfig:
    """What to test and how hard; thresholds are in the method's units (sigma for "wasserstein")."""

    columns: tuple[str, ...]  # features tested for drift
    prediction: str | None = "score"  # the model output tested for prediction drift (None: no prediction drift)
    method: str | None = "wasserstein"  # an Evidently stat-test name; None = Evidently's automatic choice
    threshold: float | None = 0.15  # None = the method's default
    column_thresholds: Mapping[str, float] = field(default_factory=dict)
    prediction_threshold: float | None = 0.15
    min_drifted: int = 1  # drifted features needed before the window counts as drifted
    context_columns: tuple[str, ...] = ()  # checked for quality, never for drift (e.g. hour of day)
    # Reweight the reference to the window's mix of these columns before testing: a window of a few hours
    # should be compared with the reference's same hours, not with whole days (see `matched_reference`).
    match_on: tuple[str, ...] = ()
    seed: int = 7
    range_tolerance: float = 0.1  # allowed overshoot of the reference's [min, max], as a share of its range
    max_out_of_range_share: float = 0.01
    max_missing_share: float = 0.02  # allowed share of missing values above the reference's own share

    def threshold_for(self, column: str) -> float | None:
        if column == self.prediction:
            return self.prediction_threshold
        return self.column_thresholds.get(column, self.threshold)

    @property
    def expected_columns(self) -> tuple[str, ...]:
        extra = (self.prediction,) if self.prediction else ()
        return tuple(dict.fromkeys((*self.columns, *self.context_columns, *extra)))


@dataclass(frozen=True)
class ColumnDrift:
    column: str
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class Finding:
    """One data-quality or schema problem, with a sentence a person can act on."""

    kind: FindingKind
    column: str
    message: str
    value: float | None = None


@dataclass
class DriftSummary:
    rows: int
    reference_rows: int
    features: dict[str, ColumnDrift]
    prediction: ColumnDrift | None
    findings: list[Finding]
    min_drifted: int

    @property
    def drifted_features(self) -> list[str]:
        return [name for name, result in self.features.items() if result.drifted]

    @property
    def data_drift(self) -> bool:
        return len(self.drifted_features) >= self.min_drifted

    @property
    def prediction_drift(self) -> bool:
        return bool(self.prediction and self.prediction.drifted)

    @property
    def quality_ok(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "reference_rows": self.reference_rows,
            "data_drift": self.data_drift,
            "drifted_features": self.drifted_features,
            "min_drifted": self.min_drifted,
            "features": {name: _clean(asdict(result)) for name, result in self.features.items()},
            "prediction_drift": self.prediction_drift,
            "prediction": _clean(asdict(self.prediction)) if self.prediction else None,
            "quality_ok": self.quality_ok,
            "findings": [_clean(asdict(f)) for f in self.findings],
        }


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------------------------------------
# Drift


def _usable(series: pd.Series) -> pd.Series:
    """What Evidently tests: the finite values only."""
    values = pd.to_numeric(series, errors="coerce").astype(float)
    return values[np.isfinite(values.to_numpy())]


def column_drift(
    reference: pd.Series, current: pd.Series, method: str | None = "wasserstein", threshold: float | None = None
) -> ColumnDrift | None:
    """Drift of one numeric column with Evidently's stat test `method`; None when either side has no values."""
    from evidently.legacy.calculations.stattests.registry import get_stattest

    ref, cur = _usable(reference), _usable(current)
    if ref.empty or cur.empty:
        return None
    test = get_stattest(ref, cur, "num", method)
    result = test(ref, cur, "num", threshold)
    return ColumnDrift(
        column=str(reference.name),
        method=test.name,
        score=float(result.drift_score),
        threshold=float(result.actual_threshold),
        drifted=bool(result.drifted),
    )


def matched_reference(
    reference: pd.DataFrame, current: pd.DataFrame, columns: Sequence[str], seed: int = 7
) -> pd.DataFrame:
    """The reference resampled (same size, with replacement, seeded) so its mix of `columns` equals the window's.

    Traffic has rhythms: a count-based window covering a night holds longer gaps between payments and more
    fraud than the reference's whole days. Matching the hour of day removes that difference (measured: the
    control windows' largest score on the time-since-last-payment feature drops from 0.20 to 0.09 sigma) so
    a threshold can be tight enough to catch real shifts. Cells the reference lacks are left out.
    """
    usable = [
        c
        for c in columns
        if c in reference.columns and c in current.columns and _numeric(reference[c]) and _numeric(current[c])
    ]
    if not usable or reference.empty or current.empty:
        return reference
    both = pd.concat([reference[usable], current[usable]], ignore_index=True)
    cells = pd.MultiIndex.from_frame(both.astype(float).round(6)).factorize(use_na_sentinel=False)[0]
    ref_cells, cur_cells = cells[: len(reference)], cells[len(reference) :]
    wanted = np.bincount(cur_cells, minlength=cells.max() + 1) / len(cur_cells)
    available = np.bincount(ref_cells, minlength=cells.max() + 1)
    weights = np.where(available > 0, wanted / np.maximum(available, 1), 0.0)[ref_cells]
    if weights.sum() <= 0:
        return reference
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(reference), size=len(reference), replace=True, p=weights / weights.sum())
    return reference.iloc[np.sort(picks)].reset_index(drop=True)


def _numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series)


def check_quality(reference: pd.DataFrame, current: pd.DataFrame, config: DriftConfig) -> list[Finding]:
    """Schema (missing, unexpected, wrong-type columns), missing values and values outside the reference's range."""
    findings: list[Finding] = []
    expected = config.expected_columns
    for column in expected:
        if column not in current.columns:
            findings.append(
                Finding(
                    "missing_column",
                    column,
                    f"Schema break: the window has no column '{column}', which the model needs; "
                    "send every model feature in the prediction records or retrain the model without it.",
                )
            )
    known = set(expected) | set(reference.columns)
    for column in current.columns:
        if column not in known:
            findings.append(
                Finding(
                    "unexpected_column",
                    column,
                    f"Schema change: the window has a column '{column}' that the reference does not; "
                    "retrain the model with it or stop sending it.",
                )
            )
    for column in expected:
        if column not in current.columns:
            continue
        values = current[column]
        if values.isna().all():
            values = values.astype(float)  # nothing at all in it: a missing-value finding, not a type one
        if not _numeric(values):
            sample = next((v for v in values.dropna().tolist() if not _is_number(v)), values.dropna().iloc[0])
            findings.append(
                Finding(
                    "wrong_type",
                    column,
                    f"Schema break: column '{column}' holds {type(sample).__name__} values such as {sample!r} "
                    "where the reference holds numbers; fix the producer's encoding.",
                )
            )
            continue
        numbers = values.astype(float)
        missing = float(np.mean(~np.isfinite(numbers.to_numpy()))) if len(numbers) else 0.0
        ref_values = (
            reference[column].astype(float) if column in reference.columns and _numeric(reference[column]) else None
        )
        ref_missing = float(np.mean(~np.isfinite(ref_values.to_numpy()))) if ref_values is not None else 0.0
        if missing > ref_missing + config.max_missing_share:
            findings.append(
                Finding(
                    "missing_values",
                    column,
                    f"Column '{column}' is missing in {missing:.1%} of the window's rows "
                    f"(reference {ref_missing:.1%}); check the feature pipeline that fills it.",
                    missing,
                )
            )
        if ref_values is None:
            continue
        ref_finite, cur_finite = _usable(ref_values), _usable(numbers)
        if ref_finite.empty or cur_finite.empty:
            continue
        low, high = float(ref_finite.min()), float(ref_finite.max())
        slack = config.range_tolerance * (high - low)
        outside = float(((cur_finite < low - slack) | (cur_finite > high + slack)).mean())
        if outside > config.max_out_of_range_share:
            findings.append(
                Finding(
                    "out_of_range",
                    column,
                    f"Column '{column}' has {outside:.1%} of its values outside the reference range "
                    f"[{low:.4g}, {high:.4g}] (tolerance {config.range_tolerance:.0%}); "
                    "check units and upstream changes.",
                    outside,
                )
            )
    return findings


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.number) and not isinstance(value, bool)


def evaluate_drift(reference: pd.DataFrame, current: pd.DataFrame, config: DriftConfig) -> DriftSummary:
    """Per-feature and prediction drift plus quality findings; columns with a schema problem are not tested."""
    findings = check_quality(reference, current, config)
    broken = {f.column for f in findings if f.kind in ("missing_column", "wrong_type")}
    reference_rows = len(reference)
    reference = matched_reference(reference, current, config.match_on, config.seed)

    def test(column: str) -> ColumnDrift | None:
        if column in broken or column not in reference.columns or not _numeric(reference[column]):
            return None
        return column_drift(reference[column], current[column], config.method, config.threshold_for(column))

    features = {c: r for c in config.columns if (r := test(c)) is not None}
    prediction = test(config.prediction) if config.prediction else None
    return DriftSummary(
        rows=len(current),
        reference_rows=reference_rows,
        features=features,
        prediction=prediction,
        findings=findings,
        min_drifted=config.min_drifted,
    )


# ----------------------------------------------------------------------------------------------------------
# Reports


def evidently_snapshot(reference: pd.DataFrame, current: pd.DataFrame, config: DriftConfig) -> Snapshot:
    """The Evidently report of a window: the drift table of the watched features and the prediction's drift."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    reference = matched_reference(reference, current, config.match_on, config.seed)
    columns = [
        c
        for c in config.expected_columns
        if c in reference.columns and c in current.columns and _numeric(reference[c]) and _numeric(current[c])
    ]
    features = [c for c in config.columns if c in columns]
    definition = DataDefinition(numerical_columns=columns)
    metrics: list[Any] = []
    if features:
        metrics.append(
            DataDriftPreset(
                columns=features,
                method=config.method,
                per_column_threshold={c: t for c in features if (t := config.threshold_for(c)) is not None},
                # The preset's "dataset drift" verdict then agrees with `DriftSummary.data_drift`.
                drift_share=min(1.0, (config.min_drifted - 0.5) / len(features)),
            )
        )
    if config.prediction and config.prediction in columns:
        metrics.append(
            ValueDrift(column=config.prediction, method=config.method, threshold=config.prediction_threshold)
        )
    if not metrics:
        raise InvalidInput("the window shares no numeric column with the reference, so there is nothing to compare")
    return Report(metrics).run(
        Dataset.from_pandas(current[columns].astype(float), data_definition=definition),
        Dataset.from_pandas(reference[columns].astype(float), data_definition=definition),
    )


def _summary_html(title: str, summary: DriftSummary, extra: Mapping[str, Any]) -> str:
    """A short header for the Evidently page: the verdicts and the quality findings in plain words."""
    verdicts = [
        ("data drift", summary.data_drift, ", ".join(summary.drifted_features) or "none"),
        (
            "prediction drift",
            summary.prediction_drift,
            f"{summary.prediction.score:.3f} vs threshold {summary.prediction.threshold:.3f}"
            if summary.prediction
            else "not tested",
        ),
        ("data quality", not summary.quality_ok, f"{len(summary.findings)} finding(s)"),
    ]
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td style='color:{'#b00' if flag else '#070'}'>"
        f"{'ALERT' if flag else 'ok'}</td><td>{html.escape(detail)}</td></tr>"
        for name, flag, detail in verdicts
    )
    facts = "".join(
        f"<li><b>{html.escape(str(k))}</b>: {html.escape(str(v))}</li>" for k, v in extra.items() if v is not None
    )
    findings = "".join(f"<li>{html.escape(f.message)}</li>" for f in summary.findings)
    return (
        "<section style='font-family:sans-serif;margin:16px;padding:12px;border:1px solid #ccc'>"
        f"<h2>{html.escape(title)}</h2><ul>{facts}</ul>"
        f"<table border='1' cellpadding='4' style='border-collapse:collapse'>{rows}</table>"
        + (f"<h3>Data quality</h3><ul>{findings}</ul>" if findings else "")
        + "</section>"
    )


def write_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    config: DriftConfig,
    summary: DriftSummary,
    html_path: Path,
    json_payload: Mapping[str, Any],
    title: str = "drift report",
    facts: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write the Evidently HTML page (with a verdict header listing `facts`) and the JSON summary next to it."""
    html_path.parent.mkdir(parents=True, exist_ok=True)
    json_path = html_path.with_suffix(".json")
    try:
        page = evidently_snapshot(reference, current, config).get_html_str(as_iframe=False)
    except ValueError as exc:  # nothing comparable: the header alone still says why
        page = f"<html><body><p>{html.escape(str(exc))}</p></body></html>"
    header = _summary_html(title, summary, facts or {})
    page = page.replace("<body>", "<body>" + header, 1) if "<body>" in page else header + page
    html_path.write_text(page, encoding="utf-8")
    write_json(json_path, json_payload)
    return html_path, json_path


def write_json(path: Path, payload: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(dict(payload)), indent=2, default=str), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------------------
# References from the registry


def load_reference(settings: Settings, model_name: str, version: str) -> pd.DataFrame | None:
    """The reference frame logged by the training run of `model_name` v`version`; None if that run logged none."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from pipelines.platform.registry import connect_mlflow

    connect_mlflow(settings)
    try:
        model_version = MlflowClient().get_model_version(model_name, version)
    except MlflowException as exc:
        raise InvalidInput(
            f"The registry has no version {version} of '{model_name}' named in the prediction records; "
            "point MLSD_MLFLOW_TRACKING_URI at the registry the service loads its models from."
        ) from exc
    run_id = (model_version.tags or {}).get("training_run_id") or model_version.run_id
    if not run_id:
        return None
    try:
        path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=REFERENCE_ARTIFACT)
    except (MlflowException, OSError):
        return None
    return pd.read_parquet(path)


def version_tags(settings: Settings, model_name: str, version: str) -> dict[str, str]:
    from mlflow import MlflowClient

    from pipelines.platform.registry import connect_mlflow

    connect_mlflow(settings)
    return dict(MlflowClient().get_model_version(model_name, version).tags or {})


def numeric_columns(frame: pd.DataFrame, exclude: Sequence[str] = ()) -> tuple[str, ...]:
    return tuple(c for c in frame.columns if c not in exclude and _numeric(frame[c]))
