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

from pipelines.platform.errors import InvalidInput

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
        raise InvalidInput(f"{name} must be a positive integer, got {k!r}.")


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
    lists = [recommended[key][:depth] for key, code in zip(keys, codes, strict=True) if code >= 0]
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
        raise InvalidInput(f"the recommendations frame lacks the column(s) {', '.join(sorted(missing))}.")
    group, labels = pd.factorize(frame["user_id"])
    group = group.astype(np.int64)
    rank = frame["rank"].to_numpy() if "rank" in frame.columns else None
    same_user = group[1:] == group[:-1]
    in_order = bool(np.all(group[1:] >= group[:-1]))  # each user's rows contiguous, as a ranker writes them
    if in_order and rank is not None:
        in_order = bool(np.all(rank[1:][same_user] >= rank[:-1][same_user]))
    if in_order:
        order = np.arange(len(group))
    elif rank is not None:
        order = np.lexsort((rank, group))
    else:
        order = np.argsort(group, kind="stable")
    group = group[order]
    new_group = np.ones(len(group), dtype=bool)
    new_group[1:] = group[1:] != group[:-1]
    group_start = np.flatnonzero(new_group)
    position = np.arange(len(group)) - np.repeat(group_start, np.diff(np.append(group_start, len(group))))
    user = users.get_indexer(pd.Index(labels, dtype=object))[group] if len(group) else group
    keep = (position < depth) & (user >= 0)
    items = frame["item_id"].to_numpy(dtype=object)[order]
    return _Rows(user=user[keep].astype(np.int64), position=position[keep], item=items[keep])


def _evaluated_users(relevant: Mapping[str, Set[str]]) -> tuple[pd.Index, np.ndarray, np.ndarray]:
    """Users with at least one relevant item, the size of each user's set, and (user, item) pairs flattened."""
    kept = [(user, items) for user, items in relevant.items() if items]
    if not kept:
        raise InvalidInput("no user has a relevant item; check that the test split is not empty.")
    users = pd.Index([user for user, _ in kept], dtype=object)
    if not users.is_unique:
        raise InvalidInput("the relevance mapping holds a user twice; give each user one set.")
    sizes = np.fromiter((len(items) for _, items in kept), dtype=np.int64, count=len(kept))
    pair_items = np.empty(int(sizes.sum()), dtype=object)
    pair_items[:] = list(chain.from_iterable(items for _, items in kept))
    return users, sizes, pair_items


@dataclass(frozen=True)
class _Coded:
    hit: np.ndarray  # the row holds a relevant item for the first time in its list
    item: np.ndarray  # item code per row
    key: np.ndarray  # (user, item) code per row
    labels: np.ndarray  # item label per item code


def _code(rows: _Rows, sizes: np.ndarray, pair_items: np.ndarray) -> _Coded:
    codes, labels = pd.factorize(np.concatenate([rows.item, pair_items]))
    item_codes = codes[: len(rows.item)].astype(np.int64)
    width = max(len(labels), 1)
    row_keys = rows.user * width + item_codes
    pair_users = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
    pair_keys = pair_users * width + codes[len(rows.item) :].astype(np.int64)
    hit = pd.Series(row_keys).isin(pair_keys).to_numpy()
    candidates = np.flatnonzero(hit)  # repeats only matter where they would score, so check just those rows
    hit[candidates[pd.Series(row_keys[candidates]).duplicated().to_numpy()]] = False
    return _Coded(hit=hit, item=item_codes, key=row_keys, labels=np.asarray(labels, dtype=object))


def _user_sum(user: np.ndarray, values: np.ndarray, users: int) -> np.ndarray:
    return np.bincount(user, weights=values, minlength=users)


def _distinct_rows(rows: _Rows, coded: _Coded) -> tuple[np.ndarray, np.ndarray]:
    """(user, item code) of each list's distinct items: a repeated item is one item for diversity."""
    first = ~pd.Series(coded.key).duplicated().to_numpy()
    return rows.user[first], coded.item[first]


def _category_diversity(rows: _Rows, coded: _Coded, item_category: Mapping[str, str] | pd.Series, users: int) -> float:
    """1 − share of same-category pairs in each list: a list from one category scores 0, all different 1."""
    lookup = item_category if isinstance(item_category, pd.Series) else pd.Series(dict(item_category), dtype=object)
    category_of_item, _ = pd.factorize(pd.Series(coded.labels).map(lookup))
    user, item = _distinct_rows(rows, coded)
    category = category_of_item[item]
    usable = category >= 0
    user, category = user[usable], category.astype(np.int64)[usable]
    width = int(category.max()) + 1 if len(category) else 1
    counts = pd.Series(user * width + category).value_counts()
    group_counts = counts.to_numpy(dtype=float)
    same = _user_sum(counts.index.to_numpy() // width, group_counts * (group_counts - 1) / 2, users)
    listed = np.bincount(user, minlength=users)
    pairs = listed * (listed - 1) / 2
    has_pairs = listed >= 2
    return float(np.mean(1 - same[has_pairs] / pairs[has_pairs])) if has_pairs.any() else float("nan")


def _vector_diversity(rows: _Rows, coded: _Coded, item_vectors: ItemVectors, users: int) -> float:
    """1 − mean pairwise cosine similarity, from the norm of each list's sum of unit vectors (no pair loop)."""
    from scipy.sparse import csr_matrix

    user, item = _distinct_rows(rows, coded)
    used = np.flatnonzero(np.bincount(item, minlength=len(coded.labels)))
    known = [code for code in used if coded.labels[code] in item_vectors]
    if not known:
        return float("nan")
    matrix = np.zeros((len(coded.labels), len(np.asarray(item_vectors[coded.labels[known[0]]]))))
    for code in known:
        matrix[code] = np.asarray(item_vectors[coded.labels[code]], dtype=float)
    norms = np.linalg.norm(matrix, axis=1)
    has_vector = norms > 0
    matrix[has_vector] /= norms[has_vector, None]
    usable = has_vector[item]
    user, item = user[usable], item[usable]
    membership = csr_matrix((np.ones(len(user)), (user, item)), shape=(users, len(coded.labels)))
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
        raise InvalidInput("pass item_category or item_vectors for diversity, not both.")
    users, sizes, pair_items = _evaluated_users(relevant)
    rows = _rows(recommended, users, k)
    coded = _code(rows, sizes, pair_items)
    n_users = len(users)
    gain = coded.hit.astype(float)
    hits = _user_sum(rows.user, gain, n_users)
    dcg = _user_sum(rows.user, gain / np.log2(rows.position + 2), n_users)
    ideal = np.concatenate([[0.0], np.cumsum(1 / np.log2(np.arange(k) + 2))])[np.minimum(sizes, k)]
    cumulative = np.cumsum(gain)
    start = np.arange(len(gain)) - rows.position  # rows of one user are contiguous, in position order
    hits_so_far = cumulative - (cumulative[start] - gain[start]) if len(gain) else cumulative
    precision_sum = _user_sum(rows.user, gain * hits_so_far / (rows.position + 1), n_users)
    if item_vectors is not None:
        diversity = _vector_diversity(rows, coded, item_vectors, n_users)
    elif item_category is not None:
        diversity = _category_diversity(rows, coded, item_category, n_users)
    else:
        diversity = float("nan")
    return RankingReport(
        k=int(k),
        users=n_users,
        precision=float(np.mean(hits / k)),
        recall=float(np.mean(hits / sizes)),
        ndcg=float(np.mean(dcg / ideal)),
        map=float(np.mean(precision_sum / np.minimum(sizes, k))),
        coverage=int(np.count_nonzero(np.bincount(coded.item))) / catalogue_size,
        diversity=diversity,
        hit_rate=float(np.mean(hits > 0)),
    )


def recall_at(candidates: Recommendations, relevant: Mapping[str, Set[str]], n: int) -> CandidateRecall:
    """Share of relevant items among the first n candidates: the ceiling any ranker on top of them can reach."""
    _check_k(n, "n")
    users, sizes, pair_items = _evaluated_users(relevant)
    rows = _rows(candidates, users, n)
    hits = _user_sum(rows.user, _code(rows, sizes, pair_items).hit.astype(float), len(users))
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
