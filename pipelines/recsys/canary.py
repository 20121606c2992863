"""The recommendation canary: per variant, the lists it served judged on what the users took afterwards.

Hit rate (the user took one of the k items within the horizon) with Wilson intervals and the z-test, and nDCG@k
with a bootstrap interval; the statistics are the platform's (pipelines/platform/experiments.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd

from pipelines.platform.errors import InvalidInput
from pipelines.platform.experiments import (
    bootstrap_difference,
    compared,
    interval,
    percent,
    percentile_interval,
    two_proportion_test,
    unique_records,
    value_with_interval,
    version_counts,
    versions_text,
    wilson_interval,
)
from pipelines.platform.predictions import PredictionRecord
from pipelines.settings import Settings

K = 10


def recsys_canary_report(
    records: Iterable[PredictionRecord],
    interactions: pd.DataFrame,
    horizon: timedelta,
    k: int = 10,
    n_boot: int = 500,
    seed: int = 7,
) -> dict[str, Any]:
    """Outcomes of the lists each variant served, judged on the user's interactions within `horizon` after.

    Only requests older than the newest interaction minus the horizon count: for newer ones the user's answer may
    still be on its way (they would count as misses).
    """
    from pipelines.platform.ranking import ndcg_at_k
    from pipelines.recsys.monitoring import recsys_hits

    newest = pd.Timestamp(interactions["timestamp"].max()) if len(interactions) else None
    # Degraded answers (popular items, no ranking) judge neither model: they are left out, like the monitor does.
    served = [
        r
        for r in unique_records(records)
        if r.served and not r.degraded and newest is not None and r.timestamp + horizon <= newest
    ]
    rng = np.random.default_rng(seed)
    outcomes: dict[str, dict[str, Any]] = {}
    boots: dict[str, np.ndarray] = {}
    for variant in ("champion", "challenger"):
        rows = [r for r in served if r.variant == variant]
        frame = pd.DataFrame({"entity_id": [r.entity_id for r in rows], "timestamp": [r.timestamp for r in rows]})
        taken = recsys_hits(frame, interactions, pd.Timedelta(horizon))
        hit = np.array([bool(set(r.items[:k]) & h) for r, h in zip(rows, taken, strict=True)], dtype=bool)
        ndcg = np.array([ndcg_at_k(r.items, h, k) for r, h in zip(rows, taken, strict=True)], dtype=float)
        boots[variant] = (
            np.array([ndcg[rng.integers(0, ndcg.size, ndcg.size)].mean() for _ in range(n_boot)])
            if ndcg.size
            else np.array([])
        )
        outcomes[variant] = {
            "predictions": len(rows),
            "versions": dict(Counter(r.model_version for r in rows)),
            "hits": int(hit.sum()),
            "hit_rate": float(hit.mean()) if hit.size else None,
            "hit_rate_ci": wilson_interval(int(hit.sum()), int(hit.size)),
            f"ndcg_at_{k}": float(ndcg.mean()) if ndcg.size else None,
            f"ndcg_at_{k}_ci": percentile_interval(boots[variant]),
        }
    champion, challenger = outcomes["champion"], outcomes["challenger"]
    comparison = {
        "hit_rate": two_proportion_test(
            champion["hits"], champion["predictions"], challenger["hits"], challenger["predictions"]
        ),
        f"ndcg_at_{k}": bootstrap_difference(champion[f"ndcg_at_{k}"], challenger[f"ndcg_at_{k}"], boots),
    }
    report: dict[str, Any] = {
        "labelled_predictions": len(served),
        "horizon_hours": horizon.total_seconds() / 3600,
        "k": k,
        "mature_before": (newest - horizon).isoformat() if newest is not None else None,
        "variants": outcomes,
        "challenger_minus_champion": comparison,
    }
    if not challenger["predictions"] or not champion["predictions"]:
        missing = "challenger" if not challenger["predictions"] else "champion"
        report["verdict"] = f"No recommendation served by the {missing} has a known outcome yet: nothing to compare."
        return report
    parts, conclusion = compared(comparison, ("hit_rate", "hit rate", 100, " pp"), (f"ndcg_at_{k}", f"nDCG@{k}", 1, ""))
    report["verdict"] = (
        f"Challenger {versions_text(challenger)} vs champion {versions_text(champion)} on "
        f"{challenger['predictions']:,} vs "
        f"{champion['predictions']:,} recommendations with a known outcome: {', '.join(parts)} — {conclusion}."
    )
    return report


def read_canary(settings: Settings, records: list[PredictionRecord], _all_predictions: bool) -> dict[str, Any]:
    """The canary report from the served lists and the interactions on `recsys.interactions`."""
    from pipelines.platform.stream import read_topic
    from pipelines.recsys.events import INTERACTIONS_TOPIC, InteractionEvent
    from pipelines.recsys.monitoring import interaction_rows

    events, _ = read_topic(settings, INTERACTIONS_TOPIC, InteractionEvent)
    if not events:
        raise InvalidInput(
            f"No interactions on {INTERACTIONS_TOPIC} yet, so no recommendation's outcome is known; replay them "
            "with `mlsd recsys replay` (or let the stream run) first."
        )
    horizon = timedelta(hours=settings.monitor_recsys_horizon_hours)
    report = recsys_canary_report(records, interaction_rows(events), horizon, K, seed=settings.seed)
    return {**report, "table": table(report)}


ROWS = (
    ("versions", version_counts),
    ("recommendations with an outcome", lambda o: f"{o['predictions']:,}"),
    ("hit rate [95 % CI]", lambda o: f"{percent(o['hit_rate'])} [{interval(o['hit_rate_ci'])}]"),
    (f"nDCG@{K} [95 % CI]", lambda o: value_with_interval(o, f"ndcg_at_{K}")),
)


def table(report: dict[str, Any]) -> list[list[str]]:
    """[label, champion, challenger] per row, as the canary report prints them."""
    variants = report["variants"]
    return [[label, render(variants["champion"]), render(variants["challenger"])] for label, render in ROWS]
