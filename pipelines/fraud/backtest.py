"""Prequential backtest of the fraud model with delayed labels: how would each imbalance strategy have done?

Fold i trains on the days [train_start + fold_step_days·i, + train_days), skips `delay_days` (the time
chargebacks need to arrive) and is tested on the `test_days` after that, when the model would be deployed.

What the model may know is what it would have known at deployment time (`test_start`):

- features are the streaming engine's rows stored strictly before each transaction, computed once for the file
  and joined point in time exactly as training does (Parquet rows, ASOF join, entity time = timestamp − 1 µs);
- a training transaction counts as fraud only if its chargeback arrived by `test_start`;
- cards already known as compromised at `test_start` would be blocked, so they leave the test set.

Metrics per fold and strategy: ROC-AUC, average precision and card precision@100 per day; the summary gives
their mean and standard deviation (population, ddof=0) over the folds where they are defined. Undefined
metrics (a window without fraud) are NaN, and the fold says why in `notes`.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.fraud import CUSTOMER_FEATURES, FEATURE_TTL, TERMINAL_FEATURES
from pipelines.fraud import modeling
from pipelines.fraud.features import backfill_features, model_matrix
from pipelines.fraud.modeling import IMBALANCE_STRATEGIES, XGBParams
from pipelines.platform.errors import InvalidInput
from pipelines.platform.feast_offline import point_in_time_join
from pipelines.platform.features import to_feast_timestamps

Progress = Callable[[str], None]
METRICS = ("roc_auc", "average_precision", "card_precision_at_100")
REQUIRED_COLUMNS = ("transaction_id", "timestamp", "customer_id", "terminal_id", "amount", "is_fraud")
DAY = pd.Timedelta(days=1)
ONE_MICROSECOND = pd.Timedelta(microseconds=1)


@dataclass(frozen=True)
class BacktestConfig:
    train_start: str | None = None  # ISO date of the first training day; None = the file's first day
    train_days: int = 7
    delay_days: int = 7
    test_days: int = 7
    folds: int = 4
    seed: int = 7
    smote_ratio: float = 0.1
    strategies: tuple[str, ...] = IMBALANCE_STRATEGIES
    params: XGBParams = XGBParams()
    fold_step_days: int = 7

    def __post_init__(self) -> None:
        object.__setattr__(self, "strategies", tuple(self.strategies))
        problems = _config_problems(self)
        if problems:
            raise InvalidInput(problems[0])

    def first_train_day(self) -> pd.Timestamp | None:
        return None if self.train_start is None else _utc_timestamp(self.train_start)


def _utc_timestamp(value: str) -> pd.Timestamp:
    stamp = pd.Timestamp(value)
    if stamp is pd.NaT:
        raise InvalidInput("empty date")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def _config_problems(c: BacktestConfig) -> list[str]:
    problems: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    if c.train_start is not None:
        try:
            _utc_timestamp(c.train_start)
        except (ValueError, TypeError):
            problems.append(f"train_start must be a date such as '2026-01-01', got {c.train_start!r}.")
    need(c.train_days >= 1, f"train_days must be at least 1, got {c.train_days}.")
    need(c.delay_days >= 0, f"delay_days must be zero or more, got {c.delay_days}.")
    need(c.test_days >= 1, f"test_days must be at least 1, got {c.test_days}.")
    need(c.folds >= 1, f"folds must be at least 1, got {c.folds}.")
    need(c.fold_step_days >= 1, f"fold_step_days must be at least 1, got {c.fold_step_days}.")
    need(c.seed >= 0, f"seed must be zero or a positive integer, got {c.seed}.")
    need(
        0 < c.smote_ratio <= 1,
        f"smote_ratio must be in (0, 1] (frauds per genuine row after SMOTE), got {c.smote_ratio}.",
    )
    need(len(c.strategies) > 0, f"strategies must name at least one of {', '.join(IMBALANCE_STRATEGIES)}.")
    unknown = [s for s in c.strategies if s not in IMBALANCE_STRATEGIES]
    need(
        not unknown,
        f"unknown imbalance strategy {unknown[0] if unknown else ''!r}; choose from {', '.join(IMBALANCE_STRATEGIES)}.",
    )
    need(len(set(c.strategies)) == len(c.strategies), f"strategies are listed twice in {list(c.strategies)}.")
    need(c.params.n_estimators >= 1, f"params.n_estimators must be at least 1, got {c.params.n_estimators}.")
    return problems


# ----------------------------------------------------------------------------------------------------------
# Fold windows


@dataclass(frozen=True)
class FoldWindow:
    fold: int
    train_start: pd.Timestamp
    train_end: pd.Timestamp  # exclusive
    test_start: pd.Timestamp  # the moment the model would be deployed
    test_end: pd.Timestamp  # exclusive


def fold_windows(config: BacktestConfig, train_start: pd.Timestamp) -> list[FoldWindow]:
    windows = []
    for i in range(config.folds):
        start = train_start + i * config.fold_step_days * DAY
        train_end = start + config.train_days * DAY
        test_start = train_end + config.delay_days * DAY
        windows.append(FoldWindow(i, start, train_end, test_start, test_start + config.test_days * DAY))
    return windows


def plan_folds(config: BacktestConfig, timestamps: pd.Series) -> list[FoldWindow]:
    """The folds for a file, or a ValueError saying which dates they need and which the file holds."""
    if len(timestamps) == 0:
        raise InvalidInput("The transactions file holds no rows; a backtest needs several weeks of transactions.")
    times = pd.to_datetime(timestamps, utc=True)
    first_day, last_day = times.min().normalize(), times.max().normalize()
    chosen = config.first_train_day()
    start = first_day if chosen is None else chosen
    windows = fold_windows(config, start)
    need_end = windows[-1].test_end
    has = f"{first_day.date()} to {last_day.date()} ({(last_day - first_day).days + 1} days)"
    needs = f"{start.date()} to {(need_end - DAY).date()} ({math.ceil((need_end - start) / DAY)} days)"
    plan = (
        f"{config.folds} fold(s) of {config.train_days} training + {config.delay_days} delay + "
        f"{config.test_days} test days, {config.fold_step_days} days apart"
    )
    if start < first_day:
        raise InvalidInput(
            f"train_start {start.date()} is before the file's first day: the file spans {has}; "
            "choose a train_start inside the file or leave it out."
        )
    if need_end > last_day + DAY:
        raise InvalidInput(
            f"The transactions file spans {has} but {plan} need {needs}; "
            "use fewer folds, shorter windows, an earlier train_start or a longer file."
        )
    return windows


# ----------------------------------------------------------------------------------------------------------
# Point-in-time features


def write_feature_rows(
    transactions: pd.DataFrame, delay_days: float, end: pd.Timestamp, workdir: Path
) -> tuple[Path, Path]:
    """Run the streaming engine over every transaction before `end`; store its rows as Parquet, as Feast does.

    Later transactions are left out: the engine is causal, so they cannot change any row before `end`.
    """
    times = pd.to_datetime(transactions["timestamp"], utc=True)
    customers, terminals = backfill_features(transactions[(times < end).to_numpy()], label_delay_days=delay_days)
    customer_path, terminal_path = workdir / "customer_features.parquet", workdir / "terminal_features.parquet"
    to_feast_timestamps(customers).to_parquet(customer_path, index=False)
    to_feast_timestamps(terminals).to_parquet(terminal_path, index=False)
    return customer_path, terminal_path


def join_feature_rows(rows: pd.DataFrame, customer_path: Path, terminal_path: Path) -> pd.DataFrame:
    """`rows` (index reset) with the newest customer and terminal rows stored strictly before each of them."""
    entity = pd.DataFrame(
        {
            "customer_id": rows["customer_id"].astype(str).to_numpy(),
            "terminal_id": rows["terminal_id"].astype(str).to_numpy(),
            "event_timestamp": pd.to_datetime(rows["timestamp"], utc=True) - ONE_MICROSECOND,
        }
    )
    ttl = pd.Timedelta(FEATURE_TTL)
    joined = point_in_time_join(
        to_feast_timestamps(entity),
        [
            (str(customer_path), ["customer_id"], CUSTOMER_FEATURES, ttl),
            (str(terminal_path), ["terminal_id"], TERMINAL_FEATURES, ttl),
        ],
    )
    features = joined[CUSTOMER_FEATURES + TERMINAL_FEATURES]
    features.index = rows.index
    return pd.concat([rows, features], axis=1)


def point_in_time_frame(
    transactions: pd.DataFrame,
    delay_days: float,
    start: pd.Timestamp,
    end: pd.Timestamp,
    workdir: Path,
    stage_seconds: dict[str, float] | None = None,
) -> pd.DataFrame:
    """The transactions in [start, end), each joined with the feature rows stored strictly before it."""
    timings = {} if stage_seconds is None else stage_seconds
    clock = time.perf_counter()
    paths = write_feature_rows(transactions, delay_days, end, workdir)
    timings["feature_backfill"] = round(time.perf_counter() - clock, 3)
    clock = time.perf_counter()
    times = pd.to_datetime(transactions["timestamp"], utc=True)
    rows = transactions[((times >= start) & (times < end)).to_numpy()].reset_index(drop=True)
    frame = join_feature_rows(rows, *paths)
    timings["point_in_time_join"] = round(time.perf_counter() - clock, 3)
    return frame


# ----------------------------------------------------------------------------------------------------------
# One fold


@dataclass
class FoldSplit:
    train: np.ndarray  # row positions in the frame
    train_labels: np.ndarray  # fraud known by test_start
    test: np.ndarray
    test_labels: np.ndarray  # eventual truth
    train_frauds_not_yet_known: int
    excluded_cards: int
    excluded_rows: int


def known_compromised_cards(transactions: pd.DataFrame, moment: pd.Timestamp) -> set[str]:
    """Cards with a chargeback that has arrived by `moment`."""
    label_times = pd.to_datetime(transactions["label_timestamp"], utc=True)
    known = (transactions["is_fraud"].to_numpy() == 1) & (label_times <= moment).to_numpy()
    return set(transactions.loc[known, "customer_id"].astype(str))


def split_fold(frame: pd.DataFrame, window: FoldWindow, compromised: set[str]) -> FoldSplit:
    """Training and test rows of one fold; `compromised` are the cards known as compromised at test_start."""
    times = pd.to_datetime(frame["timestamp"], utc=True)
    is_fraud = frame["is_fraud"].to_numpy() == 1
    in_train = ((times >= window.train_start) & (times < window.train_end)).to_numpy()
    in_test = ((times >= window.test_start) & (times < window.test_end)).to_numpy()
    label_known = (pd.to_datetime(frame["label_timestamp"], utc=True) <= window.test_start).to_numpy()
    blocked = frame["customer_id"].astype(str).isin(compromised).to_numpy()
    train = np.flatnonzero(in_train)
    test = np.flatnonzero(in_test & ~blocked)
    return FoldSplit(
        train=train,
        train_labels=(is_fraud & label_known)[train].astype(int),
        test=test,
        test_labels=is_fraud[test].astype(int),
        train_frauds_not_yet_known=int((in_train & is_fraud & ~label_known).sum()),
        excluded_cards=int(frame.loc[in_test & blocked, "customer_id"].nunique()),
        excluded_rows=int((in_test & blocked).sum()),
    )


def _nan_metrics() -> dict[str, float]:
    return {**dict.fromkeys(METRICS, float("nan")), "fit_seconds": float("nan")}


def score_fold(
    frame: pd.DataFrame, matrix: pd.DataFrame, split: FoldSplit, config: BacktestConfig, progress: Progress
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Fit every strategy on the fold's training rows and score its test rows."""
    notes: list[str] = []
    results = {strategy: _nan_metrics() for strategy in config.strategies}
    positives = int(split.train_labels.sum())
    if len(split.train) == 0:
        notes.append("the training window holds no transactions; no model was fitted")
    elif positives == 0:
        notes.append("the training window holds no fraud known by test_start; no model was fitted")
    elif positives == len(split.train):
        notes.append("the training window holds no genuine transactions; no model was fitted")
    if len(split.test) == 0:
        notes.append("the test window holds no transactions of cards not already blocked; nothing to score")
    elif split.test_labels.sum() == 0:
        notes.append("the test window holds no fraud; ranking metrics are undefined")
    if notes:
        return results, notes

    x_train, y_train = matrix.iloc[split.train], split.train_labels
    x_test = matrix.iloc[split.test]
    test_rows = frame.iloc[split.test]
    days = pd.to_datetime(test_rows["timestamp"], utc=True).dt.floor("D").to_numpy()
    for strategy in config.strategies:
        progress(f"fitting '{strategy}' on {len(x_train):,} rows")
        started = time.perf_counter()
        try:
            model = modeling.fit_classifier(x_train, y_train, strategy, config.params, config.smote_ratio, config.seed)
        except ValueError as error:
            notes.append(f"strategy '{strategy}' could not be fitted: {error}")
            continue
        fit_seconds = time.perf_counter() - started
        scores = model.predict_proba(x_test)[:, 1]
        daily = pd.DataFrame(
            {
                "day": days,
                "customer_id": test_rows["customer_id"].to_numpy(),
                "score": scores,
                "label": split.test_labels,
            }
        )
        ranking = modeling.ranking_metrics(split.test_labels, scores)
        results[strategy] = {
            "roc_auc": ranking["roc_auc"],
            "average_precision": ranking["average_precision"],
            "card_precision_at_100": modeling.card_precision_at_k(daily, 100),
            "fit_seconds": round(fit_seconds, 3),
        }
    return results, notes


# ----------------------------------------------------------------------------------------------------------
# The backtest


def _check_columns(transactions: pd.DataFrame) -> None:
    missing = [c for c in (*REQUIRED_COLUMNS, "label_timestamp") if c not in transactions.columns]
    if missing:
        hint = (
            " Read the file with pipelines.fraud.data.read_transactions, which fills label times from the delay."
            if missing == ["label_timestamp"]
            else ""
        )
        raise InvalidInput(f"The transactions lack the column '{missing[0]}' that a backtest needs.{hint}")


def summarise(folds: list[dict[str, Any]], strategies: tuple[str, ...]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and standard deviation (ddof=0) of each metric over the folds where it is defined."""
    summary: dict[str, dict[str, dict[str, float]]] = {}
    for strategy in strategies:
        summary[strategy] = {}
        for metric in (*METRICS, "fit_seconds"):
            values = np.array([fold[strategy][metric] for fold in folds], dtype=float)
            values = values[~np.isnan(values)]
            summary[strategy][metric] = {
                "mean": float(values.mean()) if len(values) else float("nan"),
                "std": float(values.std()) if len(values) else float("nan"),
                "folds": len(values),
            }
    return summary


def _prefixed(say: Progress, prefix: str) -> Progress:
    return lambda message: say(f"{prefix}: {message}")


def run_backtest(transactions: pd.DataFrame, config: BacktestConfig, progress: Progress | None = None) -> dict:
    """Run the prequential backtest; the result is plain JSON data (undefined metrics are NaN).

    `transactions` follows the data contract (pipelines.fraud.data.read_transactions), label_timestamp included.
    """
    say = progress or (lambda _: None)
    started = time.perf_counter()
    _check_columns(transactions)
    windows = plan_folds(config, transactions["timestamp"])
    start, end = windows[0].train_start, windows[-1].test_end
    stage_seconds: dict[str, float] = {}

    say(f"computing features for transactions before {end.date()} through the streaming engine")
    with tempfile.TemporaryDirectory(prefix="mlsd-backtest-") as workdir:
        frame = point_in_time_frame(transactions, config.delay_days, start, end, Path(workdir), stage_seconds)
    clock = time.perf_counter()
    matrix = model_matrix(frame)
    stage_seconds["model_matrix"] = round(time.perf_counter() - clock, 3)

    folds: list[dict[str, Any]] = []
    clock = time.perf_counter()
    for window in windows:
        say(f"fold {window.fold + 1}/{len(windows)}: test from {window.test_start.date()}")
        split = split_fold(frame, window, known_compromised_cards(transactions, window.test_start))
        results, notes = score_fold(
            frame, matrix, split, config, _prefixed(say, f"fold {window.fold + 1}/{len(windows)}")
        )
        folds.append(
            {
                "fold": window.fold,
                "train_start": window.train_start.isoformat(),
                "train_end": window.train_end.isoformat(),
                "test_start": window.test_start.isoformat(),
                "test_end": window.test_end.isoformat(),
                "train_rows": len(split.train),
                "train_frauds_known": int(split.train_labels.sum()),
                "train_frauds_not_yet_known": split.train_frauds_not_yet_known,
                "test_rows": len(split.test),
                "test_frauds": int(split.test_labels.sum()),
                "excluded_known_compromised_cards": split.excluded_cards,
                "excluded_test_rows": split.excluded_rows,
                **results,
                "notes": notes,
            }
        )
    stage_seconds["folds"] = round(time.perf_counter() - clock, 3)

    config_dict = asdict(config)
    config_dict["train_start"] = start.date().isoformat() if start == start.normalize() else start.isoformat()
    config_dict["strategies"] = list(config.strategies)
    return {
        "config": config_dict,
        "rows": len(transactions),
        "rows_joined": len(frame),
        "folds": folds,
        "summary": summarise(folds, config.strategies),
        "stage_seconds": stage_seconds,
        "seconds": round(time.perf_counter() - started, 3),
    }
