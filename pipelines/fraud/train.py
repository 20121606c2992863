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
    import mlflow.xgboost

    if alias not in ALIASES:
        raise ValueError(f"alias must be one of {', '.join(ALIASES)}, not '{alias}'.")
    say = progress or (lambda _: None)
    params = params or modeling.XGBParams()
    seconds: dict[str, float] = {}
    connect_mlflow(settings)
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
    x_train, y_train = x_all[train_mask], known[train_mask].to_numpy(dtype=int)
    x_valid, y_valid = x_all[valid_mask], frame.loc[valid_mask, "is_fraud"].to_numpy(dtype=int)
    valid_frame = frame[valid_mask]

    mlflow.set_experiment(EXPERIMENT)
    results: list[StrategyResult] = []
    models: dict[str, Any] = {}
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    cost_curves: dict[str, pd.DataFrame] = {}
    clock = time.perf_counter()
    with mlflow.start_run(run_name="fraud-train") as parent, tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        mlflow.log_params(
            {
                "rows": len(frame),
                "train_rows": int(train_mask.sum()),
                "valid_rows": int(valid_mask.sum()),
                "split_time": split.isoformat(),
                "label_delay_days": settings.fraud_label_delay_days,
                "cost_missed_fraud": settings.fraud_cost_missed_fraud,
                "cost_false_alarm": settings.fraud_cost_false_alarm,
                "smote_ratio": settings.fraud_smote_ratio,
                "feature_service": FEATURE_SERVICE,
                **{f"xgb_{k}": v for k, v in asdict(params).items()},
            }
        )
        mlflow.log_dict({"features": MODEL_FEATURES}, "features.json")
        for strategy in strategies:
            say(f"training XGBoost with imbalance strategy '{strategy}'")
            started = time.perf_counter()
            model = modeling.fit_classifier(
                x_train, y_train, strategy, params, settings.fraud_smote_ratio, settings.seed
            )
            fit_seconds = time.perf_counter() - started
            scores = model.predict_proba(x_valid)[:, 1]
            metrics, curve = evaluate_scores(
                valid_frame, y_valid, scores, settings.fraud_cost_missed_fraud, settings.fraud_cost_false_alarm
            )
            with mlflow.start_run(run_name=f"strategy-{strategy}", nested=True) as child:
                mlflow.log_params({"strategy": strategy})
                mlflow.log_metrics({**metrics, "fit_seconds": fit_seconds})
                modeling.plot_cost_curve(
                    curve, metrics["threshold"], tmp_dir / f"cost_{strategy}.png", f"cost curve — {strategy}"
                )
                modeling.plot_pr_curves({strategy: (y_valid, scores)}, tmp_dir / f"pr_{strategy}.png", strategy)
                mlflow.log_artifact(str(tmp_dir / f"cost_{strategy}.png"), "plots")
                mlflow.log_artifact(str(tmp_dir / f"pr_{strategy}.png"), "plots")
            results.append(
                StrategyResult(
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
            )
            models[strategy] = model
            curves[strategy] = (y_valid, scores)
            cost_curves[strategy] = curve
        seconds["training"] = time.perf_counter() - clock

        best = max(results, key=lambda r: (np.nan_to_num(r.average_precision, nan=-1), -r.cost))
        plots_dir = settings.reports_dir / "fraud"
        pr_plot = modeling.plot_pr_curves(curves, plots_dir / "pr_curves.png", "validation PR curves by strategy")
        cost_plot = modeling.plot_cost_curve(
            cost_curves[best.strategy], best.threshold, plots_dir / "cost_curve.png", f"cost curve — {best.strategy}"
        )
        mlflow.log_artifact(str(pr_plot), "plots")
        mlflow.log_artifact(str(cost_plot), "plots")
        comparison = pd.DataFrame([asdict(r) for r in results])
        mlflow.log_table(comparison, "strategies.json")
        mlflow.log_metrics({f"{r.strategy}_average_precision": r.average_precision for r in results})
        reference = x_valid.assign(score=curves[best.strategy][1], label=y_valid)
        reference = reference.sample(min(len(reference), 20_000), random_state=settings.seed)
        reference.to_parquet(tmp_dir / "reference.parquet", index=False)
        mlflow.log_artifact(str(tmp_dir / "reference.parquet"), "reference")

        say(f"registering the '{best.strategy}' model as {MODEL_NAME}@{alias}")
        info = mlflow.xgboost.log_model(
            models[best.strategy],
            name="model",
            input_example=x_valid.head(3),
            model_format="ubj",
            pip_requirements=pinned_requirements("mlflow", "xgboost", "numpy", "pandas", "scikit-learn"),
        )
        version = register_version(
            info.model_uri,
            MODEL_NAME,
            alias,
            tags={
                "strategy": best.strategy,
                "threshold": f"{best.threshold:.6f}",
                "features": json.dumps(MODEL_FEATURES),
                "average_precision": f"{best.average_precision:.6f}",
                "training_run_id": parent.info.run_id,
                # The gate warns when its holdout starts before the newest row the model was fit on.
                "train_data_end": pd.to_datetime(frame.loc[train_mask, "timestamp"], utc=True).max().isoformat(),
            },
            reason=f"trained ({best.strategy}, validation average precision {best.average_precision:.4f})",
            metrics={"validation_average_precision": best.average_precision, "validation_roc_auc": best.roc_auc},
        )
    seconds["total"] = sum(seconds.values())
    return TrainReport(
        rows=len(frame),
        train_rows=int(train_mask.sum()),
        valid_rows=int(valid_mask.sum()),
        fraud_share=float(frame["is_fraud"].mean()),
        best_strategy=best.strategy,
        threshold=best.threshold,
        model_version=version,
        strategies=results,
        seconds=seconds,
        plots={"pr_curves": str(pr_plot), "cost_curve": str(cost_plot)},
        alias=alias,
    )
