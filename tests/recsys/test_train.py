"""Recommendation training registers a version in the real MLflow registry that recommends after loading: as the
services load it (files read, no code run) and as an MLflow pyfunc (logged as code, no pickle stored)."""

from __future__ import annotations

import pytest

from pipelines.recsys.model import MODEL_NAME, load_recommender
from pipelines.recsys.simulate import config_for_size, simulate_interactions
from pipelines.recsys.train import train_recsys

pytestmark = pytest.mark.integration


def test_the_champion_recommends_for_known_and_unknown_users(settings):
    import pandas as pd
    from mlflow import MlflowClient

    interactions, items = simulate_interactions(config_for_size(30_000, seed=6))
    report = train_recsys(settings, interactions, items)
    assert str(MlflowClient().get_model_version_by_alias(MODEL_NAME, "champion").version) == report.model_version
    import mlflow.pyfunc

    from pipelines.platform.registry import download_version

    assert not list(download_version(MODEL_NAME, report.model_version).rglob("*.pkl"))  # nothing pickled
    recommender, tags = load_recommender(report.model_version)
    assert "train_data_end" in tags
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    known = str(interactions["user_id"].iloc[-1])
    out = model.predict(pd.DataFrame({"user_id": [known, "nobody"], "k": [5, 5]}))
    assert set(out["user_id"]) == {known, "nobody"}
    assert (out.groupby("user_id").size() == 5).all()
    assert not out.duplicated(["user_id", "item_id"]).any()
    seen = set(interactions.loc[interactions["user_id"] == known, "item_id"])
    assert not seen & set(out.loc[out["user_id"] == known, "item_id"])
    # The files the services read give the pyfunc's lists.
    direct = [item for item, _, _ in recommender.recommend([known], 5)[known]]
    assert direct == out[out["user_id"] == known].sort_values("rank")["item_id"].tolist()


@pytest.mark.unit
def test_versions_pickled_before_models_from_code_still_find_their_class() -> None:
    """Older versions stored `python_model.pkl`, a pickle naming `pipelines.recsys.train.RecommenderModel`."""
    import pickle

    from pipelines.recsys.pyfunc import RecommenderModel

    old = b"\x80\x02cpipelines.recsys.train\nRecommenderModel\n)\x81."  # GLOBAL class, empty args, NEWOBJ, STOP
    assert isinstance(pickle.loads(old), RecommenderModel)
