"""Small real fraud models in a real MLflow registry, for the deployment tests (no training pipeline needed), and a
module fixture holding three of them."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.fraud.features import MODEL_FEATURES
from pipelines.fraud.model import MODEL_NAME
from pipelines.settings import Settings


def experiment(settings: Settings) -> str:
    """An experiment whose artifacts stay under the test's home (MLflow would use ./mlruns otherwise)."""
    import mlflow

    from pipelines.platform.registry import connect_mlflow

    connect_mlflow(settings)
    location = (Path(settings.home) / "artifacts").resolve().as_uri()
    return mlflow.create_experiment(f"deploy-{uuid.uuid4().hex[:8]}", location)


def register_fraud_model(
    settings: Settings,
    experiment_id: str,
    alias: str | None,
    seed: int = 0,
    threshold: float = 0.5,
    n_features: int = len(MODEL_FEATURES),
    features_tag: list[str] | None = None,
) -> str:
    """Fit a tiny XGBoost classifier on random rows and register it as the next `fraud-xgboost` version.

    `n_features` other than the model's feature count makes a model that loads but fails at predict time;
    `features_tag` other than MODEL_FEATURES makes one the loader rejects.
    """
    import mlflow
    import mlflow.xgboost
    import xgboost

    from pipelines.platform.registry import register_version

    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(400, n_features)).astype(np.float32)
    labels = (rows[:, 0] + rng.normal(scale=0.5, size=400) > 1.0).astype(int)
    model = xgboost.XGBClassifier(n_estimators=8, max_depth=3, random_state=seed).fit(rows, labels)
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.xgboost.log_model(model, name="model", model_format="ubj", pip_requirements=["xgboost"])
    tags = {"features": json.dumps(features_tag or MODEL_FEATURES), "threshold": str(threshold), "strategy": "test"}
    return register_version(info.model_uri, MODEL_NAME, alias, tags=tags)


def move_alias(alias: str, version: str) -> None:
    """Point an alias the way the gate and training do (audited): services serve nothing else."""
    from pipelines.platform.registry import set_alias

    set_alias(MODEL_NAME, alias, version, "promote" if alias == "champion" else "register", "test")


def wait_for(condition: Any, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False
