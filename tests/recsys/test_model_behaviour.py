"""Behavioural tests of the trained recommender (CheckList style): directional expectation, cold start, invariance
to renamed ids, no seen items.

The recommender is trained once for the module by the training pipeline (`train_recommender`: ALS settings tuned
on a temporal cut, candidates and point-in-time features from the past, the XGBoost ranker on the label window,
the candidate model refitted on everything) on a seeded simulation with a planted, unambiguous co-occurrence:

- 40 users each view ANCHOR and, a minute later, PARTNER;
- 40 other users each view DECOY and STRANGER at exactly those times. The four items share category, price and
  creation time, so every item-level feature (counts, recency, popularity) is the same for PARTNER and STRANGER;
  only what they are seen with differs;
- probes whose latest item is ANCHOR: 5 new users with ANCHOR as their only item, and 5 existing users.

Recommendations come from `RecsysRanker.recommend` with the feature state at the end of the training data (what
the online store holds): candidates, ranking features, ranker score, top-k, as the service computes them before
its re-ranking stage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from pipelines.recsys.candidates import CandidateConfig
from pipelines.recsys.rank import FeatureSnapshot, RankerParams, RecsysRanker, feature_snapshot, train_recommender
from pipelines.recsys.simulate import config_for_size, simulate_interactions

# The settings of tests/recsys/test_rank.py: a small ranker, fast enough to train three times here.
CONFIG = CandidateConfig(seed=3)
PARAMS = RankerParams(n_estimators=80, seed=1)
N_CANDIDATES = 100
K = 10
PAIRS = 40
ANCHOR, PARTNER, DECOY, STRANGER = "ANCHOR", "PARTNER", "DECOY", "STRANGER"
COLD_USER = "never-seen-user"


@dataclass
class World:
    interactions: pd.DataFrame
    items: pd.DataFrame
    new_probes: list[str]  # users whose only item is ANCHOR
    old_probes: list[str]  # users with a history whose latest item is ANCHOR

    @property
    def probes(self) -> list[str]:
        return [*self.new_probes, *self.old_probes]


@dataclass
class Trained:
    world: World
    recommender: RecsysRanker
    snapshot: FeatureSnapshot  # the feature state at the end of the training data

    def recommend(self, users: list[str], k: int = K) -> dict[str, list[tuple[str, float, str]]]:
        return self.recommender.recommend(users, k, self.snapshot)

    def ranker_scores(self, users: list[str], item: str) -> np.ndarray:
        """The ranker's score of `item` as each user's only candidate, the candidate-stage inputs all alike."""
        found = self.recommender.score({user: [(item, 0.05, "item2item")] for user in users}, self.snapshot)
        return found.set_index("user_id").loc[users, "rank_score"].to_numpy()


def planted_world() -> World:
    """19.4k simulated interactions plus the planted ones of the docstring: 19.5k rows, 594 users, 312 items."""
    interactions, items = simulate_interactions(config_for_size(20_000, seed=5))
    rng = np.random.default_rng(0)
    times = pd.to_datetime(interactions["timestamp"], utc=True)
    start, end = times.min(), times.max()
    users = rng.choice(np.sort(interactions["user_id"].unique()), 2 * PAIRS + 5, replace=False)
    pair_users, other_users, old_probes = users[:PAIRS], users[PAIRS : 2 * PAIRS], users[2 * PAIRS :]
    new_probes, old_probes = [f"new-user-{j}" for j in range(5)], [str(user) for user in old_probes]
    moments = start + pd.to_timedelta(np.sort(rng.uniform(0, 0.95 * (end - start).total_seconds(), PAIRS)), unit="s")
    minute = pd.Timedelta(minutes=1)
    rows = [(user, ANCHOR, moment) for user, moment in zip(pair_users, moments, strict=True)]
    rows += [(user, PARTNER, moment + minute) for user, moment in zip(pair_users, moments, strict=True)]
    rows += [(user, DECOY, moment) for user, moment in zip(other_users, moments, strict=True)]
    rows += [(user, STRANGER, moment + minute) for user, moment in zip(other_users, moments, strict=True)]
    rows += [(user, ANCHOR, end - (30 + j) * minute) for j, user in enumerate([*new_probes, *old_probes])]
    planted = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    planted = planted.assign(
        event_type="view",
        weight=1.0,
        session_id=interactions["session_id"].max() + 1 + np.arange(len(planted)),
        interaction_id=[f"P{i:07d}" for i in range(len(planted))],
    )
    interactions = pd.concat([interactions, planted[interactions.columns]], ignore_index=True)
    interactions = interactions.sort_values("timestamp", kind="stable").reset_index(drop=True)
    new_items = pd.DataFrame(
        {
            "item_id": [ANCHOR, PARTNER, DECOY, STRANGER],
            "category": items["category"].value_counts().index[0],
            "created_at": start - pd.Timedelta(days=60),
            "price": float(items["price"].median()),
        }
    )
    return World(interactions, pd.concat([items, new_items], ignore_index=True), new_probes, old_probes)


def train(world: World) -> Trained:
    recommender, _ = train_recommender(
        world.interactions, world.items, n_candidates=N_CANDIDATES, config=CONFIG, params=PARAMS
    )
    return Trained(world, recommender, feature_snapshot(world.interactions, world.items))


def renamed(world: World, users: dict[str, str], items: dict[str, str]) -> World:
    return World(
        world.interactions.assign(
            user_id=world.interactions["user_id"].map(users), item_id=world.interactions["item_id"].map(items)
        ),
        world.items.assign(item_id=world.items["item_id"].map(items)),
        [users[user] for user in world.new_probes],
        [users[user] for user in world.old_probes],
    )


def bijections(world: World, order: str) -> tuple[dict[str, str], dict[str, str]]:
    """New names for every user and item: in the same sort order ("sorted") or in a seeded shuffle ("shuffled")."""
    rng = np.random.default_rng(9)
    maps = []
    for ids, prefix in ((world.interactions["user_id"].unique(), "user"), (world.items["item_id"].unique(), "item")):
        if order == "sorted":
            maps.append({old: f"{prefix}:{old}" for old in ids})
        else:
            maps.append(dict(zip(ids, (f"{prefix}{n:07d}" for n in rng.permutation(len(ids))), strict=True)))
    return maps[0], maps[1]


@pytest.fixture(scope="module")
def world() -> World:
    return planted_world()


@pytest.fixture(scope="module")
def trained(world: World) -> Trained:
    return train(world)


@pytest.fixture(scope="module")
def sorted_renaming(world: World) -> tuple[Trained, dict[str, str], dict[str, str]]:
    users, items = bijections(world, "sorted")
    return train(renamed(world, users, items)), users, items


@pytest.fixture(scope="module")
def shuffled_renaming(world: World) -> tuple[Trained, dict[str, str], dict[str, str]]:
    users, items = bijections(world, "shuffled")
    return train(renamed(world, users, items)), users, items


def sample_users(world: World) -> list[str]:
    """Every fifth user, the probes and a user nobody has seen."""
    users = sorted(world.interactions["user_id"].unique())
    return [*users[::5], *world.probes, COLD_USER]


def position(found: list[tuple[str, float, str]], item: str) -> float:
    ids = [name for name, _, _ in found]
    return float(ids.index(item)) if item in ids else float("inf")


# ---------------------------------------------------------------- directional expectation


@pytest.mark.unit
def test_an_item_seen_with_the_users_latest_item_ranks_above_an_equally_popular_unrelated_one(
    trained: Trained,
) -> None:
    # The whole pipeline: every candidate of each probe, in ranker order. STRANGER may not even be a candidate.
    ranked = trained.recommend(trained.world.probes, N_CANDIDATES)
    places = {user: (position(found, PARTNER), position(found, STRANGER)) for user, found in ranked.items()}
    # measured: PARTNER 11th for each new probe (behind popular items), 17th to 39th for the existing probes;
    # STRANGER not a candidate for 7 probes, 37th to 53rd for the other three
    assert all(partner < N_CANDIDATES for partner, _ in places.values()), places
    assert all(partner < stranger for partner, stranger in places.values()), places

    # The ranker alone, for the users whose only item is ANCHOR: each item as the only candidate with the same
    # candidate-stage inputs, so what differs is what it is seen with (ALS score, item-to-item score, similarity to
    # the latest items), and nothing else these users did can relate STRANGER to them.
    users = trained.world.new_probes
    partner, stranger = trained.ranker_scores(users, PARTNER), trained.ranker_scores(users, STRANGER)
    # measured: 0.101 against -0.365 for each of the 5
    assert (partner > stranger).all(), list(zip(partner.round(3), stranger.round(3), strict=True))


@pytest.mark.unit
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason=(
        "The ranker is not monotone in the co-occurrence features: for 1 of the 5 existing probes (U000418) "
        "PARTNER has the higher ALS score (0.337 vs 0.173), item-to-item score (0.0101 vs 0.0037) and similarity to "
        "the latest items (max 0.994 vs 0.177, mean 0.138 vs 0.055), every other feature equal, yet scores lower "
        "(-0.534 vs -0.489). The full pipeline still ranks PARTNER first (39th vs 53rd), through the candidate stage."
    ),
)
def test_the_ranker_alone_prefers_the_co_occurring_item_for_users_with_a_history(trained: Trained) -> None:
    users = trained.world.old_probes
    partner, stranger = trained.ranker_scores(users, PARTNER), trained.ranker_scores(users, STRANGER)
    # measured: higher for 4 of the 5, by 0.06 to 0.15; lower by 0.046 for U000418
    assert (partner > stranger).all(), dict(zip(users, (partner - stranger).round(3), strict=True))


# ---------------------------------------------------------------- cold start


@pytest.mark.unit
def test_a_user_without_history_gets_the_most_popular_items(trained: Trained) -> None:
    found = trained.recommend([COLD_USER])[COLD_USER]
    assert len(found) == K and {generator for _, _, generator in found} == {"popular"}
    counts = trained.world.interactions["item_id"].value_counts()
    by_count = counts.sort_values(ascending=False, kind="stable").index.tolist()
    recommended = [item for item, _, _ in found]
    # The popular generator counts the last 7 days' weighted interactions and boosts new items; the ranker orders
    # its candidates. measured: 8 of the 10 are among the 10 most interacted items, all 10 among the 12 most (a
    # known user's top 10 holds 3.3 of those 10 on average, 7 at most).
    assert len(set(recommended) & set(by_count[:K])) >= 6, [by_count.index(item) for item in recommended]
    assert set(recommended) <= set(by_count[: 2 * K]), [by_count.index(item) for item in recommended]


# ---------------------------------------------------------------- invariance


@pytest.mark.unit
def test_renaming_ids_in_their_sort_order_gives_the_same_recommendations(
    trained: Trained, sorted_renaming: tuple[Trained, dict[str, str], dict[str, str]]
) -> None:
    """Every user and item id prefixed (a bijection that keeps the sort order) and the pipeline trained again: the
    same items in the same order with the same scores, so nothing reads meaning into an id's text."""
    again, users, items = sorted_renaming
    back = {new: old for old, new in items.items()}
    sample = sample_users(trained.world)
    before = trained.recommend(sample)
    after = again.recommend([users.get(user, user) for user in sample])
    # measured: all 130 lists identical, scores equal to the last bit
    for user in sample:
        assert [(back[item], score, generator) for item, score, generator in after[users.get(user, user)]] == before[
            user
        ]


@pytest.mark.unit
def test_renaming_ids_in_any_order_leaves_the_order_free_parts_of_the_model_unchanged(
    trained: Trained, shuffled_renaming: tuple[Trained, dict[str, str], dict[str, str]]
) -> None:
    """A shuffled bijection: the interaction matrix, the popularity scores and the item-to-item (EASE) table are the
    same up to the renaming. What moves is the seeded part (the next test); ties in the candidate lists still follow
    the catalogue's sort order, which is why this compares scores, not lists."""
    again, users, items = shuffled_renaming
    before, after = trained.recommender.candidates, again.recommender.candidates
    item_codes = np.array([after.catalogue.item_index[items[item]] for item in before.catalogue.items])
    user_codes = np.array([after.catalogue.user_index[users[user]] for user in before.catalogue.users])
    assert (after.seen[user_codes][:, item_codes] != before.seen).nnz == 0
    np.testing.assert_array_equal(after.popularity[item_codes], before.popularity)
    similar = after.similar[item_codes][:, item_codes]
    assert ((similar != 0) != (before.similar != 0)).nnz == 0
    # measured: 28,096 weights, largest difference 8e-8 (float32 Cholesky over another item order)
    assert abs(similar - before.similar).max() <= 1e-6


@pytest.mark.unit
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason=(
        "Recommendations depend on the sort order of the ids: a shuffled renaming acts like another seed. The "
        "catalogue sorts ids, so the seeded ALS initialisation falls on other users and items (and the ranker's "
        "training rows, grouped by sorted user id, are subsampled in another order). Measured: 0 of 130 top-10 "
        "lists identical, top-10 overlap 0.75; other seeds (ALS 4, ranker 2) with the original ids: 0 identical, "
        "overlap 0.81. Without the planted items, ALS candidates alone overlap 0.80 after the renaming and 0.81 "
        "with another seed; item-to-item and popularity do not move (previous test)."
    ),
)
def test_renaming_ids_in_any_order_gives_the_same_recommendations(
    trained: Trained, shuffled_renaming: tuple[Trained, dict[str, str], dict[str, str]]
) -> None:
    again, users, items = shuffled_renaming
    back = {new: old for old, new in items.items()}
    sample = sample_users(trained.world)
    before = trained.recommend(sample)
    after = again.recommend([users.get(user, user) for user in sample])
    for user in sample:
        assert [back[item] for item, _, _ in after[users.get(user, user)]] == [item for item, _, _ in before[user]]


# ---------------------------------------------------------------- seen items


@pytest.mark.unit
def test_no_user_is_recommended_an_item_they_already_interacted_with(trained: Trained) -> None:
    """Every user of the training data, every candidate the ranker orders (not only the top 10)."""
    seen = trained.world.interactions.groupby("user_id")["item_id"].agg(set).to_dict()
    users = sorted(seen)
    ranked = trained.recommend(users, N_CANDIDATES)
    assert sum(len(found) for found in ranked.values()) > 0.9 * N_CANDIDATES * len(users)  # measured: full lists
    repeats = {user: sorted({item for item, _, _ in ranked[user]} & seen[user]) for user in users}
    # measured: 0 repeats in 59,400 recommendations; the same call with exclude_seen=False repeats 7,180
    assert not {user: found for user, found in repeats.items() if found}
    assert all(ANCHOR not in {item for item, _, _ in ranked[user]} for user in trained.world.probes)
