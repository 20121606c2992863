"""The recommender as an MLflow pyfunc: input rows with `user_id` and `k`, output one row per recommended item.

New versions are logged as code (`pyfunc_model_code.py` names this class), so the registry stores no pickle;
versions registered before that pickled `pipelines.recsys.train.RecommenderModel`, which still imports it.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import pandas as pd


class RecommenderModel(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined]
    def load_context(self, context: Any) -> None:
        from pipelines.recsys.model import RECOMMENDER_ARTIFACT
        from pipelines.recsys.rank import RecsysRanker

        self.recommender = RecsysRanker.load(context.artifacts[RECOMMENDER_ARTIFACT])

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
