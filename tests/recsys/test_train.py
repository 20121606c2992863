"""Recommendation training registers a pyfunc in the real MLflow registry that recommends after loading."""

from __future__ import annotations

import pytest

from pipelines.recsys.simulate import config_for_size, simulate_interactions
from pipelines.recsys.train import MODEL_NAME, load_champion_recommender, train_recsys

pytestmark = pytest.mark.integration


def test_the_champion_recommends_for_known_and_unknown_users(settings):
    import pandas as pd
    from mlflow import MlflowClient

    interactions, items = simulate_interactions(config_for_size(30_000, seed=6))
    report = train_recsys(settings, interactions, items)
    assert str(MlflowClient().get_model_version_by_alias(MODEL_NAME, "champion").version) == report.model_version
    model = load_champion_recommender(settings)
    known = str(interactions["user_id"].iloc[-1])
    out = model.predict(pd.DataFrame({"user_id": [known, "nobody"], "k": [5, 5]}))
    assert set(out["user_id"]) == {known, "nobody"}
    assert (out.groupby("user_id").size() == 5).all()
    assert not out.duplicated(["user_id", "item_id"]).any()
    seen = set(interactions.loc[interactions["user_id"] == known, "item_id"])
    assert not seen & set(out.loc[out["user_id"] == known, "item_id"])
