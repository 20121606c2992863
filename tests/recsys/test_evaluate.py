"""The offline evaluation table on small simulated data: every row, sane metrics, the trade-offs visible."""

from __future__ import annotations

import pytest

from pipelines.recsys.evaluate import EvaluateConfig, evaluate_pipeline, ranker_trainer
from pipelines.recsys.simulate import config_for_size, simulate_interactions

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def result():
    interactions, items = simulate_interactions(config_for_size(40_000, seed=4))
    return evaluate_pipeline(interactions, items, EvaluateConfig(k=10, candidates=100), fit_ranker=ranker_trainer(4))


def test_every_model_has_a_row_with_metrics_in_range(result):
    names = [row["model"] for row in result["rows"]]
    assert names == [
        "als alone",
        "item2item alone",
        "popularity baseline",
        "merged candidates (merge order)",
        "ranker",
        "full pipeline (ranker + re-ranking)",
    ]
    for row in result["rows"]:
        for key in ("precision", "recall", "ndcg", "map", "coverage", "diversity"):
            assert 0.0 <= row[key] <= 1.0, (row["model"], key)
    assert {row["generator"] for row in result["candidate_recall"]} == {"als", "item2item", "popular", "merged"}


def test_the_ranker_beats_popularity_and_re_ranking_buys_diversity(result):
    rows = {row["model"]: row for row in result["rows"]}
    assert rows["ranker"]["ndcg"] > rows["popularity baseline"]["ndcg"]
    assert rows["full pipeline (ranker + re-ranking)"]["diversity"] >= rows["ranker"]["diversity"]
    merged = next(r for r in result["candidate_recall"] if r["generator"] == "merged")
    assert merged["recall"] >= max(r["recall"] for r in result["candidate_recall"] if r["generator"] != "merged")


def test_each_re_ranking_switch_is_measured_against_the_ranker(result):
    effects = {row["config"]: row for row in result["rerank_effects"]}
    rows = {row["model"]: row for row in result["rows"]}
    assert {"none (seen items removed)", "MMR λ 0.8", "category cap 3", "freshness ×1.2 (7 days)"} <= set(effects)
    # Without a diversity switch the lists are the ranker's own (its candidates never hold seen items).
    assert effects["none (seen items removed)"]["ndcg@10"] == pytest.approx(rows["ranker"]["ndcg"])
    default = next(row for name, row in effects.items() if name.startswith("default"))
    assert default["ndcg@10"] == pytest.approx(rows["full pipeline (ranker + re-ranking)"]["ndcg"])
    assert effects["MMR λ 0.8"]["diversity"] >= effects["MMR λ 0.95"]["diversity"]
