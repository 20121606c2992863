"""Offline evaluation of the recommendation pipeline against its baselines, on one split of the interactions.

Rows of the table: the popularity baseline, each candidate generator alone (its own order), the merged candidates
in merge order, the ranker, and the ranker after re-ranking (the full pipeline). Already-seen training items are
removed from every ranking and every held-out test item a user did not already have counts as relevant. A second
table gives the recall of the candidate stage at the candidate depth the ranker sees.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import pandas as pd

from pipelines.platform.ranking import evaluate_rankings
from pipelines.recsys.candidates import GENERATORS, CandidateConfig, CandidateModel, candidate_recall
from pipelines.recsys.rerank import RerankConfig, created_seconds, measure_effects, rerank_all
from pipelines.recsys.splits import SplitMethod, seen_items, split_interactions, test_relevance

Progress = Callable[[str], None]
# (training rows, items, the split being evaluated) -> a fitted RecsysRanker
RankerTrainer = Callable[[pd.DataFrame, pd.DataFrame | None, SplitMethod], Any]

# Each re-ranking switch on its own, against the ranker's order with only seen items removed ("none").
RERANK_VARIANTS = {
    "none (seen items removed)": RerankConfig(diversity="none"),
    "MMR λ 0.8": RerankConfig(diversity="mmr", mmr_lambda=0.8),
    "MMR λ 0.9": RerankConfig(diversity="mmr", mmr_lambda=0.9),
    "MMR λ 0.95": RerankConfig(diversity="mmr", mmr_lambda=0.95),
    "category cap 3": RerankConfig(diversity="category_cap", category_cap=3),
    "category cap 5": RerankConfig(diversity="category_cap", category_cap=5),
    "freshness ×1.2 (7 days)": RerankConfig(diversity="none", freshness_boost=1.2),
    "default (MMR λ 0.95)": RerankConfig(),
}


@dataclass(frozen=True)
class EvaluateConfig:
    split: SplitMethod = "temporal"
    test_frac: float = 0.2
    k: int = 10
    seed: int = 7
    candidates: int = 200
    max_users: int | None = 20_000  # evaluated users are sampled above this, seeded, to bound the run time


def _row(name: str, stage: str, report: Any, seconds: float) -> dict[str, Any]:
    return {"model": name, "stage": stage, **report.to_dict(), "seconds": round(seconds, 2)}


def evaluate_pipeline(
    interactions: pd.DataFrame,
    items: pd.DataFrame | None,
    config: EvaluateConfig,
    fit_ranker: RankerTrainer | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The comparison table (list of rows) and the candidate-recall table, as JSON-able dicts."""
    say = progress or (lambda _: None)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    train, test = split_interactions(interactions, config.split, config.test_frac, config.seed)
    relevant = test_relevance(train, test)
    if config.max_users is not None and len(relevant) > config.max_users:
        chosen = pd.Series(sorted(relevant)).sample(config.max_users, random_state=config.seed).tolist()
        relevant = {user: relevant[user] for user in chosen}
    users = sorted(relevant)
    seen = seen_items(train)
    catalogue_size = int(items["item_id"].nunique()) if items is not None else int(interactions["item_id"].nunique())
    categories = (
        dict(zip(items["item_id"].astype(str), items["category"].astype(str), strict=True))
        if items is not None and "category" in items
        else None
    )
    timings["split"] = time.perf_counter() - started

    ranker: Any = None
    clock = time.perf_counter()
    if fit_ranker is not None:
        # The candidate rows below are those of the ranker's own candidate model: the table shows what it ranked.
        say("training the ranker and its candidate generators")
        ranker = fit_ranker(train, items, config.split)
        model = ranker.candidates
        timings["ranker_fit"] = time.perf_counter() - clock
    else:
        say("fitting the candidate generators")
        model = CandidateModel.fit(train, items, CandidateConfig(seed=config.seed))
        timings["candidates_fit"] = time.perf_counter() - clock

    rows: list[dict[str, Any]] = []
    for generator in GENERATORS:
        say(f"scoring users with the '{generator}' generator alone")
        clock = time.perf_counter()
        lists = model.candidate_lists(users, config.k, exclude_seen=True, generator=generator)
        report = evaluate_rankings(lists, relevant, config.k, catalogue_size, categories)
        name = "popularity baseline" if generator == "popular" else f"{generator} alone"
        rows.append(_row(name, "candidates", report, time.perf_counter() - clock))

    rerank_effects: list[dict[str, Any]] = []
    say("merging candidates")
    clock = time.perf_counter()
    merged = model.generate_candidates(users, config.candidates, exclude_seen=True)
    merged_top = {user: [item for item, _, _ in found[: config.k]] for user, found in merged.items()}
    report = evaluate_rankings(merged_top, relevant, config.k, catalogue_size, categories)
    rows.append(_row("merged candidates (merge order)", "candidates", report, time.perf_counter() - clock))

    say("candidate recall")
    recall = candidate_recall(model, relevant, [config.candidates])

    if ranker is not None:
        ranked_rows, rerank_effects = ranking_rows(
            ranker, train, items, relevant, seen, categories, catalogue_size, config, say
        )
        rows += ranked_rows

    timings["total"] = time.perf_counter() - started
    return {
        "rerank_effects": rerank_effects,
        "config": asdict(config),
        "train_rows": len(train),
        "test_rows": len(test),
        "users_evaluated": len(users),
        "catalogue_size": catalogue_size,
        "rows": rows,
        "candidate_recall": recall.to_dict(orient="records"),
        "seconds": {key: round(value, 2) for key, value in timings.items()},
    }


def ranking_rows(
    ranker: Any,
    train: pd.DataFrame,
    items: pd.DataFrame | None,
    relevant: dict[str, set[str]],
    seen: Any,
    categories: dict[str, str] | None,
    catalogue_size: int,
    config: EvaluateConfig,
    say: Progress,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ranker's rows of the table (ranker alone, full pipeline) and the effect of each re-ranking switch."""
    from pipelines.recsys.rank import feature_snapshot

    users = sorted(relevant)
    rows: list[dict[str, Any]] = []
    say("ranking and re-ranking")
    clock = time.perf_counter()
    snapshot = feature_snapshot(train, items)  # what the online store holds at the end of training
    ranked = ranker.recommend(users, ranker.n_candidates, snapshot=snapshot)
    ranked_top = {user: [item for item, _, _ in found[: config.k]] for user, found in ranked.items()}
    report = evaluate_rankings(ranked_top, relevant, config.k, catalogue_size, categories)
    rows.append(_row("ranker", "ranking", report, time.perf_counter() - clock))
    clock = time.perf_counter()
    now = float(pd.to_datetime(train["timestamp"], utc=True).max().timestamp())
    created = created_seconds(items) if items is not None and "created_at" in items else None
    reranked = rerank_all(
        ranked, config.k, RerankConfig(), seen=seen, item_category=categories or {}, item_created=created, now=now
    )
    final = {user: [item for item, _, _ in found] for user, found in reranked.items()}
    report = evaluate_rankings(final, relevant, config.k, catalogue_size, categories)
    rows.append(_row("full pipeline (ranker + re-ranking)", "re-ranking", report, time.perf_counter() - clock))
    say("measuring each re-ranking switch")
    # Without creation times (an interaction file alone, as public benchmark tables come) nothing is fresh.
    variants = {
        name: variant
        for name, variant in RERANK_VARIANTS.items()
        if created is not None or variant.freshness_boost == 1.0
    }
    effects = measure_effects(
        ranked, relevant, config.k, categories or {}, catalogue_size, variants, seen, created, now
    )
    rerank_effects = [{str(k): v for k, v in row.items()} for row in effects.reset_index().to_dict("records")]

    return rows, rerank_effects


def ranker_trainer(seed: int) -> RankerTrainer:
    """Train the learning-to-rank model (it fits its own candidate model on a cut of the training data).

    The cut follows the split being evaluated: a random-by-item split is met with a random cut of the training
    rows (`pipelines.recsys.rank.label_cut`), the time-ordered splits with a temporal one.
    """

    def fit(train: pd.DataFrame, items: pd.DataFrame | None, split: SplitMethod) -> Any:
        from pipelines.recsys.rank import RankerParams, train_recommender

        recommender, _ = train_recommender(
            train,
            items,
            config=CandidateConfig(seed=seed),
            params=RankerParams(seed=seed),
            cut="random" if split == "random-by-item" else "temporal",
        )
        return recommender

    return fit
