"""Fraud training: point-in-time features from Feast, four imbalance strategies side by side, MLflow, registry.

Flow: backfill feature rows from the transaction file (the streaming engine run in batch) → Feast historical
retrieval at each transaction's time minus one microsecond (the rows stored *before* it, as the service sees
them) → time-ordered split with the label delay as a gap → XGBoost per strategy → metrics and a cost-based
threshold on the validation window → everything logged to MLflow → the best strategy registered as
`fraud-xgboost@champion` (or `@challenger`, for the promotion gate to decide; the registration is audited).
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_repo.fraud import (
    CUSTOMER_PUSH,
    CUSTOMER_VIEW,
    FEATURE_SERVICE,
    TERMINAL_PUSH,
    TERMINAL_VIEW,
    fraud_feature_objects,
)
from pipelines.fraud import modeling
from pipelines.fraud.features import MODEL_FEATURES, backfill_features, model_matrix
from pipelines.fraud.model import MODEL_NAME
from pipelines.platform.features import (
    append_offline,
    apply_feature_definitions,
    historical_features,
    latest_per_entity,
    push_online,
    reset_offline,
    to_feast_timestamps,
)
from pipelines.platform.registry import ALIASES, CHAMPION, connect_mlflow, pinned_requirements, register_version
from pipelines.settings import Settings

EXPERIMENT = "fraud"
Progress = Callable[[str], None]


@dataclass
class StrategyResult:
    strategy: str
    average_precision: float
    roc_auc: float
    precision: float
    recall: float
    card_precision_at_100: float
    threshold: float
    cost: float
    fit_seconds: float
    run_id: str = ""


@dataclass
class TrainReport:
    rows: int
    train_rows: int
    valid_rows: int
    fraud_share: float
    best_strategy: str
    threshold: float
    model_version: str
    strategies: list[StrategyResult]
    seconds: dict[str, float] = field(default_factory=dict)
    plots: dict[str, str] = field(default_factory=dict)
    alias: str = CHAMPION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def backfill_feature_store(settings: Settings, transactions: pd.DataFrame, store: Any) -> dict[str, int]:
    """Rewrite the offline rows from a file and load the newest row per entity online (a materialisation)."""
    customers, terminals = backfill_features(transactions, settings.fraud_label_delay_days)
    for view, rows in ((CUSTOMER_VIEW, customers), (TERMINAL_VIEW, terminals)):
        reset_offline(settings, view)
        append_offline(settings, view, rows, part_name="backfill")
    push_online(store, CUSTOMER_PUSH, latest_per_entity(customers, "customer_id"))
    push_online(store, TERMINAL_PUSH, latest_per_entity(terminals, "terminal_id"))
    return {"customer_rows": len(customers), "terminal_rows": len(terminals)}


def training_frame(store: Any, transactions: pd.DataFrame) -> pd.DataFrame:
    """Transactions joined with the feature rows stored strictly before each of them (Feast, point in time)."""
    entity = transactions[["transaction_id", "customer_id", "terminal_id"]].copy()
    entity["event_timestamp"] = pd.to_datetime(transactions["timestamp"], utc=True) - pd.Timedelta(microseconds=1)
    entity = to_feast_timestamps(entity)
    features = historical_features(store, FEATURE_SERVICE, entity)
    features = features.drop(columns=["customer_id", "terminal_id", "event_timestamp"]).set_index("transaction_id")
    return transactions.join(features, on="transaction_id")


def evaluate_scores(
    frame: pd.DataFrame, labels: np.ndarray, scores: np.ndarray, cost_missed: float, cost_false_alarm: float
) -> tuple[dict[str, float], pd.DataFrame]:
    curve = modeling.cost_curve(labels, scores, cost_missed, cost_false_alarm)
    threshold = modeling.choose_threshold(curve)
    daily = pd.DataFrame(
        {
            "day": pd.to_datetime(frame["timestamp"], utc=True).dt.floor("D").to_numpy(),
            "customer_id": frame["customer_id"].to_numpy(),
            "score": scores,
            "label": labels,
        }
    )
    metrics = {
        **modeling.ranking_metrics(labels, scores),
        **modeling.precision_recall_at(labels, scores, threshold),
        "card_precision_at_100": modeling.card_precision_at_k(daily, 100),
        "threshold": threshold,
        "cost": float(curve["cost"].min()),
    }
    return metrics, curve


@dataclass
class TrainingData:
    """The point-in-time training set, split in time with the label delay as a gap."""

    frame: pd.DataFrame
    train_mask: np.ndarray
    valid_mask: np.ndarray
    split: pd.Timestamp
    x_train: pd.DataFrame
    y_train: np.ndarray  # labels known at the split time
    x_valid: pd.DataFrame
    y_valid: np.ndarray  # final labels: the validation window is judged on everything that came

    @property
    def valid_frame(self) -> pd.DataFrame:
        return self.frame[self.valid_mask]


def training_data(
    settings: Settings, transactions: pd.DataFrame, backfill: bool, valid_fraction: float, say: Progress
) -> tuple[TrainingData, dict[str, float]]:
    """Backfill the feature rows (optional), retrieve them point in time from Feast, split in time; with timings."""
    seconds: dict[str, float] = {}
    store = apply_feature_definitions(settings, [fraud_feature_objects])
    clock = time.perf_counter()
    if backfill:
        say("backfilling features through the streaming engine")
        backfill_feature_store(settings, transactions, store)
        seconds["backfill"] = time.perf_counter() - clock
    clock = time.perf_counter()
    say("point-in-time training set from Feast")
    frame = training_frame(store, transactions)
    seconds["feast_retrieval"] = time.perf_counter() - clock
    delay = pd.Timedelta(days=settings.fraud_label_delay_days)
    train_mask, valid_mask, split = modeling.time_ordered_split(frame["timestamp"], valid_fraction, delay)
    # Labels are used only once known: at the split time a later chargeback has not arrived yet.
    known = (frame["is_fraud"] == 1) & (pd.to_datetime(frame["label_timestamp"], utc=True) <= split)
    x_all = model_matrix(frame)
    data = TrainingData(
        frame=frame,
        train_mask=train_mask,
        valid_mask=valid_mask,
        split=split,
        x_train=x_all[train_mask],
        y_train=known[train_mask].to_numpy(dtype=int),
        x_valid=x_all[valid_mask],
        y_valid=frame.loc[valid_mask, "is_fraud"].to_numpy(dtype=int),
    )
    return data, seconds


@dataclass
class FittedStrategy:
    result: StrategyResult
    model: Any
    scores: np.ndarray  # on the validation window
    cost_curve: pd.DataFrame


def fit_strategy(
    settings: Settings, data: TrainingData, strategy: str, params: modeling.XGBParams, plots: Path
) -> FittedStrategy:
    """One imbalance strategy: fit, score the validation window, choose its threshold, log a nested MLflow run."""
    import mlflow

    started = time.perf_counter()
    model = modeling.fit_classifier(
        data.x_train, data.y_train, strategy, params, settings.fraud_smote_ratio, settings.seed
    )
    fit_seconds = time.perf_counter() - started
    scores = model.predict_proba(data.x_valid)[:, 1]
    metrics, curve = evaluate_scores(
        data.valid_frame, data.y_valid, scores, settings.fraud_cost_missed_fraud, settings.fraud_cost_false_alarm
    )
    with mlflow.start_run(run_name=f"strategy-{strategy}", nested=True) as child:
        mlflow.log_params({"strategy": strategy})
        mlflow.log_metrics({**metrics, "fit_seconds": fit_seconds})
        modeling.plot_cost_curve(
            curve, metrics["threshold"], plots / f"cost_{strategy}.png", f"cost curve — {strategy}"
        )
        modeling.plot_pr_curves({strategy: (data.y_valid, scores)}, plots / f"pr_{strategy}.png", strategy)
        mlflow.log_artifact(str(plots / f"cost_{strategy}.png"), "plots")
        mlflow.log_artifact(str(plots / f"pr_{strategy}.png"), "plots")
    result = StrategyResult(
        strategy=strategy,
        average_precision=metrics["average_precision"],
        roc_auc=metrics["roc_auc"],
        precision=metrics["precision"],
        recall=metrics["recall"],
        card_precision_at_100=metrics["card_precision_at_100"],
        threshold=metrics["threshold"],
        cost=metrics["cost"],
        fit_seconds=fit_seconds,
        run_id=child.info.run_id,
    )
    return FittedStrategy(result, model, scores, curve)


def train_fraud(
    settings: Settings,
    transactions: pd.DataFrame,
    backfill: bool = True,
    strategies: tuple[str, ...] = modeling.IMBALANCE_STRATEGIES,
    params: modeling.XGBParams | None = None,
    valid_fraction: float = 0.25,
    progress: Progress | None = None,
    alias: str = CHAMPION,
) -> TrainReport:
    import mlflow

    if alias not in ALIASES:
        raise ValueError(f"alias must be one of {', '.join(ALIASES)}, not '{alias}'.")
    say = progress or (lambda _: None)
    params = params or modeling.XGBParams()
    connect_mlflow(settings)
    data, seconds = training_data(settings, transactions, backfill, valid_fraction, say)
    mlflow.set_experiment(EXPERIMENT)
    clock = time.perf_counter()
    with mlflow.start_run(run_name="fraud-train") as parent, tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params(
            {
                "rows": len(data.frame),
                "train_rows": int(data.train_mask.sum()),
                "valid_rows": int(data.valid_mask.sum()),
                "split_time": data.split.isoformat(),
                "label_delay_days": settings.fraud_label_delay_days,
                "cost_missed_fraud": settings.fraud_cost_missed_fraud,
                "cost_false_alarm": settings.fraud_cost_false_alarm,
                "smote_ratio": settings.fraud_smote_ratio,
                "feature_service": FEATURE_SERVICE,
                **{f"xgb_{k}": v for k, v in asdict(params).items()},
            }
        )
        mlflow.log_dict({"features": MODEL_FEATURES}, "features.json")
        fitted: dict[str, FittedStrategy] = {}
        for strategy in strategies:
            say(f"training XGBoost with imbalance strategy '{strategy}'")
            fitted[strategy] = fit_strategy(settings, data, strategy, params, Path(tmp))
        seconds["training"] = time.perf_counter() - clock
        results = [f.result for f in fitted.values()]
        best = max(results, key=lambda r: (np.nan_to_num(r.average_precision, nan=-1), -r.cost))
        plots = log_comparison(settings, data, fitted, best, Path(tmp))
        say(f"registering the '{best.strategy}' model as {MODEL_NAME}@{alias}")
        version = register_best(data, fitted[best.strategy], parent.info.run_id, alias)
    seconds["total"] = sum(seconds.values())
    return TrainReport(
        rows=len(data.frame),
        train_rows=int(data.train_mask.sum()),
        valid_rows=int(data.valid_mask.sum()),
        fraud_share=float(data.frame["is_fraud"].mean()),
        best_strategy=best.strategy,
        threshold=best.threshold,
        model_version=version,
        strategies=results,
        seconds=seconds,
        plots=plots,
        alias=alias,
    )


def log_comparison(
    settings: Settings, data: TrainingData, fitted: dict[str, FittedStrategy], best: StrategyResult, tmp: Path
) -> dict[str, str]:
    """The strategies side by side in the parent run: PR curves, the best one's cost curve, the table, and the
    monitor's reference (validation rows with the best model's scores); returns the plot paths."""
    import mlflow

    plots_dir = settings.reports_dir / "fraud"
    curves = {name: (data.y_valid, f.scores) for name, f in fitted.items()}
    pr_plot = modeling.plot_pr_curves(curves, plots_dir / "pr_curves.png", "validation PR curves by strategy")
    cost_plot = modeling.plot_cost_curve(
        fitted[best.strategy].cost_curve, best.threshold, plots_dir / "cost_curve.png", f"cost curve — {best.strategy}"
    )
    mlflow.log_artifact(str(pr_plot), "plots")
    mlflow.log_artifact(str(cost_plot), "plots")
    mlflow.log_table(pd.DataFrame([asdict(f.result) for f in fitted.values()]), "strategies.json")
    mlflow.log_metrics({f"{name}_average_precision": f.result.average_precision for name, f in fitted.items()})
    reference = data.x_valid.assign(score=fitted[best.strategy].scores, label=data.y_valid)
    reference = reference.sample(min(len(reference), 20_000), random_state=settings.seed)
    reference.to_parquet(tmp / "reference.parquet", index=False)
    mlflow.log_artifact(str(tmp / "reference.parquet"), "reference")
    return {"pr_curves": str(pr_plot), "cost_curve": str(cost_plot)}


def register_best(data: TrainingData, best: FittedStrategy, training_run_id: str, alias: str) -> str:
    """Log the best strategy's model in XGBoost's own format and register it under `alias` (audited)."""
    import mlflow.xgboost

    result = best.result
    info = mlflow.xgboost.log_model(
        best.model,
        name="model",
        input_example=data.x_valid.head(3),
        model_format="ubj",
        pip_requirements=pinned_requirements("mlflow", "xgboost", "numpy", "pandas", "scikit-learn"),
    )
    return register_version(
        info.model_uri,
        MODEL_NAME,
        alias,
        tags={
            "strategy": result.strategy,
            "threshold": f"{result.threshold:.6f}",
            "features": json.dumps(MODEL_FEATURES),
            "average_precision": f"{result.average_precision:.6f}",
            "training_run_id": training_run_id,
            # The gate warns when its holdout starts before the newest row the model was fit on.
            "train_data_end": pd.to_datetime(data.frame.loc[data.train_mask, "timestamp"], utc=True).max().isoformat(),
        },
        reason=f"trained ({result.strategy}, validation average precision {result.average_precision:.4f})",
        metrics={"validation_average_precision": result.average_precision, "validation_roc_auc": result.roc_auc},
    )
