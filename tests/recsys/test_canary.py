"""The recommendation canary report (pipelines/recsys/canary.py): hit rate and nDCG on later interactions."""

from __future__ import annotations

import json
from datetime import timedelta

import pandas as pd
import pytest

from pipelines.platform.predictions import PredictionRecord
from pipelines.recsys.canary import recsys_canary_report
from tests.factories import T0, recommendation


def recsys_canary_log(hit_rates: dict[str, float], users: int = 600) -> tuple[list[PredictionRecord], pd.DataFrame]:
    """Each variant serves `users` users one list; a share `hit_rates[variant]` of them take its first item later."""
    records, taken = [], []
    for variant, rate in hit_rates.items():
        for i in range(users):
            user = f"{variant}-u{i}"
            records.append(recommendation(f"{user}-q", user, [f"{user}-i{j}" for j in range(10)], variant))
            if i < rate * users:
                taken.append((user, f"{user}-i0", T0 + timedelta(hours=2)))
            else:
                taken.append((user, "something-else", T0 + timedelta(hours=2)))
    taken.append(("someone", "x", T0 + timedelta(days=3)))  # the clock of the interaction stream
    interactions = pd.DataFrame(taken, columns=["user_id", "item_id", "timestamp"])
    interactions["timestamp"] = pd.to_datetime(interactions["timestamp"], utc=True)
    return records, interactions


@pytest.mark.unit
def test_the_recsys_canary_report_judges_hit_rate_and_ndcg_on_later_interactions() -> None:
    records, interactions = recsys_canary_log({"champion": 0.2, "challenger": 0.3})
    report = recsys_canary_report(records, interactions, timedelta(hours=24), n_boot=200)
    champion, challenger = report["variants"]["champion"], report["variants"]["challenger"]
    assert (champion["predictions"], champion["hits"], challenger["hits"]) == (600, 120, 180)
    assert champion["hit_rate"] == pytest.approx(0.2) and challenger["hit_rate"] == pytest.approx(0.3)
    assert challenger["ndcg_at_10"] == pytest.approx(0.3)  # a hit on the first of 10 items with one relevant item
    low, high = champion["hit_rate_ci"]
    assert low < 0.2 < high
    assert report["challenger_minus_champion"]["hit_rate"]["p_value"] < 0.001
    assert "significant at 95 %: the challenger is better on hit rate, ndcg at 10" in report["verdict"]
    json.dumps(report)

    # a request newer than the newest interaction minus the horizon has no known outcome yet
    late = recommendation("late", "late-user", ["z"], "challenger", at=T0 + timedelta(days=2, hours=12))
    assert (
        recsys_canary_report(records + [late], interactions, timedelta(hours=24), n_boot=20)["labelled_predictions"]
        == 1200
    )


@pytest.mark.unit
def test_the_recsys_canary_report_without_challenger_traffic_says_so() -> None:
    records, interactions = recsys_canary_log({"champion": 0.2}, users=50)
    report = recsys_canary_report(records, interactions, timedelta(hours=24), n_boot=20)
    assert (
        report["verdict"] == "No recommendation served by the challenger has a known outcome yet: nothing to compare."
    )
