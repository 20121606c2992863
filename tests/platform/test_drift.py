"""Drift and data-quality checks of one window against a reference (pipelines/platform/drift.py), on synthetic data."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from pipelines.platform.drift import (
    DriftConfig,
    check_quality,
    evaluate_drift,
    evidently_snapshot,
    matched_reference,
    write_report,
)

pytestmark = pytest.mark.unit

CONFIG = DriftConfig(
    columns=("amount", "risk", "gap"),
    prediction="score",
    context_columns=("hour_of_day",),
    match_on=("hour_of_day",),
)


def traffic(rows: int, seed: int, hours: np.ndarray | None = None) -> pd.DataFrame:
    """Payments-like rows; the gap since the previous payment is longer at night, as in real traffic."""
    rng = np.random.default_rng(seed)
    hour = rng.integers(0, 24, rows) if hours is None else hours
    night = hour < 6
    return pd.DataFrame(
        {
            "amount": rng.lognormal(3.5, 0.6, rows),
            "risk": rng.beta(2, 20, rows),
            "gap": rng.exponential(np.where(night, 6.0, 1.0)),
            "hour_of_day": hour.astype(float),
            "score": rng.beta(1, 30, rows),
        }
    )


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return traffic(20_000, seed=1)


def one_sentence(message: str) -> bool:
    return "\n" not in message and message.endswith(".") and ". " not in message


def test_an_unchanged_window_is_not_flagged(reference: pd.DataFrame) -> None:
    summary = evaluate_drift(reference, traffic(5000, seed=2), CONFIG)
    assert not summary.data_drift and not summary.prediction_drift and summary.quality_ok
    assert set(summary.features) == {"amount", "risk", "gap"}
    assert max(d.score for d in summary.features.values()) < 0.1
    assert all(d.method == "wasserstein" and d.threshold == 0.15 for d in summary.features.values())


def test_a_quarter_sigma_shift_in_one_feature_is_flagged_and_named(reference: pd.DataFrame) -> None:
    window = traffic(5000, seed=3)
    window["risk"] += 0.25 * reference["risk"].std()
    summary = evaluate_drift(reference, window, CONFIG)
    assert summary.data_drift
    assert summary.drifted_features == ["risk"]
    assert summary.features["risk"].score > 0.2
    # Evidently's preset rule (dataset drift once half of the columns drift) would let this window pass.
    share_rule = DriftConfig(columns=CONFIG.columns, match_on=CONFIG.match_on, min_drifted=math.ceil(0.5 * 3))
    assert not evaluate_drift(reference, window, share_rule).data_drift


def test_a_shifted_prediction_is_prediction_drift(reference: pd.DataFrame) -> None:
    window = traffic(5000, seed=4)
    window["score"] += 0.5 * reference["score"].std()
    summary = evaluate_drift(reference, window, CONFIG)
    assert summary.prediction_drift and not summary.data_drift
    assert summary.prediction is not None and summary.prediction.column == "score"


def test_the_reference_is_matched_to_the_hours_a_window_covers(reference: pd.DataFrame) -> None:
    nights = traffic(3000, seed=5, hours=np.random.default_rng(5).integers(0, 6, 3000))
    matched = evaluate_drift(reference, nights, CONFIG)
    assert not matched.data_drift, matched.features["gap"]
    unmatched = evaluate_drift(reference, nights, DriftConfig(columns=CONFIG.columns, match_on=()))
    assert unmatched.drifted_features == ["gap"]
    resampled = matched_reference(reference, nights, ["hour_of_day"])
    assert len(resampled) == len(reference) and resampled["hour_of_day"].max() < 6


def test_missing_values_and_out_of_range_values_are_findings(reference: pd.DataFrame) -> None:
    window = traffic(5000, seed=6)
    window.loc[window.index[:500], "amount"] = np.nan
    window.loc[window.index[-250:], "risk"] = 5.0  # a unit change upstream: far above the reference's maximum
    findings = {f.kind: f for f in check_quality(reference, window, CONFIG)}
    assert set(findings) == {"missing_values", "out_of_range"}
    assert findings["missing_values"].column == "amount" and findings["missing_values"].value == pytest.approx(0.1)
    assert findings["out_of_range"].column == "risk" and findings["out_of_range"].value == pytest.approx(0.05)
    assert all(one_sentence(f.message) for f in findings.values())
    assert "10.0%" in findings["missing_values"].message


def test_a_schema_break_is_named_in_one_sentence_and_the_rest_is_still_tested(reference: pd.DataFrame) -> None:
    window = traffic(5000, seed=7).drop(columns=["risk"])
    window["amount"] = window["amount"].map(lambda v: f"{v:.2f} EUR")
    window["device"] = 1.0
    summary = evaluate_drift(reference, window, CONFIG)
    findings = {(f.kind, f.column): f.message for f in summary.findings}
    assert set(findings) == {("missing_column", "risk"), ("wrong_type", "amount"), ("unexpected_column", "device")}
    for (_, column), message in findings.items():
        assert one_sentence(message) and f"'{column}'" in message
    assert "EUR" in findings[("wrong_type", "amount")]
    assert set(summary.features) == {"gap"}  # the broken columns are reported, not scored
    assert not summary.quality_ok


def test_the_report_is_an_evidently_page_and_a_json_summary_with_the_same_scores(
    reference: pd.DataFrame, tmp_path
) -> None:
    window = traffic(2000, seed=8)
    window["risk"] += 0.5 * reference["risk"].std()
    summary = evaluate_drift(reference, window, CONFIG)
    snapshot = evidently_snapshot(reference, window, CONFIG)
    evidently_scores = {
        m["config"]["column"]: m["value"] for m in snapshot.dict()["metrics"] if "ValueDrift" in m["metric_name"]
    }
    assert summary.prediction is not None
    expected = {**{n: d.score for n, d in summary.features.items()}, "score": summary.prediction.score}
    assert evidently_scores == pytest.approx(expected)

    html_path, json_path = write_report(
        reference, window, CONFIG, summary, tmp_path / "w" / "window-00001.html", summary.to_dict(), title="test window"
    )
    page = html_path.read_text()
    assert "test window" in page and "data drift" in page and "risk" in page
    assert "Dataset Drift" in page and len(page) > 100_000  # Evidently's interactive drift table, not a stub
    written = json.loads(json_path.read_text())
    assert written["data_drift"] is True and written["drifted_features"] == ["risk"]
    assert written["features"]["risk"]["score"] == pytest.approx(summary.features["risk"].score)
