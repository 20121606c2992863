"""Train/test splits: sizes, seeds, per-item shares and the time order each protocol promises."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.recsys.splits import seen_items, split_interactions, test_relevance

pytestmark = pytest.mark.unit

METHODS = ["temporal", "random-by-item", "leave-last-out"]


@pytest.fixture(scope="module")
def interactions() -> pd.DataFrame:
    """About 6k interactions of 300 users with 120 items; timestamps repeat, one item was seen only once."""
    rng = np.random.default_rng(5)
    rows = 6_000
    frame = pd.DataFrame(
        {
            "user_id": [f"u{n}" for n in rng.integers(0, 300, rows)],
            "item_id": [f"i{n}" for n in rng.zipf(1.3, rows) % 120],
            "timestamp": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 3_000, rows), "min"),
            "weight": rng.random(rows),
        }
    )
    lonely = pd.DataFrame(
        {"user_id": ["u1"], "item_id": ["lonely"], "timestamp": [pd.Timestamp("2026-01-02", tz="UTC")], "weight": [1.0]}
    )
    return pd.concat([frame, lonely], ignore_index=True)


@pytest.mark.parametrize("method", METHODS)
def test_every_row_lands_in_exactly_one_half(interactions, method):
    train, test = split_interactions(interactions, method, test_frac=0.2, seed=1)
    assert len(train) + len(test) == len(interactions)
    assert train.index.intersection(test.index).empty
    assert list(train.columns) == list(interactions.columns)
    assert len(test) > 0 and len(train) > 0


@pytest.mark.parametrize("method", METHODS)
def test_the_same_seed_gives_the_same_split(interactions, method):
    first = split_interactions(interactions, method, test_frac=0.2, seed=3)[1].index
    again = split_interactions(interactions, method, test_frac=0.2, seed=3)[1].index
    assert first.equals(again)


def test_another_seed_draws_other_rows_by_item(interactions):
    first = split_interactions(interactions, "random-by-item", test_frac=0.2, seed=3)[1].index
    other = split_interactions(interactions, "random-by-item", test_frac=0.2, seed=4)[1].index
    assert len(first) == len(other)
    assert not first.sort_values().equals(other.sort_values())


@pytest.mark.parametrize("test_frac", [0.1, 0.2, 0.5, 0.8])
def test_random_by_item_holds_out_a_rounded_share_of_every_item(interactions, test_frac):
    train, test = split_interactions(interactions, "random-by-item", test_frac=test_frac, seed=2)
    counts = interactions["item_id"].value_counts()
    held = test["item_id"].value_counts().reindex(counts.index, fill_value=0)
    expected = np.minimum(np.floor(counts * test_frac + 0.5), counts - 1).astype(int)
    assert (held == expected).all()
    assert "lonely" in set(train["item_id"]) and "lonely" not in set(test["item_id"])
    assert set(train["item_id"]) == set(interactions["item_id"])  # every item keeps a training row
    assert len(test) / len(interactions) == pytest.approx(test_frac, abs=0.03)


def test_random_by_item_rounds_half_up():
    frame = pd.DataFrame({"user_id": list("abcdef"), "item_id": ["x", "x", "y", "y", "y", "y"]})
    _, test = split_interactions(frame, "random-by-item", test_frac=0.25, seed=0)
    assert test["item_id"].value_counts().to_dict() == {"x": 1, "y": 1}  # 2 × 0.25 = 0.5 → 1; 4 × 0.25 = 1


def test_temporal_test_rows_are_all_later_than_train_rows(interactions):
    train, test = split_interactions(interactions, "temporal", test_frac=0.2, seed=0)
    assert test["timestamp"].min() > train["timestamp"].max()
    assert len(test) / len(interactions) == pytest.approx(0.2, abs=0.01)


def test_temporal_keeps_rows_tied_at_the_cut_in_train():
    times = pd.to_datetime(["2026-01-01", "2026-01-02", "2026-01-02", "2026-01-02", "2026-01-03"], utc=True)
    frame = pd.DataFrame({"user_id": list("abcde"), "item_id": list("vwxyz"), "timestamp": times})
    train, test = split_interactions(frame, "temporal", test_frac=0.5, seed=0)
    assert list(test["user_id"]) == ["e"]


def test_leave_last_out_holds_out_each_users_latest_row(interactions):
    train, test = split_interactions(interactions, "leave-last-out", test_frac=0.2, seed=0)
    counts = interactions["user_id"].value_counts()
    assert set(test["user_id"]) == set(counts[counts > 1].index)
    assert test["user_id"].is_unique
    latest = train.groupby("user_id")["timestamp"].max()
    assert (test.set_index("user_id")["timestamp"] >= latest.reindex(test["user_id"]).to_numpy()).all()


def test_leave_last_out_breaks_ties_by_row_order_and_keeps_one_row_users_in_train():
    times = pd.to_datetime(["2026-01-02", "2026-01-01", "2026-01-02", "2026-01-05"], utc=True)
    frame = pd.DataFrame({"user_id": ["a", "a", "a", "b"], "item_id": ["x", "y", "z", "x"], "timestamp": times})
    train, test = split_interactions(frame, "leave-last-out", test_frac=0.2, seed=0)
    assert test[["user_id", "item_id"]].to_numpy().tolist() == [["a", "z"]]
    assert "b" in set(train["user_id"])


@pytest.mark.parametrize(
    ("method", "test_frac", "message"),
    [
        ("by-user", 0.2, "unknown split method 'by-user'"),
        ("temporal", 0.0, "test_frac must lie strictly between 0 and 1"),
        ("random-by-item", 1.0, "test_frac must lie strictly between 0 and 1"),
        ("random-by-item", -0.1, "test_frac must lie strictly between 0 and 1"),
    ],
)
def test_bad_arguments_are_rejected_in_one_sentence(interactions, method, test_frac, message):
    with pytest.raises(ValueError, match=message) as error:
        split_interactions(interactions, method, test_frac=test_frac, seed=0)
    assert "\n" not in str(error.value) and str(error.value).endswith(".")


def test_bad_frames_are_rejected(interactions):
    with pytest.raises(ValueError, match="lack the column.*timestamp"):
        split_interactions(interactions.drop(columns="timestamp"), "temporal", test_frac=0.2, seed=0)
    with pytest.raises(ValueError, match="empty"):
        split_interactions(interactions.iloc[:0], "random-by-item", test_frac=0.2, seed=0)
    missing_time = interactions.copy()
    missing_time.loc[0, "timestamp"] = pd.NaT
    with pytest.raises(ValueError, match="no timestamp"):
        split_interactions(missing_time, "leave-last-out", test_frac=0.2, seed=0)
    split_interactions(interactions.drop(columns="timestamp"), "random-by-item", test_frac=0.2, seed=0)


def test_relevance_is_every_held_out_item_the_user_has_not_seen_in_train():
    train = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["x", "y", "x"]})
    test = pd.DataFrame({"user_id": ["a", "a", "b", "c", "c"], "item_id": ["z", "y", "y", "x", "x"]})
    assert test_relevance(train, test) == {"a": {"z"}, "b": {"y"}, "c": {"x"}}
    assert seen_items(train) == {"a": {"x", "y"}, "b": {"x"}}
    assert seen_items(train.iloc[:0]) == {}


def test_relevance_and_seen_items_cover_a_real_split(interactions):
    train, test = split_interactions(interactions, "random-by-item", test_frac=0.2, seed=0)
    relevant, seen = test_relevance(train, test), seen_items(train)
    assert all(not (items & seen.get(user, set())) for user, items in relevant.items())
    pairs = set(zip(test["user_id"], test["item_id"], strict=True)) - set(
        zip(train["user_id"], train["item_id"], strict=True)
    )
    assert {(user, item) for user, items in relevant.items() for item in items} == pairs
