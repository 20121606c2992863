"""Recommendation training: candidates + XGBoost ranker on the interactions, logged to MLflow, registered as
`recsys-ranker@champion` (or `@challenger`, for the promotion gate to decide; the registration is audited).

The registered model is an MLflow pyfunc logged as code (pipelines/recsys/pyfunc_model_code.py) whose artifact is
the folder `RecsysRanker.save` writes (candidate model with its faiss index, XGBoost ranker, item table), so a
service loads one alias and gets both stages, and nothing in the registry is a pickle (pipelines/recsys/model.py).
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from pipelines.platform.registry import ALIASES, CHAMPION, connect_mlflow, pinned_requirements, register_version
from pipelines.recsys.model import MODEL_NAME, RECOMMENDER_ARTIFACT
from pipelines.settings import Settings

if TYPE_CHECKING:
    from pipelines.recsys.rank import RecsysRanker, TrainingSet

EXPERIMENT = "recsys"


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
    import mlflow.pyfunc

    from pipelines.recsys.rank import RankerParams, train_recommender

    if alias not in ALIASES:
        raise ValueError(f"alias must be one of {', '.join(ALIASES)}, not '{alias}'.")

    connect_mlflow(settings)
    mlflow.set_experiment(EXPERIMENT)
    started = time.perf_counter()
    recommender, data = train_recommender(interactions, items, params=RankerParams(seed=settings.seed))
    clock = time.perf_counter()
    reference = recsys_reference(recommender, data, interactions, seed=settings.seed)
    reference_seconds = time.perf_counter() - clock
    with mlflow.start_run(run_name="recsys-train") as run, tempfile.TemporaryDirectory() as tmp:
        folder = recommender.save(Path(tmp) / "recommender")
        # What the monitor compares the prediction log's windows with (pipelines/platform/drift.py).
        reference.to_parquet(Path(tmp) / "reference.parquet", index=False)
        mlflow.log_artifact(str(Path(tmp) / "reference.parquet"), "reference")
        mlflow.log_params(
            {
                "interactions": len(interactions),
                **recommender.params.to_dict(),
                "n_candidates": recommender.n_candidates,
                # the candidate settings, the ALS confidence and alpha among them as the training cut chose them
                **{f"candidates_{key}": value for key, value in recommender.candidates.config.to_dict().items()},
            }
        )
        mlflow.log_dict({"als_tuning": data.tuning}, "als_tuning.json")
        mlflow.log_metrics({key: float(value) for key, value in recommender.timings.items()})
        mlflow.log_metrics({"reference_seconds": reference_seconds, "reference_rows": float(len(reference))})
        mlflow.log_dict({"features": list(recommender.feature_names)}, "features.json")
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(Path(__file__).with_name("pyfunc_model_code.py")),
            artifacts={RECOMMENDER_ARTIFACT: str(folder)},
            input_example=pd.DataFrame({"user_id": [str(interactions["user_id"].iloc[0])], "k": [10]}),
            pip_requirements=pinned_requirements(*PYFUNC_PACKAGES),
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
        seconds={"total": time.perf_counter() - started, **recommender.timings, "reference_seconds": reference_seconds},
        training_rows=len(data.frame),
        alias=alias,
    )


REFERENCE_ROWS = 5_000


def recsys_reference(
    recommender: RecsysRanker,
    data: TrainingSet,
    interactions: pd.DataFrame,
    max_rows: int = REFERENCE_ROWS,
    seed: int = 7,
) -> pd.DataFrame:
    """The prediction log's monitored numbers for requests like the training data's: the monitor's reference.

    The requests are a seeded sample of the label window's interactions, so a busy user asks more often, as in
    traffic, and users new in the window arrive as cold starts. Each is answered as serving would have answered
    at the cut: the candidate model fitted before it, the feature rows of the cut, the trained ranker and the
    default re-ranking. Columns: `REQUEST_FEATURES` and `score` (the ranker's score of the top item), through the
    same functions the service logs with.
    """
    from pipelines.recsys.monitoring import REQUEST_FEATURES, request_features, top_score
    from pipelines.recsys.rerank import RerankConfig, rerank

    frame = data.frame
    times = pd.to_datetime(interactions["timestamp"], utc=True)
    asking = interactions.loc[(times > data.cut).to_numpy(), "user_id"].astype(str)
    asking = asking[asking.isin(set(frame["user_id"]))]  # the window users the training set has candidates for
    if asking.empty:
        return pd.DataFrame(columns=[*REQUEST_FEATURES, "score"], dtype=float)
    asking = asking.sample(min(len(asking), max_rows), random_state=seed)
    rows = frame[frame["user_id"].isin(set(asking))]
    scores = recommender.ranker.predict(rows[list(recommender.feature_names)].to_numpy(dtype=np.float32))
    users = data.snapshot.users
    known = data.candidates.catalogue.user_index
    config = RerankConfig()
    table = data.items
    categories = {str(item): str(name) for item, name in table["category"].items()} if "category" in table else {}
    answers: dict[str, dict[str, float]] = {}
    scored = rows.assign(rank_score=scores)
    for user, group in scored.groupby("user_id", sort=False):
        candidates = list(zip(group["item_id"], group["merge_score"], group["generator"], strict=True))
        ranked = sorted(
            zip(group["item_id"], group["rank_score"].astype(float), group["generator"], strict=True),
            key=lambda c: -c[1],
        )
        row = users.loc[user].to_dict() if user in users.index else None
        recent = row.get("user_recent_items") if row else None
        seen = set(recent) if isinstance(recent, list | np.ndarray) else set()
        # The first item is all the record's score needs; MMR picks it the same whatever the list's length.
        final = rerank(ranked, 1, config, seen=seen, item_category=categories)
        answers[str(user)] = {
            **request_features(row, str(user) in known, candidates),
            "score": top_score(ranked, final),
        }
    return pd.DataFrame([answers[user] for user in asking], columns=[*REQUEST_FEATURES, "score"])


# What the pyfunc needs, pinned to the installed versions (MLflow would otherwise spend ~30 s inferring them).
PYFUNC_PACKAGES = ("mlflow", "xgboost", "scikit-learn", "faiss-cpu", "implicit", "numpy", "scipy", "pandas", "pyarrow")


def __getattr__(name: str) -> Any:
    # Versions registered before models-from-code pickled this class path; unpickling them looks it up here.
    if name == "RecommenderModel":
        from pipelines.recsys.pyfunc import RecommenderModel

        return RecommenderModel
    raise AttributeError(name)
