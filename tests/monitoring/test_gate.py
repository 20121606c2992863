"""The promotion gate on real models, real Feast stores and a real MLflow registry, for both designs.

Each check recomputes the two models' metrics on the holdout by another route (the serving feature store instead
of the gate's scratch one, the in-memory recommender instead of the registered pyfunc, sklearn and the per-list
metric helpers instead of the shared evaluators) and expects the gate's numbers to match.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines.designs import feature_definitions
from pipelines.fraud.model import MODEL_NAME as FRAUD_MODEL
from pipelines.fraud.model import load_fraud_version
from pipelines.monitoring.gate import check_metric, run_gate
from pipelines.platform.design import GateError
from pipelines.platform.errors import InvalidInput
from pipelines.platform.registry import (
    CHALLENGER,
    CHAMPION,
    alias_version,
    connect_mlflow,
    history,
    register_version,
)
from pipelines.recsys.model import MODEL_NAME as RECSYS_MODEL
from pipelines.settings import Settings

pytestmark = pytest.mark.integration


def module_settings(tmp_path_factory: pytest.TempPathFactory, name: str) -> Settings:
    home = tmp_path_factory.mktemp(name)
    return Settings(home=home, mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}")


def log_fast(log: Any, artifact_root: Path, **kwargs: Any) -> str:
    """Log a model with its requirements given (no requirement inference), in an experiment under `artifact_root`."""
    import mlflow

    experiment = mlflow.get_experiment_by_name("gate-test-models")
    experiment_id = (
        experiment.experiment_id if experiment else mlflow.create_experiment("gate-test-models", artifact_root.as_uri())
    )
    with mlflow.start_run(experiment_id=experiment_id):
        return str(log(name="model", pip_requirements=["mlflow", "xgboost"], **kwargs).model_uri)


# ---------------------------------------------------------------- fraud


@pytest.fixture(scope="module")
def fraud(tmp_path_factory: pytest.TempPathFactory, small_transactions: pd.DataFrame) -> dict[str, Any]:
    """Challenger: `train_fraud(alias="challenger")`. Champion: a deliberately small model on the same features."""
    import mlflow.xgboost

    from pipelines.fraud.features import MODEL_FEATURES, model_matrix
    from pipelines.fraud.modeling import XGBParams, fit_classifier
    from pipelines.fraud.train import train_fraud, training_frame
    from pipelines.platform.features import apply_feature_definitions

    settings = module_settings(tmp_path_factory, "gate-fraud")
    report = train_fraud(
        settings, small_transactions, strategies=("class_weight",), params=XGBParams(n_estimators=60), alias=CHALLENGER
    )
    times = pd.to_datetime(small_transactions["timestamp"], utc=True)
    early = small_transactions[(times < times.min() + pd.Timedelta(days=15)).to_numpy()]
    frame = training_frame(apply_feature_definitions(settings, feature_definitions()), early)
    weak = fit_classifier(
        model_matrix(frame),
        frame["is_fraud"].to_numpy(dtype=int),
        "none",
        XGBParams(n_estimators=5, max_depth=1),
        0.1,
        7,
    )
    uri = log_fast(mlflow.xgboost.log_model, settings.home / "artifacts", xgb_model=weak, model_format="ubj")
    tags = {"features": json.dumps(MODEL_FEATURES), "threshold": "0.5"}
    champion = register_version(uri, FRAUD_MODEL, CHAMPION, tags=tags, reason="baseline")
    return {"settings": settings, "challenger": report.model_version, "champion": champion}


def expected_fraud_metrics(settings: Settings, transactions: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Both models on the last 7 fully labelled days, with features read from the store training filled."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from pipelines.fraud.features import model_matrix
    from pipelines.fraud.train import training_frame
    from pipelines.platform.features import apply_feature_definitions

    times = pd.to_datetime(transactions["timestamp"], utc=True)
    final = times.max() - pd.Timedelta(days=settings.fraud_label_delay_days)
    rows = transactions[((times > final - pd.Timedelta(days=7)) & (times <= final)).to_numpy()]
    frame = training_frame(apply_feature_definitions(settings, feature_definitions()), rows)
    labels = frame["is_fraud"].to_numpy(dtype=int)
    out = {"rows": {"count": float(len(rows))}}
    for alias in (CHAMPION, CHALLENGER):
        version = alias_version(FRAUD_MODEL, alias)
        assert version is not None
        scores = load_fraud_version(version).scores(model_matrix(frame))
        out[alias] = {
            "average_precision": float(average_precision_score(labels, scores)),
            "roc_auc": float(roc_auc_score(labels, scores)),
        }
    return out


def test_training_can_register_a_challenger_and_the_registration_is_audited(fraud: dict[str, Any]) -> None:
    connect_mlflow(fraud["settings"])
    assert alias_version(FRAUD_MODEL, CHALLENGER) == fraud["challenger"]
    assert alias_version(FRAUD_MODEL, CHAMPION) == fraud["champion"]
    registered = history(FRAUD_MODEL, alias=CHALLENGER)
    assert [(r.action, r.from_version, r.to_version) for r in registered] == [("register", None, fraud["challenger"])]
    assert registered[0].reason.startswith("trained (class_weight, validation average precision")
    assert "validation_average_precision" in registered[0].metrics


def test_the_fraud_gate_scores_both_models_on_the_same_recent_labelled_days(
    fraud: dict[str, Any], small_transactions: pd.DataFrame
) -> None:
    settings = fraud["settings"]
    result = run_gate(settings, "fraud", small_transactions, min_improvement=0.0)
    expected = expected_fraud_metrics(settings, small_transactions)

    assert (result.model, result.metric) == (FRAUD_MODEL, "average_precision")
    assert (result.champion_version, result.challenger_version) == (fraud["champion"], fraud["challenger"])
    assert result.holdout.rows == expected["rows"]["count"]
    assert result.holdout.end <= pd.to_datetime(small_transactions["timestamp"], utc=True).max() - pd.Timedelta(days=7)
    for role, metrics in (("champion", result.champion_metrics), ("challenger", result.challenger_metrics)):
        for name in ("average_precision", "roc_auc"):
            assert metrics[name] == pytest.approx(expected[role][name], abs=1e-9), (role, name)
    assert result.champion_value is not None and result.improvement is not None
    assert result.champion_value == pytest.approx(expected["champion"]["average_precision"], abs=1e-9)
    assert result.improvement == pytest.approx(result.challenger_value - result.champion_value)
    assert result.passed == (result.improvement >= 0)
    assert result.passed  # 60 weighted trees against 5 stumps
    assert "passes" in result.reason and f"{result.holdout.rows:,} transactions" in result.reason
    assert result.warnings == ()  # the challenger was fit on rows before the holdout

    # Another metric and a bar no model can clear, reading the serving store instead of a scratch backfill.
    strict = run_gate(
        settings, "fraud", small_transactions, metric="roc_auc", min_improvement=1.0, rebuild_features=False
    )
    assert not strict.passed
    assert strict.champion_value == pytest.approx(expected["champion"]["roc_auc"], abs=1e-9)
    assert strict.challenger_value == pytest.approx(expected["challenger"]["roc_auc"], abs=1e-9)
    assert "is rejected and champion" in strict.reason


def test_promote_command_gates_and_promotes_the_fraud_challenger(
    fraud: dict[str, Any],
    small_transactions: pd.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    from pipelines.cli import main

    # On a copy of the module's registry and feature store: moving the aliases must not reach the other tests.
    home = tmp_path / "home"
    shutil.copytree(fraud["settings"].home, home)
    settings = Settings(home=home, mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    data = settings.home / "recent.parquet"
    small_transactions.to_parquet(data)
    monkeypatch.setenv("MLSD_HOME", str(settings.home))
    monkeypatch.setenv("MLSD_MLFLOW_TRACKING_URI", settings.tracking_uri)
    monkeypatch.setattr(
        sys,
        "argv",
        ["mlsd", "registry", "promote", "--model", "fraud", "--data", str(data), "--min-improvement", "0.01", "--json"],
    )
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code in (0, None)
    outcome = json.loads(capsys.readouterr().out)
    gate = outcome["gate"]
    # 60 weighted trees against 5 stumps: the challenger clears the 0.01 bar and is promoted.
    assert outcome["promoted"] and gate["passed"] and gate["improvement"] >= 0.01
    connect_mlflow(settings)
    assert alias_version(FRAUD_MODEL, CHAMPION) == fraud["challenger"]
    assert alias_version(FRAUD_MODEL, CHALLENGER) is None
    record = history(FRAUD_MODEL, limit=1)[0]
    assert record.action == "promote"
    assert pd.Timestamp(record.details["challenger_train_data_end"]) < pd.Timestamp(gate["holdout"]["start"])
    assert record.metrics["challenger_average_precision"] == pytest.approx(gate["challenger_value"])
    assert record.metrics["champion_average_precision"] == pytest.approx(gate["champion_value"])
    assert record.details["holdout_rows"] == str(gate["holdout"]["rows"])


# ---------------------------------------------------------------- recsys


@pytest.fixture(scope="module")
def recsys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two rankers fit on interactions before the holdout: a small champion and a fuller challenger."""
    import mlflow.pyfunc

    from pipelines.recsys.pyfunc import RecommenderModel
    from pipelines.recsys.rank import RankerParams, train_recommender
    from pipelines.recsys.simulate import config_for_size, simulate_interactions
    from pipelines.recsys.splits import split_interactions

    settings = module_settings(tmp_path_factory, "gate-recsys")
    connect_mlflow(settings)
    interactions, items = simulate_interactions(config_for_size(15_000, seed=6))
    history_part, _ = split_interactions(interactions, "temporal", 0.2, 7)
    half = history_part.sort_values("timestamp", kind="stable").iloc[: len(history_part) // 2]
    models = {}
    for alias, data, trees in ((CHAMPION, half, 10), (CHALLENGER, history_part, 60)):
        recommender, _ = train_recommender(data, items, params=RankerParams(n_estimators=trees))
        with tempfile.TemporaryDirectory() as folder:
            saved = recommender.save(Path(folder) / "recommender")
            uri = log_fast(
                mlflow.pyfunc.log_model,
                settings.home / "artifacts",
                python_model=RecommenderModel(),
                artifacts={"recommender": str(saved)},
            )
        version = register_version(uri, RECSYS_MODEL, alias, tags={"train_data_end": str(data["timestamp"].max())})
        models[alias] = (version, recommender)
    return {"settings": settings, "interactions": interactions, "models": models}


def test_the_recsys_gate_asks_both_registered_models_for_the_holdout_users(recsys: dict[str, Any]) -> None:
    from pipelines.platform.ranking import average_precision_at_k, ndcg_at_k, recall_at_k
    from pipelines.recsys.splits import split_interactions, test_relevance

    settings, interactions = recsys["settings"], recsys["interactions"]
    result = run_gate(settings, "recsys", interactions, holdout_frac=0.2, max_users=None)

    history_part, holdout = split_interactions(interactions, "temporal", 0.2, 7)
    relevant = test_relevance(history_part, holdout)
    users = sorted(relevant)
    assert (result.holdout.rows, result.holdout.entities) == (len(holdout), len(users))
    for role, metrics in (("champion", result.champion_metrics), ("challenger", result.challenger_metrics)):
        version, recommender = recsys["models"][role]
        lists = {user: [item for item, _, _ in found] for user, found in recommender.recommend(users, 10).items()}
        for name, per_list in (("ndcg@10", ndcg_at_k), ("recall@10", recall_at_k), ("map@10", average_precision_at_k)):
            expected = float(np.mean([per_list(lists[user], relevant[user], 10) for user in users]))
            assert metrics[name] == pytest.approx(expected, abs=1e-9), (role, name)
    assert (result.champion_version, result.challenger_version) == (
        recsys["models"][CHAMPION][0],
        recsys["models"][CHALLENGER][0],
    )
    assert result.metric == "ndcg@10"
    assert result.champion_value == result.champion_metrics["ndcg@10"]
    assert result.champion_value is not None and result.improvement is not None
    assert result.improvement == pytest.approx(result.challenger_value - result.champion_value)
    assert result.passed == (result.improvement >= 0)
    assert result.warnings == ()  # both were fit on interactions before the holdout

    recall = run_gate(settings, "recsys-ranker", interactions, metric="recall@10", min_improvement=1.0, max_users=None)
    assert not recall.passed
    assert recall.champion_value == pytest.approx(result.champion_metrics["recall@10"])


def test_the_gate_refuses_a_holdout_that_overlaps_a_models_training_data(recsys: dict[str, Any]) -> None:
    settings, interactions = recsys["settings"], recsys["interactions"]
    # A wider holdout starts before the end of the challenger's training data, so the challenger has seen part of it.
    fair = run_gate(settings, "recsys", interactions, max_users=300, min_improvement=-1.0)
    assert fair.passed and fair.warnings == ()
    result = run_gate(settings, "recsys", interactions, holdout_frac=0.5, max_users=300, min_improvement=-1.0)
    assert result.holdout.entities == 300
    assert not result.passed  # it would pass on the numbers: the bar is −1
    challenger = recsys["models"][CHALLENGER][0]
    assert result.reason.startswith(f"Challenger v{challenger} is refused: the challenger v{challenger} was fit on")
    assert result.reason.endswith("give the gate data newer than both models' training data.")
    # Only the challenger saw data after the holdout's start; the champion stopped at 40 % of the file.
    assert len(result.warnings) == 1 and "champion" not in result.warnings[0]
    details = result.audit_details()
    assert details["passed"] == "false" and details["holdout_start"] == result.holdout.start.isoformat()
    assert details["challenger_train_data_end"] == result.train_data_end["challenger"] != ""
    assert pd.Timestamp(details["challenger_train_data_end"]) >= result.holdout.start


def test_gate_inputs_are_checked_in_one_sentence(recsys: dict[str, Any]) -> None:
    settings, interactions = recsys["settings"], recsys["interactions"]
    assert check_metric(FRAUD_MODEL, "card_precision_at_k") == "card_precision_at_100"
    assert check_metric("recsys", None) == "ndcg@10"
    with pytest.raises(GateError, match="'ndcg@10' is not a fraud gate metric"):
        check_metric(FRAUD_MODEL, "ndcg@10")
    with pytest.raises(GateError, match="'auc' is not a recommendation gate metric"):
        run_gate(settings, "recsys", interactions, metric="auc")
    with pytest.raises(GateError, match="--holdout-frac must lie strictly between 0 and 1"):
        run_gate(settings, "recsys", interactions, holdout_frac=1.5)
    with pytest.raises(InvalidInput, match="'churn' is not a design or a registered model of one"):
        run_gate(settings, "churn", interactions)
