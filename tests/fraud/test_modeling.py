"""The shared training harness: imbalance strategies, ranking and business metrics, cost-based thresholds."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.fraud.modeling import (
    IMBALANCE_STRATEGIES,
    XGBParams,
    card_precision_at_k,
    choose_threshold,
    cost_curve,
    fit_classifier,
    plot_cost_curve,
    plot_pr_curves,
    precision_recall_at,
    ranking_metrics,
    rebalance,
    time_ordered_split,
)

pytestmark = pytest.mark.unit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- cost curve and threshold

# Four genuine payments and two frauds. Flagging "score >= t" for t in (0.305, 0.505] catches both frauds at the
# price of one false alarm (0.605); t in (0.605, 0.905] catches one fraud with no false alarm.
COST_LABELS = np.array([0, 0, 0, 0, 1, 1])
COST_SCORES = np.array([0.105, 0.205, 0.305, 0.605, 0.505, 0.905])


def test_cost_curve_counts_missed_frauds_and_false_alarms_at_each_threshold() -> None:
    curve = cost_curve(COST_LABELS, COST_SCORES, cost_missed=100.0, cost_false_alarm=5.0)
    assert list(curve.columns) == ["threshold", "cost", "missed", "false_alarms", "flagged"]
    assert curve["threshold"].is_monotonic_increasing

    def at(threshold: float) -> dict:
        row = curve.loc[np.isclose(curve["threshold"], threshold)]
        assert len(row) == 1
        return row.iloc[0].to_dict()

    assert at(0.01) == {"threshold": pytest.approx(0.01), "cost": 20.0, "missed": 0, "false_alarms": 4, "flagged": 6}
    assert at(0.5) == {"threshold": pytest.approx(0.5), "cost": 5.0, "missed": 0, "false_alarms": 1, "flagged": 3}
    assert at(0.7) == {"threshold": pytest.approx(0.7), "cost": 100.0, "missed": 1, "false_alarms": 0, "flagged": 1}
    assert at(0.95) == {"threshold": pytest.approx(0.95), "cost": 200.0, "missed": 2, "false_alarms": 0, "flagged": 0}
    # a score equal to the threshold is flagged
    assert at(0.905)["flagged"] == 1


@pytest.mark.parametrize(
    ("cost_missed", "cost_false_alarm", "low", "high", "best_cost"),
    [
        (100.0, 5.0, 0.305, 0.505, 5.0),  # frauds are expensive: accept one false alarm to catch both
        (100.0, 150.0, 0.605, 0.905, 100.0),  # false alarms cost more than a missed fraud: flag only the sure one
        (1.0, 5.0, 0.605, 0.905, 1.0),
    ],
)
def test_the_chosen_threshold_is_the_cheapest_and_moves_with_the_costs(
    cost_missed: float, cost_false_alarm: float, low: float, high: float, best_cost: float
) -> None:
    curve = cost_curve(COST_LABELS, COST_SCORES, cost_missed, cost_false_alarm)
    threshold = choose_threshold(curve)
    assert low < threshold <= high
    assert curve["cost"].min() == best_cost
    flagged = threshold <= COST_SCORES
    missed = int((~flagged & (COST_LABELS == 1)).sum())
    false_alarms = int((flagged & (COST_LABELS == 0)).sum())
    assert missed * cost_missed + false_alarms * cost_false_alarm == best_cost


# ---------------------------------------------------------------- metrics


def test_precision_recall_at_a_threshold() -> None:
    labels = np.array([1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.5])
    assert precision_recall_at(labels, scores, 0.5) == {
        "precision": pytest.approx(1 / 3),
        "recall": 0.5,
        "flagged_share": 0.6,
    }
    assert precision_recall_at(labels, scores, 0.3) == {"precision": 0.5, "recall": 1.0, "flagged_share": 0.8}
    assert precision_recall_at(labels, scores, 0.95) == {"precision": 0.0, "recall": 0.0, "flagged_share": 0.0}
    no_fraud = precision_recall_at(np.zeros(5, dtype=int), scores, 0.5)
    assert no_fraud == {"precision": 0.0, "recall": 0.0, "flagged_share": 0.6}


def test_ranking_metrics_by_hand() -> None:
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    metrics = ranking_metrics(labels, scores)
    # 3 of the 4 (fraud, genuine) pairs are ordered right
    assert metrics["roc_auc"] == pytest.approx(0.75)
    # precision 1 at recall 0.5, then 2/3 at recall 1
    assert metrics["average_precision"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


@pytest.mark.parametrize("only", [0, 1])
def test_ranking_metrics_are_nan_when_one_class_is_missing(only: int) -> None:
    metrics = ranking_metrics(np.full(4, only), np.array([0.1, 0.2, 0.3, 0.4]))
    assert set(metrics) == {"average_precision", "roc_auc"}
    assert all(math.isnan(value) for value in metrics.values())


def daily_scores() -> pd.DataFrame:
    rows = [
        # day 1: four cards; A and D each have a low and a high score, only the highest counts
        (1, "A", 0.05, 1),
        (1, "A", 0.95, 0),
        (1, "B", 0.80, 0),
        (1, "C", 0.70, 1),
        (1, "D", 0.20, 1),
        (1, "D", 0.85, 1),
        # day 2: three cards; A again, this time genuine
        (2, "A", 0.60, 0),
        (2, "E", 0.50, 1),
        (2, "F", 0.40, 1),
    ]
    return pd.DataFrame(rows, columns=["day", "customer_id", "score", "label"])


def test_card_precision_at_k_uses_each_cards_highest_score_of_the_day() -> None:
    frame = daily_scores()
    # day 1 top 2: A (0.95, compromised that day) and D (0.85) -> 2/2; day 2 top 2: A (genuine), E -> 1/2
    assert card_precision_at_k(frame, k=2) == pytest.approx((1.0 + 0.5) / 2)
    # top 1: A on day 1 (compromised), A on day 2 (genuine)
    assert card_precision_at_k(frame, k=1) == pytest.approx(0.5)


def test_card_precision_at_k_divides_by_k_when_a_day_has_fewer_cards() -> None:
    # day 1 has 3 compromised cards out of 4, day 2 has 2 out of 3; both days fall short of k = 5
    assert card_precision_at_k(daily_scores(), k=5) == pytest.approx((3 / 5 + 2 / 5) / 2)


def test_card_precision_at_k_with_another_card_column() -> None:
    frame = daily_scores().rename(columns={"customer_id": "card"})
    assert card_precision_at_k(frame, k=2, card="card") == pytest.approx(0.75)


# ---------------------------------------------------------------- imbalance strategies


@pytest.fixture
def imbalanced() -> tuple[pd.DataFrame, np.ndarray]:
    """100 genuine rows around (0, 0) and 5 frauds around (5, 5)."""
    rng = np.random.default_rng(0)
    genuine = rng.normal(0.0, 1.0, size=(100, 2))
    fraud = rng.normal(5.0, 0.5, size=(5, 2))
    features = pd.DataFrame(np.vstack([genuine, fraud]), columns=["a", "b"])
    labels = np.r_[np.zeros(100, dtype=int), np.ones(5, dtype=int)]
    return features, labels


def test_none_leaves_the_data_untouched(imbalanced: tuple[pd.DataFrame, np.ndarray]) -> None:
    features, labels = imbalanced
    before = features.copy()
    x, y, weight = rebalance(features, labels, "none", smote_ratio=0.2, seed=0)
    pd.testing.assert_frame_equal(x, before)
    np.testing.assert_array_equal(y, labels)
    assert weight == 1.0


def test_class_weight_gives_negatives_over_positives(imbalanced: tuple[pd.DataFrame, np.ndarray]) -> None:
    features, labels = imbalanced
    x, y, weight = rebalance(features, labels, "class_weight", smote_ratio=0.2, seed=0)
    assert weight == 100 / 5
    pd.testing.assert_frame_equal(x, features)
    np.testing.assert_array_equal(y, labels)


@pytest.mark.parametrize(("strategy", "expected_weight"), [("smote", 1.0), ("smote_class_weight", 100 / 20)])
def test_smote_adds_synthetic_frauds_up_to_the_ratio(
    imbalanced: tuple[pd.DataFrame, np.ndarray], strategy: str, expected_weight: float
) -> None:
    features, labels = imbalanced
    x, y, weight = rebalance(features, labels, strategy, smote_ratio=0.2, seed=0)
    # 0.2 frauds per genuine row: 100 genuine rows stay, frauds grow from 5 to 20
    assert len(x) == len(y) == 120
    assert int((y == 0).sum()) == 100 and int(y.sum()) == 20
    assert list(x.columns) == ["a", "b"]
    # the original rows come first and unchanged; every added row is a fraud
    np.testing.assert_allclose(x.iloc[:105].to_numpy(), features.to_numpy(dtype=np.float32))
    np.testing.assert_array_equal(y[:105], labels)
    assert (y[105:] == 1).all()
    # synthetic frauds lie between real frauds, never among the genuine rows
    frauds = features[labels == 1]
    added = x.iloc[105:]
    assert (added.min() >= frauds.min() - 1e-5).all() and (added.max() <= frauds.max() + 1e-5).all()
    assert weight == pytest.approx(expected_weight)


@pytest.mark.parametrize("smote_ratio", [0.01, 0.055], ids=["below-the-fold-ratio", "less-than-one-row-above"])
def test_smote_leaves_a_fold_alone_when_it_already_has_the_ratio(
    imbalanced: tuple[pd.DataFrame, np.ndarray], smote_ratio: float
) -> None:
    features, labels = imbalanced  # 5 frauds per 100 genuine rows
    x, y, weight = rebalance(features, labels, "smote", smote_ratio=smote_ratio, seed=0)
    assert len(x) == 105 and int(y.sum()) == 5
    assert weight == 1.0


def test_smote_is_reproducible_with_a_seed(imbalanced: tuple[pd.DataFrame, np.ndarray]) -> None:
    features, labels = imbalanced
    first, _, _ = rebalance(features, labels, "smote", smote_ratio=0.2, seed=3)
    again, _, _ = rebalance(features, labels, "smote", smote_ratio=0.2, seed=3)
    pd.testing.assert_frame_equal(first, again)


def test_an_unknown_strategy_is_one_sentence_listing_the_choices(imbalanced: tuple[pd.DataFrame, np.ndarray]) -> None:
    features, labels = imbalanced
    with pytest.raises(ValueError) as caught:
        rebalance(features, labels, "oversample", smote_ratio=0.2, seed=0)
    message = str(caught.value)
    assert "'oversample'" in message
    assert all(strategy in message for strategy in IMBALANCE_STRATEGIES)
    assert "\n" not in message


@pytest.mark.parametrize("strategy", IMBALANCE_STRATEGIES)
def test_a_window_without_fraud_is_refused(imbalanced: tuple[pd.DataFrame, np.ndarray], strategy: str) -> None:
    features, _ = imbalanced
    with pytest.raises(ValueError, match="no known fraud"):
        rebalance(features, np.zeros(len(features), dtype=int), strategy, smote_ratio=0.2, seed=0)


# ---------------------------------------------------------------- fitting


def separable(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    features = pd.DataFrame({"signal": rng.normal(size=n), "noise": rng.normal(size=n)})
    labels = (features["signal"] > 1.6).to_numpy(dtype=int)
    return features, labels


@pytest.mark.parametrize("strategy", IMBALANCE_STRATEGIES)
def test_fit_classifier_ranks_a_separable_problem(strategy: str) -> None:
    train_x, train_y = separable(2000, seed=1)
    valid_x, valid_y = separable(1000, seed=2)
    assert 0 < train_y.mean() < 0.1
    params = XGBParams(n_estimators=25, max_depth=3, n_jobs=1)
    model = fit_classifier(train_x, train_y, strategy, params, smote_ratio=0.2, seed=0)
    scores = model.predict_proba(valid_x)[:, 1]
    assert scores.shape == (1000,)
    metrics = ranking_metrics(valid_y, scores)
    assert metrics["roc_auc"] > 0.98
    assert metrics["average_precision"] > 0.9


def test_fit_classifier_refuses_an_unknown_strategy() -> None:
    features, labels = separable(200, seed=1)
    with pytest.raises(ValueError, match="unknown imbalance strategy"):
        fit_classifier(features, labels, "bogus", XGBParams(n_estimators=2), smote_ratio=0.2, seed=0)


# ---------------------------------------------------------------- time-ordered split


def test_time_ordered_split_keeps_a_gap_between_train_and_validation() -> None:
    times = pd.Series(pd.date_range("2026-01-01", periods=40 * 24, freq="h", tz="UTC"))
    shuffled = times.sample(frac=1.0, random_state=0).reset_index(drop=True)
    gap = pd.Timedelta(days=3)
    train, valid, split = time_ordered_split(shuffled, valid_fraction=0.25, gap=gap)

    start, end = times.min(), times.max()
    assert split == start + (end - start) * 0.75
    assert train.dtype == bool and valid.dtype == bool and len(train) == len(valid) == len(times)
    assert (shuffled[train] < split - gap).all()
    assert (shuffled[valid] >= split).all()
    assert not (train & valid).any()
    # every row outside the gap is used, every row inside it is left out
    in_gap = (shuffled >= split - gap) & (shuffled < split)
    np.testing.assert_array_equal(train | valid, ~in_gap.to_numpy())
    assert in_gap.sum() == 3 * 24


def test_time_ordered_split_reads_naive_times_as_utc() -> None:
    naive = pd.Series(pd.date_range("2026-01-01", periods=10, freq="D"))
    train, valid, split = time_ordered_split(naive, valid_fraction=0.5, gap=pd.Timedelta(0))
    assert split == pd.Timestamp("2026-01-05T12:00:00Z")
    assert train.sum() == 5 and valid.sum() == 5


# ---------------------------------------------------------------- plots


def test_plots_write_png_files(tmp_path: Path) -> None:
    labels = np.array([0, 0, 1, 0, 1, 0, 0, 1])
    scores = np.array([0.1, 0.3, 0.7, 0.2, 0.9, 0.6, 0.05, 0.4])
    pr = plot_pr_curves(
        {"none": (labels, scores), "smote": (labels, scores[::-1])}, tmp_path / "nested" / "pr.png", "PR"
    )
    curve = cost_curve(labels, scores, 100.0, 5.0)
    cost = plot_cost_curve(curve, choose_threshold(curve), tmp_path / "cost.png", "cost")
    for path in (pr, cost):
        assert path.is_file()
        assert path.read_bytes()[:8] == PNG_MAGIC
    assert pr == tmp_path / "nested" / "pr.png"
