"""Train/test splits of interactions, and the relevance and seen-item sets the offline evaluation reads from them."""

from __future__ import annotations

from typing import Literal, get_args

import numpy as np
import pandas as pd

from pipelines.platform.errors import InvalidInput

SplitMethod = Literal["temporal", "random-by-item", "leave-last-out"]
SPLIT_METHODS: tuple[str, ...] = get_args(SplitMethod)


def _check(interactions: pd.DataFrame, method: str, test_frac: float) -> None:
    if method not in SPLIT_METHODS:
        raise InvalidInput(f"unknown split method '{method}'; choose one of {', '.join(SPLIT_METHODS)}.")
    needed = {"user_id", "item_id"} | ({"timestamp"} if method != "random-by-item" else set())
    missing = needed - set(interactions.columns)
    if missing:
        names = ", ".join(sorted(missing))
        raise InvalidInput(f"the interactions lack the column(s) {names} that a {method} split needs.")
    if interactions.empty:
        raise InvalidInput("the interactions are empty; there is nothing to split.")
    if method != "leave-last-out" and not (isinstance(test_frac, int | float) and 0 < test_frac < 1):
        raise InvalidInput(f"test_frac must lie strictly between 0 and 1, got {test_frac!r}.")
    if "timestamp" in needed and interactions["timestamp"].isna().any():
        raise InvalidInput("some interactions have no timestamp; fill or drop them before a time-based split.")


def _temporal(interactions: pd.DataFrame, test_frac: float) -> np.ndarray:
    """Test is everything after the (1 − test_frac) time quantile, so no test row is earlier than a train row."""
    cutoff = interactions["timestamp"].quantile(1 - test_frac, interpolation="lower")
    return (interactions["timestamp"] > cutoff).to_numpy()


def _random_by_item(interactions: pd.DataFrame, test_frac: float, seed: int) -> np.ndarray:
    """Per item, round(count × test_frac) (half up) random rows go to test, keeping at least one in train."""
    item, _ = pd.factorize(interactions["item_id"])
    draw = np.random.default_rng(seed).random(len(item))
    order = np.lexsort((draw, item))
    counts = np.bincount(item)
    starts = np.cumsum(counts) - counts
    rank_in_item = np.empty(len(item), dtype=np.int64)
    rank_in_item[order] = np.arange(len(item)) - starts[item[order]]
    test_counts = np.minimum(np.floor(counts * test_frac + 0.5).astype(np.int64), counts - 1)
    return rank_in_item < test_counts[item]


def _leave_last_out(interactions: pd.DataFrame) -> np.ndarray:
    """Each user's latest row is test (the later row in the file wins a tie); one-row users stay in train."""
    user, _ = pd.factorize(interactions["user_id"])
    times = interactions["timestamp"].rank(method="first").to_numpy()  # ties ranked in row order
    order = np.lexsort((times, user))
    last = np.ones(len(user), dtype=bool)
    last[:-1] = user[order][1:] != user[order][:-1]
    test = np.zeros(len(user), dtype=bool)
    test[order[last]] = True
    return test & (np.bincount(user)[user] > 1)


def split_interactions(
    interactions: pd.DataFrame, method: SplitMethod, test_frac: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split into (train, test), both keeping the original index.

    - temporal: the last `test_frac` of time (by timestamp quantile) is test; rows tied at the cut stay in train,
      so every test row is strictly later than every train row.
    - random-by-item: the protocol of public MovieLens benchmark tables; per item a seeded random `test_frac` of its
      rows is test (rounded half up per item), but every item keeps at least one training row, so an item with a
      single interaction stays in train.
    - leave-last-out: each user's latest interaction is test; users with one interaction stay in train.
      `test_frac` and `seed` are not used.
    """
    _check(interactions, method, test_frac)
    if method == "temporal":
        test = _temporal(interactions, test_frac)
    elif method == "random-by-item":
        test = _random_by_item(interactions, test_frac, seed)
    else:
        test = _leave_last_out(interactions)
    return interactions[~test], interactions[test]


def _items_per_user(frame: pd.DataFrame) -> dict[str, set[str]]:
    if frame.empty:
        return {}
    user, users = pd.factorize(frame["user_id"])
    order = np.argsort(user, kind="stable")
    bounds = np.cumsum(np.bincount(user))[:-1]
    chunks = np.split(frame["item_id"].to_numpy(dtype=object)[order], bounds)
    return {str(name): set(chunk.tolist()) for name, chunk in zip(users, chunks, strict=True)}


def seen_items(train: pd.DataFrame) -> dict[str, set[str]]:
    """Items each user has in training: removed from rankings before scoring."""
    return _items_per_user(train)


def test_relevance(train: pd.DataFrame, test: pd.DataFrame) -> dict[str, set[str]]:
    """Every held-out item is relevant to its user, except one the user also has in train.

    Seen items are removed from the ranking, so an item in both halves could never be hit; counting it would cap
    every model's recall below 1 alike. Users without training rows keep their test items (cold-start users count).
    """
    users, _ = pd.factorize(pd.concat([train["user_id"], test["user_id"]], ignore_index=True))
    items, item_labels = pd.factorize(pd.concat([train["item_id"], test["item_id"]], ignore_index=True))
    keys = users.astype(np.int64) * max(len(item_labels), 1) + items
    in_train = pd.Series(keys[len(train) :]).isin(keys[: len(train)]).to_numpy()
    return _items_per_user(test[~in_train])


test_relevance.__test__ = False  # type: ignore[attr-defined]  # a library function, not a pytest test
