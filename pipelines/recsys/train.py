"""Recommendation training: candidates + XGBoost ranker on the interactions, logged to MLflow, registered as
`recsys-ranker@champion` (or `@challenger`, for the promotion gate to decide; the registration is audited).

The registered model is an MLflow pyfunc whose artifact is the folder `RecsysRanker.save` writes (candidate
model with its faiss index, XGBoost ranker, item table), so a service loads one alias and gets both stages.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd

from pipelines.platform.registry import ALIASES, CHAMPION, connect_mlflow, register_version
from pipelines.settings import Settings

MODEL_NAME = "recsys-ranker"
EXPERIMENT = "recsys"


class RecommenderModel(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    """The pyfunc wrapper: input rows with `user_id` and `k`, output one row per recommended item."""

    def load_context(self, context: Any) -> None:
        from pipelines.recsys.rank import RecsysRanker

        self.recommender = RecsysRanker.load(context.artifacts["recommender"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        # `k` travels as a column: pyfunc passes `params` only to models logged with a params signature.
        k = int(model_input["k"].iloc[0]) if "k" in model_input and len(model_input) else 10
        found = self.recommender.recommend(model_input["user_id"].astype(str).tolist(), k)
        rows = [
            {"user_id": user, "rank": rank, "item_id": item, "score": score, "generator": generator}
            for user, items in found.items()
            for rank, (item, score, generator) in enumerate(items, start=1)
        ]
        return pd.DataFrame(rows, columns=["user_id", "rank", "item_id", "score", "generator"])


@dataclass
class RecsysTrainReport:
    interactions: int
    users: int
    items: int
    model_version: str
    seconds: dict[str, float] = field(default_factory=dict)
    training_rows: int = 0
    alias: str = CHAMPION


def train_recsys(
    settings: Settings, interactions: pd.DataFrame, items: pd.DataFrame | None, alias: str = CHAMPION
) -> RecsysTrainReport:
    import mlflow

    from pipelines.recsys.rank import RankerParams, train_recommender

    if alias not in ALIASES:
        raise ValueError(f"alias must be one of {', '.join(ALIASES)}, not '{alias}'.")

    connect_mlflow(settings)
    mlflow.set_experiment(EXPERIMENT)
    started = time.perf_counter()
    recommender, data = train_recommender(interactions, items, params=RankerParams(seed=settings.seed))
    with mlflow.start_run(run_name="recsys-train") as run, tempfile.TemporaryDirectory() as tmp:
        folder = recommender.save(Path(tmp) / "recommender")
        mlflow.log_params(
            {
                "interactions": len(interactions),
                **recommender.params.to_dict(),
                "n_candidates": recommender.n_candidates,
            }
        )
        mlflow.log_metrics({key: float(value) for key, value in recommender.timings.items()})
        mlflow.log_dict({"features": list(recommender.feature_names)}, "features.json")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=RecommenderModel(),
            artifacts={"recommender": str(folder)},
            input_example=pd.DataFrame({"user_id": [str(interactions["user_id"].iloc[0])], "k": [10]}),
            pip_requirements=pinned_requirements(),
        )
        tags = {
            "training_run_id": run.info.run_id,
            # The gate warns when its holdout starts before the newest interaction the model has seen.
            "train_data_end": pd.to_datetime(interactions["timestamp"], utc=True).max().isoformat(),
        }
        version = register_version(
            info.model_uri, MODEL_NAME, alias, tags=tags, reason=f"trained on {len(interactions):,} interactions"
        )
    return RecsysTrainReport(
        interactions=len(interactions),
        users=int(interactions["user_id"].nunique()),
        items=int(interactions["item_id"].nunique()),
        model_version=version,
        seconds={"total": time.perf_counter() - started, **recommender.timings},
        training_rows=len(data.frame),
        alias=alias,
    )


def pinned_requirements() -> list[str]:
    """What the pyfunc needs, pinned to the installed versions: MLflow would otherwise spend ~30 s inferring them."""
    from importlib.metadata import version

    names = ("mlflow", "xgboost", "scikit-learn", "faiss-cpu", "implicit", "numpy", "scipy", "pandas", "pyarrow")
    return [f"{name}=={version(name)}" for name in names]


def load_champion_recommender(settings: Settings) -> Any:
    """The registered pyfunc behind `recsys-ranker@champion`."""
    connect_mlflow(settings)
    return mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")
