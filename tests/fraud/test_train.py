"""Training on real Feast stores and a real MLflow registry (SQLite backend)."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from feature_repo.fraud import CUSTOMER_FEATURES
from pipelines.designs import feature_definitions
from pipelines.fraud.features import MODEL_FEATURES, backfill_features
from pipelines.fraud.model import MODEL_NAME, load_fraud_version
from pipelines.fraud.modeling import IMBALANCE_STRATEGIES, XGBParams
from pipelines.fraud.train import train_fraud, training_frame
from pipelines.platform.features import apply_feature_definitions
from pipelines.platform.registry import alias_version

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_transactions):
    from pipelines.settings import Settings

    home = tmp_path_factory.mktemp("train")
    settings = Settings(home=home, mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    report = train_fraud(settings, small_transactions, params=XGBParams(n_estimators=60))
    return settings, report


def test_four_strategies_are_compared_and_the_best_becomes_champion(trained):
    settings, report = trained
    assert [r.strategy for r in report.strategies] == list(IMBALANCE_STRATEGIES)
    best = max(report.strategies, key=lambda r: r.average_precision)
    assert report.best_strategy == best.strategy
    # Measured on this data (fraud rate ~0.8 %): average precision 0.36-0.60, ROC-AUC 0.92-0.95. A model that
    # learned nothing scores ~0.01 and 0.5; one that lost a feature family falls well below these floors.
    assert all(r.average_precision > 0.3 and r.roc_auc > 0.88 for r in report.strategies), report.strategies
    assert report.train_rows + report.valid_rows < report.rows  # the label-delay gap is left out

    assert alias_version(MODEL_NAME, "champion") == report.model_version
    champion = load_fraud_version(report.model_version)
    assert champion.tags["strategy"] == report.best_strategy
    assert json.loads(champion.tags["features"]) == MODEL_FEATURES
    assert float(champion.tags["threshold"]) == pytest.approx(report.threshold, abs=1e-6)


def test_every_run_is_logged_with_metrics_plots_features_and_reference(trained):
    settings, _ = trained
    client = MlflowClient()
    experiment = client.get_experiment_by_name("fraud")
    runs = client.search_runs([experiment.experiment_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert {r.data.params["strategy"] for r in children} == set(IMBALANCE_STRATEGIES)
    for run in children:
        assert {"average_precision", "roc_auc", "precision", "recall", "card_precision_at_100", "threshold"} <= set(
            run.data.metrics
        )
        assert {a.path for a in client.list_artifacts(run.info.run_id, "plots")} >= {
            f"plots/cost_{run.data.params['strategy']}.png",
            f"plots/pr_{run.data.params['strategy']}.png",
        }
    parent = next(r for r in runs if not r.data.tags.get("mlflow.parentRunId"))
    paths = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"features.json", "reference", "plots"} <= paths
    reference = mlflow.artifacts.download_artifacts(run_id=parent.info.run_id, artifact_path="reference")
    sample = pd.read_parquet(f"{reference}/reference.parquet")
    assert list(sample.columns) == [*MODEL_FEATURES, "score", "label"]


def test_the_training_set_uses_only_rows_stored_before_each_transaction(trained, small_transactions):
    settings, _ = trained
    store = apply_feature_definitions(settings, feature_definitions())
    head = small_transactions.head(3000)
    frame = training_frame(store, head)
    customers, _ = backfill_features(small_transactions, settings.fraud_label_delay_days)
    # For each transaction, the expected row is the customer's previous transaction's row (or none).
    customers = customers.assign(
        transaction_id=small_transactions.sort_values(["timestamp", "transaction_id"], kind="stable")[
            "transaction_id"
        ].to_numpy()
    )
    previous = customers.groupby("customer_id")[CUSTOMER_FEATURES].shift(1)
    previous.index = customers["transaction_id"]
    expected = previous.loc[head["transaction_id"], "customer_tx_count_7d"].to_numpy(dtype=float)
    got = frame["customer_tx_count_7d"].to_numpy(dtype=float)
    same_time = head.duplicated(["customer_id", "timestamp"], keep=False).to_numpy()
    np.testing.assert_array_equal(np.nan_to_num(got[~same_time], nan=-1), np.nan_to_num(expected[~same_time], nan=-1))
