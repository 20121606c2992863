"""Top-K metrics: the per-list helpers are the readable spec; the vectorised evaluation must agree with them."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd
import pytest

from pipelines.platform.ranking import (
    average_precision_at_k,
    evaluate_rankings,
    ndcg_at_k,
    precision_at_k,
    recall_at,
    recall_at_k,
    remove_seen,
)

pytestmark = pytest.mark.unit


def test_a_small_list_by_hand():
    ranking, relevant = ["a", "b", "c"], {"a", "c"}
    assert precision_at_k(ranking, relevant, 3) == pytest.approx(2 / 3)
    assert recall_at_k(ranking, relevant, 3) == pytest.approx(1.0)
    assert average_precision_at_k(ranking, relevant, 3) == pytest.approx((1 / 1 + 2 / 3) / 2)
    dcg = 1 / math.log2(2) + 1 / math.log2(4)
    ideal = 1 / math.log2(2) + 1 / math.log2(3)
    assert ndcg_at_k(ranking, relevant, 3) == pytest.approx(dcg / ideal)
    assert ndcg_at_k(ranking, relevant, 3) == pytest.approx(0.9197, abs=1e-4)


def test_only_the_first_k_positions_count():
    ranking, relevant = ["a", "b", "c"], {"a", "c"}
    assert precision_at_k(ranking, relevant, 2) == pytest.approx(1 / 2)
    assert recall_at_k(ranking, relevant, 2) == pytest.approx(1 / 2)
    assert average_precision_at_k(ranking, relevant, 2) == pytest.approx(1 / 2)  # one hit of min(2, 2) possible
    assert ndcg_at_k(ranking, relevant, 2) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_k_longer_than_the_list_still_divides_precision_by_k():
    ranking, relevant = ["a"], {"a", "b"}
    assert precision_at_k(ranking, relevant, 5) == pytest.approx(1 / 5)
    assert recall_at_k(ranking, relevant, 5) == pytest.approx(1 / 2)
    assert average_precision_at_k(ranking, relevant, 5) == pytest.approx(1 / 2)
    assert ndcg_at_k(ranking, relevant, 5) == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_a_perfect_list_scores_one_even_with_more_relevant_items_than_k():
    ranking, relevant = ["a", "b"], {"a", "b", "c", "d"}
    assert average_precision_at_k(ranking, relevant, 2) == pytest.approx(1.0)
    assert ndcg_at_k(ranking, relevant, 2) == pytest.approx(1.0)
    assert recall_at_k(ranking, relevant, 2) == pytest.approx(1 / 2)


def test_nothing_relevant_scores_zero():
    for metric in (precision_at_k, recall_at_k, ndcg_at_k, average_precision_at_k):
        assert metric(["a", "b"], set(), 2) == 0.0
        assert metric([], {"a"}, 2) == 0.0


def test_a_repeated_item_takes_a_slot_but_is_counted_once():
    assert precision_at_k(["a", "a"], {"a"}, 2) == pytest.approx(1 / 2)
    assert recall_at_k(["a", "a", "a"], {"a"}, 3) == pytest.approx(1.0)
    assert average_precision_at_k(["a", "a", "c"], {"a", "c"}, 3) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert ndcg_at_k(["a", "a"], {"a"}, 2) == pytest.approx(1.0)
    report = evaluate_rankings({"u": ["a", "a", "c"]}, {"u": {"a", "c"}}, k=3, catalogue_size=3)
    assert report.precision == pytest.approx(2 / 3)
    assert report.map == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert report.coverage == pytest.approx(2 / 3)


@pytest.mark.parametrize("k", [0, -1, 2.5, True])
def test_k_must_be_a_positive_integer(k):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        precision_at_k(["a"], {"a"}, k)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        evaluate_rankings({"u": ["a"]}, {"u": {"a"}}, k=k, catalogue_size=1)


def test_evaluation_averages_over_users_with_something_relevant():
    recommended = {"u1": ["a", "b", "c"], "u3": ["a", "d"]}
    relevant = {"u1": {"a", "c"}, "u2": {"x"}, "u3": set()}  # u2 got nothing, u3 has nothing relevant
    report = evaluate_rankings(recommended, relevant, k=3, catalogue_size=10)
    assert report.users == 2
    assert report.precision == pytest.approx((2 / 3 + 0) / 2)
    assert report.recall == pytest.approx((1 + 0) / 2)
    assert report.map == pytest.approx((1 + 2 / 3) / 2 / 2)
    assert report.hit_rate == pytest.approx(1 / 2)
    assert report.coverage == pytest.approx(3 / 10)  # u3's list is not evaluated
    assert math.isnan(report.diversity)
    assert report.to_dict()["users"] == 2
    assert set(report.to_dict()) == {
        "k",
        "users",
        "precision",
        "recall",
        "ndcg",
        "map",
        "coverage",
        "diversity",
        "hit_rate",
    }


def test_coverage_counts_distinct_items_within_the_top_k():
    recommended = {"u1": ["a", "b", "z"], "u2": ["b", "a", "y"]}
    relevant = {"u1": {"a"}, "u2": {"a"}}
    assert evaluate_rankings(recommended, relevant, k=2, catalogue_size=4).coverage == pytest.approx(2 / 4)
    assert evaluate_rankings(recommended, relevant, k=3, catalogue_size=4).coverage == pytest.approx(4 / 4)


def test_category_diversity_on_tiny_lists():
    category = {"a": "drama", "b": "drama", "c": "comedy", "d": "horror"}
    relevant = {"same": {"a"}, "mixed": {"a"}, "three": {"a"}, "single": {"a"}}
    report = evaluate_rankings(
        {"same": ["a", "b"], "mixed": ["a", "c"], "three": ["a", "b", "c"], "single": ["a"]},
        relevant,
        k=3,
        catalogue_size=4,
        item_category=category,
    )
    # same: 0, mixed: 1, three: 1 − 1/3 (one same-category pair of three); a one-item list has no pairs
    assert report.diversity == pytest.approx((0 + 1 + 2 / 3) / 3)


def test_items_without_a_category_are_left_out_of_the_pairs():
    report = evaluate_rankings(
        {"u": ["a", "unknown", "c"]}, {"u": {"a"}}, k=3, catalogue_size=3, item_category={"a": "x", "c": "y"}
    )
    assert report.diversity == pytest.approx(1.0)


def test_vector_diversity_is_one_minus_mean_pairwise_cosine():
    vectors = {"a": np.array([1.0, 0.0]), "b": np.array([2.0, 0.0]), "c": np.array([0.0, 3.0])}
    relevant = {"same": {"a"}, "orthogonal": {"a"}, "three": {"a"}}
    report = evaluate_rankings(
        {"same": ["a", "b"], "orthogonal": ["a", "c"], "three": ["a", "b", "c"]},
        relevant,
        k=3,
        catalogue_size=3,
        item_vectors=vectors,
    )
    assert report.diversity == pytest.approx((0 + 1 + (1 - 1 / 3)) / 3)


def test_diversity_takes_categories_or_vectors_not_both():
    with pytest.raises(ValueError, match="not both"):
        evaluate_rankings({"u": ["a"]}, {"u": {"a"}}, 1, 1, item_category={"a": "x"}, item_vectors={"a": [1.0]})


def test_no_relevant_user_at_all_is_rejected():
    with pytest.raises(ValueError, match="no user has a relevant item"):
        evaluate_rankings({"u": ["a"]}, {"u": set()}, k=1, catalogue_size=1)


def test_a_frame_is_read_in_rank_order():
    frame = pd.DataFrame({"user_id": ["u1", "u2", "u1", "u1"], "item_id": ["c", "x", "a", "b"], "rank": [3, 1, 1, 2]})
    relevant = {"u1": {"a", "c"}, "u2": {"x"}}
    category = {"a": "x", "b": "x", "c": "y"}
    from_frame = evaluate_rankings(frame, relevant, k=3, catalogue_size=5, item_category=category)
    from_dict = evaluate_rankings(
        {"u1": ["a", "b", "c"], "u2": ["x"]}, relevant, k=3, catalogue_size=5, item_category=category
    )
    assert from_frame.to_dict() == pytest.approx(from_dict.to_dict())
    assert from_frame.map == pytest.approx((1 + 2 / 3) / 2 / 2 + 1 / 2)
    with pytest.raises(ValueError, match="item_id"):
        evaluate_rankings(frame.drop(columns="item_id"), relevant, k=3, catalogue_size=5)


def brute_force_diversity(lists: dict[str, list[str]], relevant: dict[str, set[str]], k: int, category) -> float:
    scores = []
    for user, items in relevant.items():
        distinct = [item for item in dict.fromkeys(lists.get(user, [])[:k]) if item in category]
        if items and len(distinct) >= 2:
            pairs = list(combinations(distinct, 2))
            scores.append(1 - sum(category[x] == category[y] for x, y in pairs) / len(pairs))
    return float(np.mean(scores))


def test_the_vectorised_evaluation_equals_the_per_list_helpers():
    rng = np.random.default_rng(7)
    catalogue = [f"i{j}" for j in range(300)]
    category = {item: f"c{rng.integers(0, 12)}" for item in catalogue[:280]}  # some items lack a category
    k = 10
    recommended: dict[str, list[str]] = {}
    relevant: dict[str, set[str]] = {}
    for user in range(1_000):
        length = int(rng.integers(0, 16))  # shorter and longer than k, some empty
        if user % 17 != 0:  # some users get no list at all
            recommended[f"u{user}"] = list(rng.choice(catalogue[:60], size=length))  # repeats happen
        relevant[f"u{user}"] = set(rng.choice(catalogue[:80], size=int(rng.integers(0, 25))))
    recommended["stranger"] = ["i1", "i2"]  # not evaluated
    report = evaluate_rankings(recommended, relevant, k=k, catalogue_size=len(catalogue), item_category=category)

    evaluated = {user: items for user, items in relevant.items() if items}
    lists = {user: recommended.get(user, []) for user in evaluated}
    assert report.users == len(evaluated)
    for field, metric in [
        ("precision", precision_at_k),
        ("recall", recall_at_k),
        ("ndcg", ndcg_at_k),
        ("map", average_precision_at_k),
    ]:
        expected = np.mean([metric(lists[user], evaluated[user], k) for user in evaluated])
        assert getattr(report, field) == pytest.approx(expected, abs=1e-12), field
    assert report.hit_rate == pytest.approx(np.mean([bool(set(lists[u][:k]) & evaluated[u]) for u in evaluated]))
    shown = set().union(*(set(items[:k]) for items in lists.values()))
    assert report.coverage == pytest.approx(len(shown) / len(catalogue))
    assert report.diversity == pytest.approx(brute_force_diversity(recommended, evaluated, k, category))

    frame = pd.DataFrame(
        [(user, item, rank) for user, items in recommended.items() for rank, item in enumerate(items)],
        columns=["user_id", "item_id", "rank"],
    ).sample(frac=1.0, random_state=3)
    from_frame = evaluate_rankings(frame, relevant, k=k, catalogue_size=len(catalogue), item_category=category)
    assert from_frame.to_dict() == pytest.approx(report.to_dict())


def test_vector_diversity_equals_the_pairwise_mean_on_random_lists():
    rng = np.random.default_rng(1)
    vectors = {f"i{j}": rng.normal(size=4) for j in range(40)}
    lists = {f"u{u}": list(rng.choice(list(vectors), size=int(rng.integers(2, 8)), replace=False)) for u in range(50)}
    relevant = {user: {"i0"} for user in lists}
    report = evaluate_rankings(lists, relevant, k=5, catalogue_size=40, item_vectors=vectors)

    def cosine(x: np.ndarray, y: np.ndarray) -> float:
        return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))

    expected = np.mean(
        [
            1 - np.mean([cosine(vectors[x], vectors[y]) for x, y in combinations(items[:5], 2)])
            for items in lists.values()
        ]
    )
    assert report.diversity == pytest.approx(expected)


def test_candidate_recall_micro_and_macro():
    candidates = {"heavy": ["a", "b", "c", "d"], "light": ["x", "y"]}
    relevant = {"heavy": {"a", "b", "c", "z"}, "light": {"y"}, "cold": {"q"}}
    result = recall_at(candidates, relevant, n=3)
    assert result.users == 3
    assert result.micro == pytest.approx((3 + 1 + 0) / (4 + 1 + 1))
    assert result.macro == pytest.approx((3 / 4 + 1 + 0) / 3)
    assert recall_at(candidates, relevant, n=1).to_dict()["macro"] == pytest.approx((1 / 4 + 0 + 0) / 3)


def test_remove_seen_keeps_order_for_dicts_and_frames():
    seen = {"u1": {"b"}, "u2": {"a", "x"}}
    assert remove_seen({"u1": ["a", "b", "c"], "u2": ["a"], "u3": ["b"]}, seen) == {
        "u1": ["a", "c"],
        "u2": [],
        "u3": ["b"],
    }
    frame = pd.DataFrame({"user_id": ["u1", "u1", "u1", "u3"], "item_id": ["a", "b", "c", "b"], "rank": [1, 2, 3, 1]})
    kept = remove_seen(frame, seen)
    assert isinstance(kept, pd.DataFrame)
    assert kept[["user_id", "item_id"]].to_numpy().tolist() == [["u1", "a"], ["u1", "c"], ["u3", "b"]]
