"""Candidate retrieval: collaborative recall above popularity, a faithful ANN index, cold start, merging, saving."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.platform.ranking import recall_at
from pipelines.recsys.candidates import (
    ALPHA_STEPS,
    GENERATORS,
    CandidateConfig,
    CandidateModel,
    ann_recall,
    candidate_recall,
    fuse,
    tune_als,
)
from pipelines.recsys.simulate import config_for_size, simulate_interactions
from pipelines.recsys.splits import split_interactions, test_relevance

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    interactions, items = simulate_interactions(config_for_size(40_000, seed=5))
    train, test = split_interactions(interactions, "temporal", 0.2, seed=0)
    return train, test, items


@pytest.fixture(scope="module")
def model(data: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> CandidateModel:
    train, _, items = data
    return CandidateModel.fit(train, items, CandidateConfig(seed=3))


@pytest.fixture(scope="module")
def relevant(data: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> dict[str, set[str]]:
    train, test, _ = data
    return test_relevance(train, test)


def test_collaborative_generator_beats_popularity(model: CandidateModel, relevant: dict[str, set[str]]) -> None:
    users = list(relevant)
    als = recall_at(model.candidate_lists(users, 50, generator="als"), relevant, 50).macro
    popular = recall_at(model.candidate_lists(users, 50, generator="popular"), relevant, 50).macro
    assert als > popular


def test_merged_candidates_recall_more_than_any_generator_alone(
    model: CandidateModel, relevant: dict[str, set[str]]
) -> None:
    table = candidate_recall(model, relevant, ns=(50,))
    assert list(table["generator"]) == [*GENERATORS, "merged"]
    recall = table.set_index("generator")["recall"]
    assert recall["merged"] > recall[list(GENERATORS)].max()
    assert table["users"].nunique() == 1 and table["users"].iloc[0] == len(relevant)


def test_ann_index_finds_most_of_the_exact_top_items(model: CandidateModel, relevant: dict[str, set[str]]) -> None:
    users = [user for user in relevant if user in model.catalogue.user_index][:300]
    assert len(users) > 100
    assert ann_recall(model, users, 100) >= 0.9


def test_unknown_users_get_popular_candidates(model: CandidateModel) -> None:
    found = model.generate_candidates(["nobody", "U999999999"], 20)
    for user in ("nobody", "U999999999"):
        assert len(found[user]) == 20
        assert {name for _, _, name in found[user]} == {"popular"}
    top = model.candidate_lists(["nobody"], 20, generator="popular")["nobody"]
    assert [item for item, _, _ in found["nobody"]] == top


def test_a_session_gives_an_unknown_user_similar_items(model: CandidateModel) -> None:
    session = list(model.catalogue.items[model.indexed_items[:3]])
    found = model.generate_candidates(["newcomer"], 30, recent_items={"newcomer": session})["newcomer"]
    names = {name for _, _, name in found}
    assert "item2item" in names
    assert not set(session) & {item for item, _, _ in found}


def test_merged_candidates_are_distinct_and_name_their_generator(model: CandidateModel) -> None:
    users = list(model.catalogue.users[:50])
    found = model.generate_candidates(users, 100)
    for candidates in found.values():
        items = [item for item, _, _ in candidates]
        assert len(items) == len(set(items)) == 100
        assert all(name in GENERATORS for _, _, name in candidates)
        assert all(np.isfinite(score) for _, score, _ in candidates)
    names = {name for candidates in found.values() for _, _, name in candidates}
    assert names == set(GENERATORS)


def test_seen_items_are_removed_only_on_request(
    model: CandidateModel, data: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]
) -> None:
    train = data[0]
    heavy = train["user_id"].value_counts().index[0]
    seen = set(train.loc[train["user_id"] == heavy, "item_id"])
    kept = {item for item, _, _ in model.generate_candidates([heavy], 100, exclude_seen=False)[heavy]}
    removed = {item for item, _, _ in model.generate_candidates([heavy], 100, exclude_seen=True)[heavy]}
    assert kept & seen
    assert not removed & seen


def test_fewer_items_than_asked_for(data: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> None:
    train = data[0].head(40)
    small = CandidateModel.fit(train, None, CandidateConfig(factors=4, hnsw_m=4))
    available = train["item_id"].nunique()
    user = str(train["user_id"].iloc[0])
    for who in (user, "nobody"):
        found = small.generate_candidates([who], available + 50, exclude_seen=False)[who]
        items = [item for item, _, _ in found]
        assert len(items) == len(set(items)) == available
    unseen = small.generate_candidates([user], 500)[user]
    assert len(unseen) == available - train.loc[train["user_id"] == user, "item_id"].nunique()


def test_items_not_yet_created_are_never_candidates(
    model: CandidateModel, data: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]
) -> None:
    train, _, items = data
    future = set(items.loc[items["created_at"] > train["timestamp"].max(), "item_id"])
    assert future
    found = model.generate_candidates(["nobody", *model.catalogue.users[:20]], 200)
    assert not future & {item for candidates in found.values() for item, _, _ in candidates}


def test_save_and_load_give_the_same_candidates(model: CandidateModel, tmp_path: Path) -> None:
    users = [*model.catalogue.users[:30].tolist(), "nobody"]
    folder = model.save(tmp_path / "candidates")
    assert sorted(path.name for path in folder.iterdir()) == ["config.json", "items.faiss", "model.npz"]
    loaded = CandidateModel.load(folder)
    assert loaded.config == model.config
    assert loaded.generate_candidates(users, 100) == model.generate_candidates(users, 100)


def test_load_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="is missing; point to a folder"):
        CandidateModel.load(tmp_path)


def test_same_seed_gives_the_same_candidates(
    model: CandidateModel, data: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]
) -> None:
    train, _, items = data
    again = CandidateModel.fit(train, items, CandidateConfig(seed=3))
    users = model.catalogue.users[:40].tolist()
    assert again.generate_candidates(users, 100) == model.generate_candidates(users, 100)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="'timestamp'"):
        CandidateModel.fit(pd.DataFrame({"user_id": ["U1"], "item_id": ["I1"]}))
    with pytest.raises(ValueError, match="merge_weights"):
        CandidateConfig(merge_weights=(("als", 1.0), ("bestsellers", 0.5)))
    with pytest.raises(ValueError, match="every merge weight is zero"):
        CandidateConfig(merge_weights=(("als", 0.0),))
    with pytest.raises(ValueError, match="n must be"):
        CandidateModel.fit(
            pd.DataFrame({"user_id": ["U1"], "item_id": ["I1"], "timestamp": [pd.Timestamp("2026-01-01", tz="UTC")]})
        ).generate_candidates(["U1"], 0)


def test_fusion_rewards_agreement_and_respects_weights() -> None:
    lists = {"als": np.array([1, 2, 3]), "item2item": np.array([4, 2, 5]), "popular": np.array([6, 7])}
    weights = {"als": 1.0, "item2item": 1.0, "popular": 0.3}
    codes, scores, names = fuse(lists, weights, 10, offset=20.0)
    # item 2 is second in two lists and beats every item that only one list proposes
    assert codes[0] == 2
    assert scores[0] == pytest.approx(2 / 21)
    assert set(codes.tolist()) == {1, 2, 3, 4, 5, 6, 7}
    assert np.all(np.diff(scores) <= 0)
    generator = dict(zip(codes.tolist(), [GENERATORS[i] for i in names.tolist()], strict=True))
    assert generator[1] == "als" and generator[4] == "item2item" and generator[6] == "popular"
    # a tie between the first items of ALS and item-to-item goes to the generator listed first
    assert codes.tolist()[1:3] == [1, 4]
    # the popular items, weighted 0.3, come after every item of a full-weight list
    assert codes.tolist()[-2:] == [6, 7]
    # only the n best are kept, and a zero weight leaves a list out
    assert fuse(lists, weights, 2, 20.0)[0].tolist() == [2, 1]
    assert set(fuse(lists, {**weights, "popular": 0.0}, 10, 20.0)[0].tolist()) == {1, 2, 3, 4, 5}
    assert len(fuse({"als": np.array([], dtype=np.int64)}, weights, 5, 20.0)[0]) == 0


@pytest.mark.parametrize("similarity", ["ease", "rp3beta"])
def test_item_similarity_links_items_that_share_users(similarity: str) -> None:
    rows = [("u1", "A"), ("u1", "B"), ("u2", "A"), ("u2", "B"), ("u3", "A"), ("u3", "C"), ("u4", "D"), ("u4", "E")]
    frame = pd.DataFrame(rows, columns=["user_id", "item_id"]).assign(
        timestamp=pd.Timestamp("2026-01-01", tz="UTC"), weight=1.0
    )
    config = CandidateConfig(factors=2, hnsw_m=4, neighbours=2, item_similarity=similarity, ease_lambda=0.5)
    small = CandidateModel.fit(frame, None, config)
    index = small.catalogue.item_index
    similar = small.similar.toarray()
    assert np.all(np.diag(similar) == 0)
    assert np.all((similar > 0).sum(axis=1) <= 2)
    assert similar[index["A"], index["B"]] > similar[index["A"], index["C"]] > 0
    assert similar[index["A"], index["D"]] == 0
    # a user's item-to-item scores are the summed rows of their items, their own items left out
    user = small.catalogue.user_codes(["u3"])
    (codes, scores) = small.item2item(user, 5, exclude_seen=True)[0]
    assert small.catalogue.items[codes].tolist() == ["B"]
    assert scores[0] == pytest.approx(similar[index["A"], index["B"]] + similar[index["C"], index["B"]])


def test_item2item_follows_all_of_a_users_items(model: CandidateModel) -> None:
    users = model.catalogue.user_codes(model.catalogue.users[:30].tolist())
    expected = model.cooccurrence_scores(users).toarray()
    for position, (codes, scores) in enumerate(model.item2item(users, 40, exclude_seen=True)):
        assert len(codes) == 40
        seen = set(model.seen.indices[model.seen.indptr[users[position]] : model.seen.indptr[users[position] + 1]])
        assert not seen & set(codes.tolist())
        np.testing.assert_allclose(scores, expected[position, codes], rtol=1e-6)
        assert np.all(np.diff(scores) <= 0)
        # nothing left out scores higher than the last item kept
        unseen = np.setdiff1d(np.arange(expected.shape[1]), list(seen))
        assert np.sort(expected[position, unseen])[-40] == pytest.approx(scores[-1])


def test_ease_weights_are_the_closed_form_solution() -> None:
    """Each item's row of B rebuilds it from the other items: B = I − P / diag(P), P = (XᵀX + λI)⁻¹."""
    rng = np.random.default_rng(4)
    pairs = {(f"u{u}", f"i{i}") for u, i in zip(rng.integers(0, 60, 700), rng.zipf(1.6, 700) % 25, strict=True)}
    frame = pd.DataFrame(sorted(pairs), columns=["user_id", "item_id"]).assign(
        timestamp=pd.Timestamp("2026-01-01", tz="UTC"), weight=2.0
    )
    config = CandidateConfig(factors=2, hnsw_m=4, neighbours=24, ease_lambda=5.0)
    table = CandidateModel.fit(frame, None, config).similar.toarray()
    x = (CandidateModel.fit(frame, None, config).seen.toarray() > 0).astype(np.float64)
    inverse = np.linalg.inv(x.T @ x + 5.0 * np.eye(x.shape[1]))
    expected = -inverse / np.diag(inverse)[None, :]
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(table, np.where(expected > 0, expected, 0.0), rtol=1e-3, atol=1e-5)

    # past ease_max_items only the most interacted items take part, on both sides of the table
    capped = CandidateModel.fit(frame, None, replace(config, ease_max_items=5))
    degree = (capped.seen > 0).sum(axis=0).A1
    top = set(np.argsort(-degree, kind="stable")[:5].tolist())
    rows, cols = capped.similar.nonzero()
    assert set(rows.tolist()) <= top and set(cols.tolist()) <= top and len(rows) > 0


def test_ranking_confidence_can_ignore_the_weights(data: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> None:
    """With confidence "count" a pair's weight (a rating, an event type) does not change the factors."""
    train, _, items = data
    config = CandidateConfig(seed=3, confidence="count", iterations=3)
    plain = CandidateModel.fit(train, items, config)
    reweighted = CandidateModel.fit(train.assign(weight=np.linspace(1, 5, len(train))), items, config)
    np.testing.assert_allclose(plain.user_factors, reweighted.user_factors, rtol=1e-4, atol=1e-5)
    weighted = CandidateModel.fit(
        train.assign(weight=np.linspace(1, 5, len(train))), items, replace(config, confidence="weight")
    )
    assert not np.allclose(plain.user_factors, weighted.user_factors, atol=1e-3)


def test_als_settings_are_chosen_on_held_out_rows(data: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> None:
    train, test, items = data
    config = CandidateConfig(seed=3, iterations=3)
    chosen, trials = tune_als(train, test, items, config, max_users=500)
    scores = {(row["confidence"], row["alpha"]): row["ndcg@10"] for row in trials}
    # both confidences at the configured alpha, then alpha moved while it helped: the best trial wins
    assert {("weight", config.alpha), ("count", config.alpha)} <= set(scores)
    assert scores[chosen.confidence, chosen.alpha] == max(scores.values())
    assert all(config.alpha / 2**ALPHA_STEPS <= alpha <= config.alpha * 2**ALPHA_STEPS for _, alpha in scores)
    assert replace(chosen, confidence=config.confidence, alpha=config.alpha) == config  # nothing else changes
    # with every weight 1, counts and weights are the same thing: only one is tried
    _, plain = tune_als(train.assign(weight=1.0), test, items, config, max_users=500)
    assert {row["confidence"] for row in plain} == {"weight"}
