"""What the interaction simulator promises: a reproducible, long-tailed, learnable log with cold starts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.recsys.simulate import (
    EVENT_TYPES,
    INTERACTION_COLUMNS,
    ITEM_COLUMNS,
    InteractionConfig,
    config_for_size,
    expected_interactions,
    simulate_interactions,
)

pytestmark = pytest.mark.unit

SMALL = InteractionConfig(n_users=1500, n_items=800, n_categories=20, days=20, seed=5)


@pytest.fixture(scope="module")
def small_run() -> tuple[pd.DataFrame, pd.DataFrame]:
    return simulate_interactions(SMALL)


def user_number(ids: pd.Series) -> np.ndarray:
    return ids.str.slice(1).astype("int64").to_numpy()


def test_same_seed_same_frames_and_other_seed_other_frames(small_run: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    interactions, items = simulate_interactions(SMALL)
    pd.testing.assert_frame_equal(interactions, small_run[0])
    pd.testing.assert_frame_equal(items, small_run[1])
    other, _ = simulate_interactions(InteractionConfig(**{**SMALL.__dict__, "seed": 6}))
    assert not other.equals(small_run[0])


def test_schema(small_run: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    interactions, items = small_run
    assert list(interactions.columns) == INTERACTION_COLUMNS
    assert list(items.columns) == ITEM_COLUMNS
    assert str(interactions["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert str(items["created_at"].dtype) == "datetime64[ns, UTC]"
    assert interactions["weight"].dtype == np.float64
    assert interactions["user_id"].str.fullmatch(r"U\d{6}").all()
    assert interactions["item_id"].str.fullmatch(r"I\d{6}").all()
    assert items["item_id"].is_unique and items["item_id"].iloc[0] == "I000001" and len(items) == SMALL.n_items
    assert set(interactions["item_id"]) <= set(items["item_id"])
    assert items["category"].nunique() == SMALL.n_categories
    assert (items["price"] > 0).all()

    assert interactions["timestamp"].is_monotonic_increasing
    start = pd.Timestamp("2026-01-01", tz="UTC")
    assert interactions["timestamp"].min() >= start
    assert interactions["timestamp"].max() < start + pd.Timedelta(days=SMALL.days)

    weights = dict(zip(EVENT_TYPES, SMALL.event_weights, strict=True))
    assert (interactions["weight"] == interactions["event_type"].map(weights)).all()
    shares = interactions["event_type"].value_counts(normalize=True)
    for event, share in zip(EVENT_TYPES, SMALL.event_mix, strict=True):
        assert shares[event] == pytest.approx(share, abs=0.02)


def test_size_follows_the_expected_count(small_run: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    assert len(small_run[0]) == pytest.approx(expected_interactions(SMALL), rel=0.1)


def test_config_for_size_hits_the_target() -> None:
    config = config_for_size(200_000, seed=3)
    assert expected_interactions(config) == pytest.approx(200_000, rel=0.01)
    assert config.n_items == config.n_users // 2
    by_days = config_for_size(50_000, n_users=2000)
    assert by_days.n_users == 2000
    assert expected_interactions(by_days) == pytest.approx(50_000, rel=0.1)
    with pytest.raises(ValueError, match="unknown simulation setting 'n_userz'"):
        config_for_size(1000, n_userz=5)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"n_items": 5, "n_categories": 10}, "n_items must be at least n_categories"),
        ({"new_user_share": 1.0}, "new_user_share"),
        ({"popularity_exponent": -1.0}, "popularity_exponent"),
        ({"event_mix": (0.0, 0.5, 0.5)}, "event_mix"),
        ({"start": "not a date"}, "start must be a date"),
        ({"days": 1}, "new users need at least 2 days"),
    ],
)
def test_bad_config_is_one_sentence(changes: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        InteractionConfig(**changes)


def test_long_tail(small_run: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    counts = small_run[0]["item_id"].value_counts()
    top = max(1, SMALL.n_items // 100)
    assert counts.iloc[:top].sum() / counts.sum() > 0.15  # top 1% of items hold 15+ times their even share
    assert counts.iloc[SMALL.n_items // 2 :].sum() / counts.sum() < 0.1  # the bottom half barely shows up


def test_new_items_appear_mid_period_and_are_never_seen_before(small_run: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    interactions, items = small_run
    start = pd.Timestamp("2026-01-01", tz="UTC")
    new = items["created_at"] >= start
    assert new.sum() == SMALL.n_new_items
    created = interactions["item_id"].map(items.set_index("item_id")["created_at"])
    assert (interactions["timestamp"] >= created).all()
    # Fresh items get a boost: most new items are seen, and soon after they arrive.
    seen_new = interactions[interactions["item_id"].isin(items.loc[new, "item_id"])]
    assert seen_new["item_id"].nunique() > 0.8 * new.sum()
    first_seen = seen_new.groupby("item_id")["timestamp"].min()
    delay = first_seen - items.set_index("item_id").loc[first_seen.index, "created_at"]
    assert delay.median() < pd.Timedelta(days=1)


def test_new_users_arrive_after_the_start_and_start_with_popular_items(
    small_run: tuple[pd.DataFrame, pd.DataFrame],
) -> None:
    interactions, _ = small_run
    start = pd.Timestamp("2026-01-01", tz="UTC")
    first_seen = interactions.groupby("user_id")["timestamp"].min()
    is_new = user_number(first_seen.index.to_series()) > SMALL.n_users - SMALL.n_new_users
    assert is_new.sum() > 0.6 * SMALL.n_new_users  # late arrivals may not come back before the end
    assert (first_seen[is_new] >= start + pd.Timedelta(days=1)).all()
    assert first_seen[~is_new].median() + pd.Timedelta(days=3) < first_seen[is_new].median()
    # New users are numbered in order of arrival.
    new_first = first_seen[is_new].sort_index()
    assert np.corrcoef(np.arange(len(new_first)), new_first.astype("int64"))[0, 1] > 0.7

    # Their first session leans on popular items more than the sessions of users who are settled in.
    counts = interactions["item_id"].value_counts()
    head = set(counts.index[: max(1, SMALL.n_items // 100)])
    in_head = interactions["item_id"].isin(head)
    first_session = interactions.groupby("user_id")["session_id"].transform("min") == interactions["session_id"]
    new_rows = user_number(interactions["user_id"]) > SMALL.n_users - SMALL.n_new_users
    assert in_head[new_rows & first_session].mean() > 1.5 * in_head[~new_rows].mean()


def test_sessions_stick_to_few_categories(small_run: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    interactions, items = small_run
    category = interactions["item_id"].map(items.set_index("item_id")["category"])
    sizes = interactions.groupby("session_id")["item_id"].transform("size")
    long = sizes >= 4

    def top_category_share(categories: pd.Series) -> float:
        frame = pd.DataFrame({"session": interactions.loc[long, "session_id"], "category": categories[long]})
        per_pair = frame.groupby(["session", "category"]).size()
        return float((per_pair.groupby(level=0).max() / per_pair.groupby(level=0).sum()).mean())

    shuffled = pd.Series(np.random.default_rng(0).permutation(category.to_numpy()), index=category.index)
    observed, baseline = top_category_share(category), top_category_share(shuffled)
    assert observed > 0.75
    assert observed > baseline + 0.3


def recall_at_k(interactions: pd.DataFrame, items: pd.DataFrame, k: int = 20) -> tuple[float, float]:
    """Per-user recall@k on the last 20% of time: global popularity versus a per-user category-affinity model.

    The affinity model scores item i for user u as P(category of i | u) x P(i | its category), both counted on
    the training part: a cheap stand-in for any model that uses user-item affinity.
    """
    cut = interactions["timestamp"].quantile(0.8)
    train = interactions[interactions["timestamp"] < cut]
    test = interactions[interactions["timestamp"] >= cut]
    users = pd.Index(train["user_id"].unique())
    test = test[test["user_id"].isin(users)]
    item_index = pd.Index(items["item_id"])
    category, names = pd.factorize(items["category"])

    train_user = users.get_indexer(train["user_id"])
    train_item = item_index.get_indexer(train["item_id"])
    counts = np.bincount(train_item, minlength=len(items)).astype("float64")
    popular = np.argsort(-counts, kind="stable")[:k]
    within = counts / np.maximum(np.bincount(category, weights=counts, minlength=len(names))[category], 1.0)
    taste = np.full((len(users), len(names)), 0.01)
    np.add.at(taste, (train_user, category[train_item]), 1.0)
    taste /= taste.sum(axis=1, keepdims=True)
    affinity_top = np.argpartition(-(taste[:, category] * within[None, :]), k, axis=1)[:, :k]
    recommended = np.zeros((len(users), len(items)), dtype=bool)
    np.put_along_axis(recommended, affinity_top, True, axis=1)

    pairs = pd.DataFrame(
        {"user": users.get_indexer(test["user_id"]), "item": item_index.get_indexer(test["item_id"])}
    ).drop_duplicates()
    by_user = pairs["user"].to_numpy()
    popularity_recall = pd.Series(np.isin(pairs["item"], popular)).groupby(by_user).mean().mean()
    affinity_recall = pd.Series(recommended[by_user, pairs["item"].to_numpy()]).groupby(by_user).mean().mean()
    return float(popularity_recall), float(affinity_recall)


def test_user_affinity_beats_popularity_on_held_out_time(small_run: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    popularity, affinity = recall_at_k(*small_run)
    assert popularity > 0.1  # popularity is a real baseline, not a strawman
    assert affinity > popularity * 1.25


def test_without_tastes_affinity_does_not_help() -> None:
    # The control: when users have no taste (broad categories, no preference), the affinity model's edge goes.
    flat = InteractionConfig(
        **{**SMALL.__dict__, "taste_concentration": 1000.0, "preference_strength": 0.0, "second_category_share": 0}
    )
    popularity, affinity = recall_at_k(*simulate_interactions(flat))
    assert affinity < popularity * 1.1


def test_tiny_worlds_work() -> None:
    empty, items = simulate_interactions(
        InteractionConfig(n_users=1, n_items=1, n_categories=1, days=1, new_user_share=0, sessions_per_user_day=0.01)
    )
    assert list(empty.columns) == INTERACTION_COLUMNS and len(items) == 1
    # Every category keeps one item from day one even when all others are new.
    interactions, items = simulate_interactions(
        InteractionConfig(n_users=3, n_items=4, n_categories=2, days=2, new_item_share=1.0)
    )
    assert (items["created_at"] < pd.Timestamp("2026-01-01", tz="UTC")).sum() == 2
    assert len(interactions) > 0
