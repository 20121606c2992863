"""Learning to rank: point-in-time training data, one feature function for training and serving, a ranker above
popularity, persistence, cold start."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.platform.ranking import evaluate_rankings
from pipelines.recsys.candidates import CandidateConfig
from pipelines.recsys.rank import (
    FEATURE_NAMES,
    FeatureSnapshot,
    RankerParams,
    RecsysRanker,
    TrainingSet,
    feature_snapshot,
    grade,
    label_cut,
    rank_within_users,
    ranking_features,
    train_recommender,
    training_set,
)
from pipelines.recsys.simulate import config_for_size, simulate_interactions
from pipelines.recsys.splits import split_interactions, test_relevance

pytestmark = pytest.mark.unit

CONFIG = CandidateConfig(seed=3)
PARAMS = RankerParams(n_estimators=80, seed=1)
N_CANDIDATES = 100


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    interactions, items = simulate_interactions(config_for_size(40_000, seed=5))
    train, test = split_interactions(interactions, "temporal", 0.2, seed=0)
    return train, test, items


@pytest.fixture(scope="module")
def fitted(data: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> tuple[RecsysRanker, TrainingSet]:
    train, _, items = data
    return train_recommender(train, items, n_candidates=N_CANDIDATES, config=CONFIG, params=PARAMS)


@pytest.fixture(scope="module")
def snapshot(data: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> FeatureSnapshot:
    """The feature state at the end of training: what serving reads for the test period."""
    train, _, items = data
    return feature_snapshot(train, items)


def _after_cut(train: pd.DataFrame, cut: pd.Timestamp) -> np.ndarray:
    return (pd.to_datetime(train["timestamp"], utc=True) > cut).to_numpy()


def test_features_and_candidates_use_nothing_after_the_cut(
    data: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], fitted: tuple[RecsysRanker, TrainingSet]
) -> None:
    train, _, items = data
    _, original = fitted
    later = _after_cut(train, original.cut)
    assert later.any() and (~later).any()
    # Rewrite every row after the cut (other users, other items, other weights) but keep the time span:
    # candidates and features must not move, only the labels may.
    rng = np.random.default_rng(0)
    rewritten = train.copy()
    rewritten.loc[later, "item_id"] = rng.choice(items["item_id"].to_numpy(), later.sum())
    rewritten.loc[later, "weight"] = 10.0
    rewritten.loc[later, "user_id"] = rng.permutation(rewritten.loc[later, "user_id"].to_numpy())
    # The ALS settings are chosen on the label rows (`tune_als`), as any hyperparameter is on held-out rows; with
    # the same settings, nothing after the cut may reach candidates or features.
    again = training_set(rewritten, items, n_candidates=N_CANDIDATES, config=original.candidates.config, tune=False)
    assert again.cut == original.cut
    # the window's users differ now, so compare the users present in both
    shared = sorted(set(original.frame["user_id"]) & set(again.frame["user_id"]))
    assert len(shared) > 50
    left = original.frame.set_index("user_id").loc[shared, ["item_id", "generator", *FEATURE_NAMES]]
    right = again.frame.set_index("user_id").loc[shared, ["item_id", "generator", *FEATURE_NAMES]]
    pd.testing.assert_frame_equal(left, right)
    # nor did anything after the cut reach the feature snapshot or the candidate model
    assert original.snapshot.now == pd.Timestamp(original.cut).value / 1e9
    assert original.snapshot.users["user_last_event_epoch"].max() <= original.snapshot.now
    assert original.snapshot.items["item_last_event_epoch"].max() <= original.snapshot.now
    before = train[~later]
    assert original.candidates.seen.sum() == pytest.approx(before["weight"].sum())


def test_labels_come_only_from_the_label_window(
    data: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame], fitted: tuple[RecsysRanker, TrainingSet]
) -> None:
    train, _, _ = data
    _, original = fitted
    later = _after_cut(train, original.cut)
    window = train[later].groupby(["user_id", "item_id"])["weight"].sum()
    frame = original.frame
    keys = pd.MultiIndex.from_arrays([frame["user_id"], frame["item_id"]])
    expected = window.reindex(keys).fillna(0.0).to_numpy()
    np.testing.assert_allclose(frame["window_weight"].to_numpy(), expected)
    np.testing.assert_array_equal(frame["label"].to_numpy(), grade(expected))
    assert (frame["label"] > 0).sum() > 100
    # candidates exclude what a user saw before the cut, so no label can echo the past
    past = set(zip(train.loc[~later, "user_id"], train.loc[~later, "item_id"], strict=True))
    pairs = set(zip(frame["user_id"], frame["item_id"], strict=True))
    assert not pairs & past
    # users in the training set are exactly those active in the window
    assert set(frame["user_id"]) <= set(train.loc[later, "user_id"])
    assert grade(np.array([0.0, 1.0, 3.0, 4.0, 10.0, 25.0])).tolist() == [0, 1, 2, 2, 3, 3]


def test_ranker_beats_popularity_on_a_later_test_period(
    data: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
    fitted: tuple[RecsysRanker, TrainingSet],
    snapshot: FeatureSnapshot,
) -> None:
    train, test, items = data
    recommender, _ = fitted
    relevant = test_relevance(train, test)
    users = sorted(user for user, found in relevant.items() if found)
    ranked = recommender.recommend(users, 10, snapshot)
    ranker = evaluate_rankings({u: [i for i, _, _ in r] for u, r in ranked.items()}, relevant, 10, len(items))
    popular = recommender.candidates.candidate_lists(users, 10, generator="popular")
    baseline = evaluate_rankings(popular, relevant, 10, len(items))
    assert ranker.ndcg > baseline.ndcg * 1.1
    assert ranker.recall > baseline.recall
    # and above the best single generator, in its own order
    als = recommender.candidates.candidate_lists(users, 10, generator="als")
    assert ranker.ndcg > evaluate_rankings(als, relevant, 10, len(items)).ndcg


def test_training_and_serving_build_the_same_rows(fitted: tuple[RecsysRanker, TrainingSet]) -> None:
    _, original = fitted
    users = sorted(set(original.frame["user_id"]))[:40]
    # the pairs of the training frame, handed back as serving would receive them from the candidate stage
    picked = original.frame[original.frame["user_id"].isin(users)]
    candidates = {
        str(user): list(zip(group["item_id"], group["merge_score"], group["generator"], strict=True))
        for user, group in picked.groupby("user_id", sort=True)
    }
    served = ranking_features(original.candidates, candidates, original.snapshot, original.items)
    trained = original.frame[original.frame["user_id"].isin(users)].reset_index(drop=True)
    pd.testing.assert_frame_equal(served, trained[served.columns.tolist()])
    # the ranker scores exactly these rows in recommend
    serving = RecsysRanker(original.candidates, fitted[0].ranker, original.items, n_candidates=N_CANDIDATES)
    scored = serving.score(candidates, original.snapshot)
    pd.testing.assert_frame_equal(scored[served.columns.tolist()], served)
    # recommend = the same batch's candidates → these features → ranker score → top-k
    ranked = serving.recommend(users, 5, original.snapshot)
    scored = serving.score(original.candidates.generate_candidates(users, N_CANDIDATES), original.snapshot)
    best = scored.sort_values(["user_id", "rank_score"], ascending=[True, False], kind="stable")
    top = best.groupby("user_id").head(5).groupby("user_id")["item_id"].agg(list)
    assert {user: [item for item, _, _ in found] for user, found in ranked.items()} == top.to_dict()


def test_save_and_load_give_identical_recommendations(
    tmp_path: Path,
    data: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
    fitted: tuple[RecsysRanker, TrainingSet],
    snapshot: FeatureSnapshot,
) -> None:
    train, _, items = data
    recommender, _ = fitted
    users = sorted(train["user_id"].unique())[:60] + ["nobody-1"]
    loaded = RecsysRanker.load(recommender.save(tmp_path / "ranker"))
    assert loaded.feature_names == recommender.feature_names
    assert loaded.recommend(users, 10, snapshot) == recommender.recommend(users, 10, snapshot)


def test_unknown_users_get_popular_items_not_errors(
    data: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
    fitted: tuple[RecsysRanker, TrainingSet],
    snapshot: FeatureSnapshot,
) -> None:
    train, _, items = data
    recommender, _ = fitted
    known = str(train["user_id"].iloc[0])
    for state in (snapshot, None):
        found = recommender.recommend(["nobody-1", "nobody-2", known], 10, state)
        assert list(found) == ["nobody-1", "nobody-2", known]
        for user in ("nobody-1", "nobody-2"):
            assert len(found[user]) == 10
            assert {generator for _, _, generator in found[user]} == {"popular"}
            assert len({item for item, _, _ in found[user]}) == 10
        assert len(found[known]) == 10
    with pytest.raises(ValueError, match="k must be a positive integer"):
        recommender.recommend(["nobody-1"], 0)


def test_a_random_cut_holds_out_a_share_of_every_items_rows(
    data: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
) -> None:
    train, _, _ = data
    past, window, moment = label_cut(train, 0.2, "random", seed=3)
    assert moment == pd.to_datetime(train["timestamp"], utc=True).max()
    assert past.index.intersection(window.index).empty
    assert len(past) + len(window) == len(train)
    # every item keeps a past row, and about a fifth of each busy item's rows are labels
    assert set(past["item_id"]) == set(train["item_id"])
    counts = train["item_id"].value_counts()
    busy = counts[counts >= 20].index
    share = window["item_id"].value_counts().reindex(busy, fill_value=0) / counts[busy]
    assert share.between(0.15, 0.25).all()
    # label rows come from the whole period, not its end
    times = pd.to_datetime(window["timestamp"], utc=True)
    start, end = pd.to_datetime(train["timestamp"], utc=True).agg(["min", "max"])
    assert (times < start + (end - start) / 2).mean() > 0.3
    again, _, _ = label_cut(train, 0.2, "random", seed=3)
    pd.testing.assert_frame_equal(again, past)
    with pytest.raises(ValueError, match="unknown label cut"):
        label_cut(train, 0.2, "sideways", seed=3)  # type: ignore[arg-type]


def test_a_random_cut_builds_features_and_candidates_without_the_label_rows(
    data: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame],
) -> None:
    train, _, items = data
    original = training_set(train, items, n_candidates=N_CANDIDATES, config=CONFIG, seed=3, cut="random")
    tuned = original.candidates.config  # chosen on the label rows, as in the temporal test above
    _, window, _ = label_cut(train, 0.2, "random", seed=3)
    assert original.cut == pd.to_datetime(train["timestamp"], utc=True).max()
    # the same rows (the draw depends on item ids and row order only) with other users and weights
    rng = np.random.default_rng(1)
    rewritten = train.copy()
    rewritten.loc[window.index, "user_id"] = rng.permutation(window["user_id"].to_numpy())
    rewritten.loc[window.index, "weight"] = 10.0
    again = training_set(rewritten, items, n_candidates=N_CANDIDATES, config=tuned, seed=3, cut="random", tune=False)
    shared = sorted(set(original.frame["user_id"]) & set(again.frame["user_id"]))
    assert len(shared) > 50
    columns = ["item_id", "generator", *FEATURE_NAMES]
    pd.testing.assert_frame_equal(
        original.frame.set_index("user_id").loc[shared, columns], again.frame.set_index("user_id").loc[shared, columns]
    )
    assert not original.frame["label"].equals(again.frame["label"])
    # labels are what each user did in the label rows
    summed = window.groupby(["user_id", "item_id"])["weight"].sum()
    keys = pd.MultiIndex.from_arrays([original.frame["user_id"], original.frame["item_id"]])
    np.testing.assert_allclose(original.frame["window_weight"], summed.reindex(keys).fillna(0.0).to_numpy())
    assert set(original.frame["user_id"]) <= set(window["user_id"])


def test_within_user_ranks_put_the_best_first_and_keep_missing_values() -> None:
    users = np.array(["a", "a", "a", "b", "b", "c"])
    values = np.array([0.2, 0.9, 0.5, np.nan, 3.0, 1.0])
    ranks = rank_within_users(users, values)
    np.testing.assert_array_equal(ranks[:3], [2.0, 0.0, 1.0])
    assert np.isnan(ranks[3]) and ranks[4] == 0.0 and ranks[5] == 0.0
    assert len(rank_within_users(np.array([], dtype=object), np.array([]))) == 0
