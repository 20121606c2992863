"""Top-K ranking metrics shared by the designs: accuracy, coverage and diversity, vectorised over users.

Conventions (the same in the per-list helpers and in `evaluate_rankings`):

- Relevance is binary: an item is relevant or it is not.
- Only the first `k` positions of a list count. A repeated item keeps its first position; later copies take a slot
  but earn nothing, so a list that repeats itself is penalised rather than rewarded twice.
- precision@K divides by K even when the list is shorter: a short list is not rewarded for being short.
- recall@K divides by all relevant items of the user (not by min(|relevant|, K)).
- nDCG@K uses the log2(position + 1) discount (position counted from 1) and an ideal DCG of min(|relevant|, K) hits.
- AP@K sums precision at each hit and divides by min(|relevant|, K), so a perfect list scores 1 even when the user
  has more than K relevant items.
- A user with nothing relevant scores 0 in the per-list helpers; `evaluate_rankings` leaves such users out,
  and counts a user with relevant items but no recommendation as 0 on every accuracy metric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Set
from dataclasses import asdict, dataclass
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd

Recommendations = Mapping[str, Sequence[str]] | pd.DataFrame
ItemVectors = Mapping[str, Sequence[float] | np.ndarray]


@dataclass(frozen=True)
class RankingReport:
    k: int
    users: int
    precision: float
    recall: float
    ndcg: float
    map: float
    coverage: float
    diversity: float
    hit_rate: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CandidateRecall:
    """How much of what users went on to like a candidate stage lets through to the ranker."""

    n: int
    users: int
    micro: float  # all hits / all relevant items: dominated by heavy users
    macro: float  # mean of per-user recall: every user weighs the same

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_k(k: int, name: str = "k") -> None:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"{name} must be a positive integer, got {k!r}.")


def _gains(recommended: Sequence[str], relevant: Set[str], k: int) -> list[int]:
    """1 where a position within the top k holds a relevant item for the first time, else 0."""
    _check_k(k)
    seen: set[str] = set()
    gains = []
    for item in list(recommended)[:k]:
        gains.append(int(item in relevant and item not in seen))
        seen.add(item)
    return gains


def precision_at_k(recommended: Sequence[str], relevant: Set[str], k: int) -> float:
    return sum(_gains(recommended, relevant, k)) / k


def recall_at_k(recommended: Sequence[str], relevant: Set[str], k: int) -> float:
    return sum(_gains(recommended, relevant, k)) / len(relevant) if relevant else 0.0


def ndcg_at_k(recommended: Sequence[str], relevant: Set[str], k: int) -> float:
    gains = _gains(recommended, relevant, k)
    if not relevant:
        return 0.0
    dcg = sum(gain / np.log2(position + 2) for position, gain in enumerate(gains))
    ideal = sum(1 / np.log2(position + 2) for position in range(min(len(relevant), k)))
    return float(dcg / ideal)


def average_precision_at_k(recommended: Sequence[str], relevant: Set[str], k: int) -> float:
    gains = _gains(recommended, relevant, k)
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for position, gain in enumerate(gains):
        if gain:
            hits += 1
            total += hits / (position + 1)
    return total / min(len(relevant), k)


@dataclass(frozen=True)
class _Rows:
    """Recommendation rows of the evaluated users, grouped by user and in rank order within a user."""

    user: np.ndarray  # index into the evaluated users
    position: np.ndarray  # 0-based rank within the user's list
    item: np.ndarray  # item labels


def _rows(recommended: Recommendations, users: pd.Index, depth: int) -> _Rows:
    if isinstance(recommended, pd.DataFrame):
        return _rows_from_frame(recommended, users, depth)
    keys = list(recommended.keys())
    codes = users.get_indexer(pd.Index(keys, dtype=object)) if keys else np.empty(0, dtype=np.intp)
    lists = [list(recommended[key])[:depth] for key, code in zip(keys, codes, strict=True) if code >= 0]
    lengths = np.fromiter((len(items) for items in lists), dtype=np.int64, count=len(lists))
    total = int(lengths.sum())
    items = np.empty(total, dtype=object)
    items[:] = list(chain.from_iterable(lists))
    starts = np.cumsum(lengths) - lengths
    position = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)
    return _Rows(user=np.repeat(codes[codes >= 0], lengths), position=position, item=items)


def _rows_from_frame(frame: pd.DataFrame, users: pd.Index, depth: int) -> _Rows:
    """Rows in `rank` order when the frame has a `rank` column (smaller is better), else in row order."""
    missing = {"user_id", "item_id"} - set(frame.columns)
    if missing:
        raise ValueError(f"the recommendations frame lacks the column(s) {', '.join(sorted(missing))}.")
    codes = users.get_indexer(frame["user_id"])
    keep = codes >= 0
    codes = codes[keep]
    if "rank" in frame.columns:
        order = np.lexsort((frame["rank"].to_numpy()[keep], codes))
    else:
        order = np.argsort(codes, kind="stable")
    codes = codes[order]
    items = frame["item_id"].to_numpy(dtype=object)[keep][order]
    new_group = np.ones(len(codes), dtype=bool)
    new_group[1:] = codes[1:] != codes[:-1]
    group_start = np.flatnonzero(new_group)
    position = np.arange(len(codes)) - np.repeat(group_start, np.diff(np.append(group_start, len(codes))))
    top = position < depth
    return _Rows(user=codes[top].astype(np.int64), position=position[top], item=items[top])


def _evaluated_users(relevant: Mapping[str, Set[str]]) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """Users with at least one relevant item, the size of each user's set, and (user, item) pairs flattened."""
    kept = [(user, items) for user, items in relevant.items() if items]
    if not kept:
        raise ValueError("no user has a relevant item; check that the test split is not empty.")
    users = pd.Index([user for user, _ in kept], dtype=object)
    if not users.is_unique:
        raise ValueError("the relevance mapping holds a user twice; give each user one set.")
    sizes = np.fromiter((len(items) for _, items in kept), dtype=np.int64, count=len(kept))
    pair_items = np.empty(int(sizes.sum()), dtype=object)
    pair_items[:] = list(chain.from_iterable(items for _, items in kept))
    return users, sizes, pair_items


def _first_hits(rows: _Rows, sizes: np.ndarray, pair_items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: is it a first occurrence, is it a relevant first occurrence; and the item codes."""
    codes, _ = pd.factorize(np.concatenate([rows.item, pair_items]))
    item_codes = codes[: len(rows.item)].astype(np.int64)
    width = int(codes.max()) + 1 if len(codes) else 1
    row_keys = rows.user * width + item_codes
    pair_users = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    pair_keys = pair_users * width + codes[len(rows.item) :].astype(np.int64)
    first = ~pd.Series(row_keys).duplicated().to_numpy()
    hit = first & pd.Series(row_keys).isin(pair_keys).to_numpy()
    return first, hit, item_codes


def _user_sum(user: np.ndarray, values: np.ndarray, users: int) -> np.ndarray:
    return np.bincount(user, weights=values, minlength=users)


def _category_diversity(
    rows: _Rows, first: np.ndarray, item_codes: np.ndarray, item_category: Mapping[str, str] | pd.Series, users: int
) -> float:
    """1 − share of same-category pairs in each list: a list from one category scores 0, all different 1."""
    unique_items = pd.Series(rows.item).drop_duplicates()
    lookup = item_category if isinstance(item_category, pd.Series) else pd.Series(dict(item_category), dtype=object)
    per_unique, _ = pd.factorize(unique_items.map(lookup))
    category = np.full(int(item_codes.max()) + 1 if len(item_codes) else 0, -1, dtype=np.int64)
    category[item_codes[unique_items.index.to_numpy()]] = per_unique
    row_category = category[item_codes] if len(item_codes) else item_codes
    usable = first & (row_category >= 0)
    user, row_category = rows.user[usable], row_category[usable]
    width = int(row_category.max()) + 1 if len(row_category) else 1
    groups, counts = np.unique(user * width + row_category, return_counts=True)
    same = _user_sum(groups // width, counts * (counts - 1) / 2, users)
    listed = np.bincount(user, minlength=users)
    pairs = listed * (listed - 1) / 2
    has_pairs = listed >= 2
    return float(np.mean(1 - same[has_pairs] / pairs[has_pairs])) if has_pairs.any() else float("nan")


def _vector_diversity(rows: _Rows, first: np.ndarray, item_vectors: ItemVectors, users: int) -> float:
    """1 − mean pairwise cosine similarity, from the norm of each list's sum of unit vectors (no pair loop)."""
    from scipy.sparse import csr_matrix

    labels, inverse = np.unique(rows.item[first].astype(str), return_inverse=True)
    known = np.array([label in item_vectors for label in labels], dtype=bool)
    if not known.any():
        return float("nan")
    dimension = len(np.asarray(item_vectors[str(labels[known][0])]))
    matrix = np.zeros((len(labels), dimension))
    for index in np.flatnonzero(known):
        matrix[index] = np.asarray(item_vectors[str(labels[index])], dtype=float)
    norms = np.linalg.norm(matrix, axis=1)
    known &= norms > 0
    matrix[known] /= norms[known, None]
    usable = known[inverse]
    user, item = rows.user[first][usable], inverse[usable]
    membership = csr_matrix((np.ones(len(user)), (user, item)), shape=(users, len(labels)))
    sums = np.asarray(membership @ matrix)
    listed = np.bincount(user, minlength=users)
    has_pairs = listed >= 2
    n = listed[has_pairs]
    mean_similarity = ((sums[has_pairs] ** 2).sum(axis=1) - n) / (n * (n - 1))
    return float(np.mean(1 - mean_similarity)) if has_pairs.any() else float("nan")


def evaluate_rankings(
    recommended: Recommendations,
    relevant: Mapping[str, Set[str]],
    k: int,
    catalogue_size: int,
    item_category: Mapping[str, str] | pd.Series | None = None,
    item_vectors: ItemVectors | None = None,
) -> RankingReport:
    """Mean top-K metrics over users with at least one relevant item (conventions in the module docstring).

    `recommended` is either user -> ranked items, or a frame with `user_id`, `item_id` and optionally `rank`
    (rows are taken in row order per user otherwise). Remove already-seen items (`remove_seen`) before calling,
    from a list longer than k, or the seen items take slots. Coverage is the share of the catalogue appearing in
    at least one evaluated top-K list. Diversity is the mean intra-list diversity over lists with two or more
    items that have a category (or a vector, when `item_vectors` is given); items without one are left out of
    the pairs, and it is NaN without either mapping.
    """
    _check_k(k)
    _check_k(catalogue_size, "catalogue_size")
    if item_category is not None and item_vectors is not None:
        raise ValueError("pass item_category or item_vectors for diversity, not both.")
    users, sizes, pair_items = _evaluated_users(relevant)
    rows = _rows(recommended, users, k)
    first, hit, item_codes = _first_hits(rows, sizes, pair_items)
    n_users = len(users)
    gain = hit.astype(float)
    hits = _user_sum(rows.user, gain, n_users)
    dcg = _user_sum(rows.user, gain / np.log2(rows.position + 2), n_users)
    ideal = np.concatenate([[0.0], np.cumsum(1 / np.log2(np.arange(k) + 2))])[np.minimum(sizes, k)]
    cumulative = np.cumsum(gain)
    start = np.arange(len(gain)) - rows.position  # rows of one user are contiguous, in position order
    hits_so_far = cumulative - (cumulative[start] - gain[start]) if len(gain) else cumulative
    precision_sum = _user_sum(rows.user, gain * hits_so_far / (rows.position + 1), n_users)
    if item_vectors is not None:
        diversity = _vector_diversity(rows, first, item_vectors, n_users)
    elif item_category is not None:
        diversity = _category_diversity(rows, first, item_codes, item_category, n_users)
    else:
        diversity = float("nan")
    return RankingReport(
        k=int(k),
        users=n_users,
        precision=float(np.mean(hits / k)),
        recall=float(np.mean(hits / sizes)),
        ndcg=float(np.mean(dcg / ideal)),
        map=float(np.mean(precision_sum / np.minimum(sizes, k))),
        coverage=len(np.unique(item_codes)) / catalogue_size,
        diversity=diversity,
        hit_rate=float(np.mean(hits > 0)),
    )


def recall_at(candidates: Recommendations, relevant: Mapping[str, Set[str]], n: int) -> CandidateRecall:
    """Share of relevant items among the first n candidates: the ceiling any ranker on top of them can reach."""
    _check_k(n, "n")
    users, sizes, pair_items = _evaluated_users(relevant)
    rows = _rows(candidates, users, n)
    _, hit, _ = _first_hits(rows, sizes, pair_items)
    hits = _user_sum(rows.user, hit.astype(float), len(users))
    return CandidateRecall(
        n=int(n), users=len(users), micro=float(hits.sum() / sizes.sum()), macro=float(np.mean(hits / sizes))
    )


def remove_seen(recommended: Recommendations, seen: Mapping[str, Set[str]]) -> Recommendations:
    """Drop items each user already has in training, keeping the order: re-recommending them is not a hit."""
    if not isinstance(recommended, pd.DataFrame):
        empty: frozenset[str] = frozenset()
        return {
            user: [item for item in items if item not in seen.get(user, empty)] for user, items in recommended.items()
        }
    pairs = pd.DataFrame(
        {
            "user_id": np.repeat(np.array(list(seen.keys()), dtype=object), [len(items) for items in seen.values()]),
            "item_id": np.array(list(chain.from_iterable(seen.values())), dtype=object),
        }
    )
    seen_keys = pd.MultiIndex.from_frame(pairs)
    row_keys = pd.MultiIndex.from_arrays([recommended["user_id"], recommended["item_id"]])
    return recommended[~row_keys.isin(seen_keys)]
