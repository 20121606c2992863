"""Re-ranking: rules filter and boost, freshness favours new items, caps and MMR diversify, effects are measured."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pipelines.recsys.rerank import RerankConfig, measure_effects, rerank, rerank_all

pytestmark = pytest.mark.unit

DAY = 86_400.0
NOW = 100 * DAY

# Six items in category a with the highest scores, then three in b and three in c.
CATEGORY = {f"a{i}": "a" for i in range(6)} | {f"b{i}": "b" for i in range(3)} | {f"c{i}": "c" for i in range(3)}
SCORES = [10.0, 9.5, 9.0, 8.5, 8.0, 7.5, 7.0, 6.5, 6.0, 5.5, 5.0, 4.5]
CANDIDATES = [
    (item, score, "als" if i % 2 else "popular") for i, (item, score) in enumerate(zip(CATEGORY, SCORES, strict=True))
]
PLAIN = RerankConfig(remove_seen=False, diversity="none")


def ids(ranked: list[tuple[str, float, str]]) -> list[str]:
    return [item for item, _, _ in ranked]


def categories_in(ranked: list[tuple[str, float, str]]) -> int:
    return len({CATEGORY[item] for item in ids(ranked)})


def test_plain_config_keeps_score_order_and_stage_labels() -> None:
    ranked = rerank(list(reversed(CANDIDATES)), 5, PLAIN, item_category=CATEGORY)
    assert ranked == CANDIDATES[:5]


def test_blocked_items_and_categories_never_appear() -> None:
    config = RerankConfig(diversity="mmr", mmr_lambda=0.3, blocked=frozenset({"a0", "b2", "category:c"}))
    ranked = rerank(CANDIDATES, 12, config, item_category=CATEGORY)
    assert not {"a0", "b2"} & set(ids(ranked))
    assert all(CATEGORY[item] != "c" for item in ids(ranked))
    assert len(ranked) == 12 - 2 - 3


def test_seen_items_are_removed_only_when_switched_on() -> None:
    seen = {"a0", "a1"}
    removed = rerank(CANDIDATES, 4, RerankConfig(diversity="none"), seen, CATEGORY)
    kept = rerank(CANDIDATES, 4, PLAIN, seen, CATEGORY)
    assert ids(removed) == ["a2", "a3", "a4", "a5"]
    assert ids(kept) == ["a0", "a1", "a2", "a3"]


def test_a_boosted_item_and_category_move_up() -> None:
    item_boost = RerankConfig(remove_seen=False, diversity="none", boosted={"c2": 6.0})
    ranked = rerank(CANDIDATES, 3, item_boost, item_category=CATEGORY)
    assert ids(ranked)[0] == "c2"
    assert ranked[0][1] == pytest.approx(4.5 + 6.0)  # additive
    category_boost = RerankConfig(remove_seen=False, diversity="none", boosted={"category:b": 3.6})
    assert ids(rerank(CANDIDATES, 3, category_boost, item_category=CATEGORY)) == ["b0", "b1", "a0"]


def test_freshness_boost_favours_new_items_only() -> None:
    created = {item: NOW - 30 * DAY for item in CATEGORY} | {"c0": NOW - DAY, "b2": NOW - 20 * DAY}
    config = RerankConfig(remove_seen=False, diversity="none", freshness_boost=3.0, freshness_days=7)
    ranked = rerank(CANDIDATES, 12, config, item_category=CATEGORY, item_created=created, now=NOW)
    assert ids(ranked)[0] == "c0"
    assert ranked[0][1] == pytest.approx(5.5 * 3.0)
    original = {item: score for item, score, _ in CANDIDATES}
    assert all(score == original[item] for item, score, _ in ranked[1:])  # b2 is 20 days old: not boosted


def test_freshness_promotes_even_a_negative_score() -> None:
    candidates = [("old", -1.0, "als"), ("new", -1.5, "als")]
    created = {"old": NOW - 30 * DAY, "new": NOW - DAY}
    config = RerankConfig(remove_seen=False, diversity="none", freshness_boost=2.0)
    ranked = rerank(candidates, 2, config, item_created=created, now=NOW)
    assert ids(ranked) == ["new", "old"]
    assert ranked[0][1] == pytest.approx(0.0)  # -1.5 + (2 - 1) * |-1.5|, not -1.5 * 2
    with pytest.raises(ValueError, match="item_created and now"):
        rerank(candidates, 2, config)


def test_category_caps_hold() -> None:
    config = RerankConfig(remove_seen=False, diversity="category_cap", category_cap=2)
    ranked = rerank(CANDIDATES, 5, config, item_category=CATEGORY)
    assert ids(ranked) == ["a0", "a1", "b0", "b1", "c0"]
    short = rerank(CANDIDATES, 10, config, item_category=CATEGORY)
    assert len(short) == 6  # three categories of two: a cap is never broken to fill k


def test_mmr_with_lambda_one_is_the_plain_score_order() -> None:
    config = RerankConfig(remove_seen=False, diversity="mmr", mmr_lambda=1.0)
    assert rerank(CANDIDATES, 8, config, item_category=CATEGORY) == rerank(CANDIDATES, 8, PLAIN)


def test_lower_mmr_lambda_raises_category_diversity() -> None:
    def mmr(lam: float) -> list[tuple[str, float, str]]:
        return rerank(CANDIDATES, 5, RerankConfig(remove_seen=False, mmr_lambda=lam), item_category=CATEGORY)

    assert categories_in(mmr(1.0)) == 1
    assert categories_in(mmr(0.5)) == 3
    assert ids(mmr(0.5))[:3] == ["a0", "b0", "c0"]  # each new category's best item first
    assert categories_in(mmr(0.0)) == 3


def test_mmr_matches_brute_force_greedy_on_random_lists() -> None:
    rng = random.Random(3)
    for _ in range(200):
        n = rng.randint(1, 25)
        candidates = [(f"i{i}", round(rng.uniform(-2, 2), 1), "als") for i in range(n)]
        category = {f"i{i}": f"c{rng.randrange(4)}" for i in range(n) if rng.random() < 0.9}
        lam = rng.choice([0.0, 0.3, 0.6, 0.9])
        got = rerank(candidates, 8, RerankConfig(remove_seen=False, mmr_lambda=lam), item_category=category)
        assert ids(got) == brute_force_mmr(candidates, 8, lam, category)


def brute_force_mmr(
    candidates: list[tuple[str, float, str]], k: int, lam: float, category: dict[str, str]
) -> list[str]:
    order = sorted(range(len(candidates)), key=lambda i: (-candidates[i][1], i))
    scores = [candidates[i][1] for i in order]
    low, spread = min(scores), max(scores) - min(scores)
    picked: list[int] = []
    while len(picked) < min(k, len(order)):
        best, best_value = -1, float("-inf")
        for rank, index in enumerate(order):
            if rank in picked:
                continue
            item = candidates[index][0]
            similar = any(item in category and category.get(candidates[order[p]][0]) == category[item] for p in picked)
            relevance = (scores[rank] - low) / spread if spread > 0 else 1.0
            value = lam * relevance - (1 - lam) * similar
            if value > best_value:
                best, best_value = rank, value
        picked.append(best)
    return [candidates[order[rank]][0] for rank in picked]


@pytest.mark.parametrize("diversity", ["none", "mmr", "category_cap"])
def test_fewer_candidates_than_k_and_no_duplicates(diversity: str) -> None:
    candidates = [("a0", 1.0, "als"), ("b0", 3.0, "popular"), ("a0", 2.0, "item2item"), ("b0", 0.5, "als")]
    config = RerankConfig(remove_seen=False, diversity=diversity)  # type: ignore[arg-type]
    ranked = rerank(candidates, 10, config, item_category=CATEGORY)
    assert sorted(ranked) == [("a0", 2.0, "item2item"), ("b0", 3.0, "popular")]  # best entry of each item
    assert rerank([], 10, config, item_category=CATEGORY) == []


def test_rerank_all_applies_each_users_seen_items() -> None:
    recommendations = {"u1": CANDIDATES, "u2": CANDIDATES}
    ranked = rerank_all(recommendations, 2, RerankConfig(diversity="none"), {"u1": {"a0"}}, CATEGORY)
    assert ids(ranked["u1"]) == ["a1", "a2"]
    assert ids(ranked["u2"]) == ["a0", "a1"]


@pytest.mark.parametrize(
    ("name", "text", "key"),
    [
        ("rules.json", json.dumps({"mmr_lambda": 1.5}), "mmr_lambda"),
        ("rules.yaml", "diversity: shuffle\n", "diversity"),
        ("rules.yml", "category_caps: 2\n", "category_caps"),
        ("rules.yaml", "blocked: a0\n", "blocked"),
        ("rules.json", json.dumps({"boosted": {"a0": "high"}}), "boosted"),
    ],
)
def test_a_malformed_rules_file_names_the_file_and_key(tmp_path: Path, name: str, text: str, key: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=key) as error:
        RerankConfig.from_file(path)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_broken_syntax_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "rules.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON or YAML") as error:
        RerankConfig.from_file(path)
    assert str(path) in str(error.value)


def test_rules_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "diversity: category_cap\ncategory_cap: 2\nboosted:\n  a3: 1.5\n  'category:b': 0.5\n"
        "blocked: [a0, 'category:c']\nfreshness_boost: 1.2\nfreshness_days: 3\n"
    )
    config = RerankConfig.from_file(path)
    assert config == RerankConfig(
        diversity="category_cap",
        category_cap=2,
        boosted={"a3": 1.5, "category:b": 0.5},
        blocked=frozenset({"a0", "category:c"}),
        freshness_boost=1.2,
        freshness_days=3,
    )


def test_measure_effects_shows_diversity_rising_and_coverage_changing() -> None:
    rng = random.Random(0)
    category = {f"i{i}": f"c{i % 10}" for i in range(200)}
    # the ranker prefers low item ids, which sit in few categories at the top of each list
    recommendations = {}
    relevant = {}
    for user in range(300):
        items = rng.sample(range(200), 50)
        scored = sorted(((f"i{i}", 1.0 / (1 + i % 10) + rng.random() * 0.2, "als") for i in items), key=lambda c: -c[1])
        recommendations[f"u{user}"] = scored
        relevant[f"u{user}"] = {f"i{i}" for i in rng.sample(items, 5)}
    table = measure_effects(
        recommendations,
        relevant,
        10,
        category,
        200,
        {
            "plain": RerankConfig(diversity="none"),
            "cap": RerankConfig(diversity="category_cap", category_cap=2),
            "mmr": RerankConfig(diversity="mmr", mmr_lambda=0.5),
        },
    )
    assert list(table.index) == ["plain", "cap", "mmr"]
    assert {"ndcg@10", "recall@10", "coverage", "diversity"} <= set(table.columns)
    diversity = table["diversity"].to_dict()
    coverage = table["coverage"].to_dict()
    assert diversity["cap"] > diversity["plain"] + 0.1
    assert diversity["mmr"] > diversity["plain"] + 0.1
    assert coverage["cap"] != coverage["plain"]
    assert coverage["mmr"] != coverage["plain"]
