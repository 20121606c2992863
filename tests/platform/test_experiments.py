"""The statistics of shadow and canary reports (pipelines/platform/experiments.py), checked by hand and against
scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.platform.experiments import average_precision, shadow_report, two_proportion_test, wilson_interval
from tests.factories import recommendation, record


@pytest.mark.unit
def test_shadow_report_pairs_by_request_and_measures_agreement_score_gaps_and_latency() -> None:
    served_scores = [0.1, 0.2, 0.9, 0.4]
    shadow_scores = [0.1, 0.3, 0.5, 0.8]
    decisions = [("approve", "approve"), ("approve", "approve"), ("decline", "review"), ("review", "decline")]
    records = []
    for i, (a, b) in enumerate(zip(served_scores, shadow_scores, strict=True)):
        records.append(record(f"q{i}", a, decisions[i][0], latency=1.0 + i))
        records.append(record(f"q{i}", b, decisions[i][1], "challenger", False, "2", latency=10.0 + i))
    records.append(record("q0", 0.1, "approve"))  # redelivered: counted once
    records.append(record("lonely", 0.3, "approve"))  # served, no shadow partner

    report = shadow_report(records)
    assert (report["served"], report["shadow"], report["pairs"], report["served_without_shadow"]) == (5, 4, 4, 1)
    assert report["agreement"] == 0.5
    assert report["decisions"] == {"approve": {"approve": 2}, "decline": {"review": 1}, "review": {"decline": 1}}
    diff = np.abs(np.array(served_scores) - np.array(shadow_scores))
    assert report["score_abs_diff"]["mean"] == pytest.approx(diff.mean())
    assert report["score_abs_diff"]["p50"] == pytest.approx(np.percentile(diff, 50))
    assert report["score_abs_diff"]["p95"] == pytest.approx(np.percentile(diff, 95))
    assert report["score_correlation"] == pytest.approx(np.corrcoef(served_scores, shadow_scores)[0, 1])
    assert report["latency_ms"]["challenger v2 (shadow)"]["p50"] == pytest.approx(11.5)
    assert report["latency_ms"]["champion v1 (served)"]["count"] == 5
    assert report["verdict"].startswith(
        "challenger v2 in the shadow of champion v1 on 4 requests: same decision on 50.0%"
    )


@pytest.mark.unit
def test_shadow_report_without_pairs_says_so() -> None:
    report = shadow_report([record("a", 0.1, "approve")])
    assert report["pairs"] == 0 and report["agreement"] is None
    assert "nothing to compare" in report["verdict"]


@pytest.mark.unit
def test_wilson_interval_and_the_two_proportion_test_match_hand_computed_values() -> None:
    low, high = wilson_interval(8, 10)  # type: ignore[misc]
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert wilson_interval(0, 0) is None
    test = two_proportion_test(60, 100, 80, 100)
    pooled_se = (0.7 * 0.3 * (2 / 100)) ** 0.5
    z = 0.2 / pooled_se
    assert test["difference"] == pytest.approx(0.2)
    assert test["p_value"] == pytest.approx(math.erfc(z / 2**0.5))
    half = 1.959964 * (0.6 * 0.4 / 100 + 0.8 * 0.2 / 100) ** 0.5
    assert (test["ci_low"], test["ci_high"]) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))


@pytest.mark.unit
def test_average_precision_matches_scikit_learn_with_ties() -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(5)
    labels = (rng.random(3000) < 0.05).astype(int)
    scores = np.round(rng.random(3000) * 0.5 + labels * 0.3, 2)  # rounded: many tied scores
    assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert np.isnan(average_precision(np.zeros(5, dtype=int), np.ones(5)))


@pytest.mark.unit
def test_the_recsys_shadow_report_compares_the_two_lists_not_the_decisions() -> None:
    records = [
        recommendation("q1", "u1", ["a", "b", "c", "d"]),
        recommendation("q1", "u1", ["a", "c", "x", "y"], "challenger", served=False),  # same first, 2 of 4 shared
        recommendation("q2", "u2", ["e", "f", "g", "h"]),
        recommendation("q2", "u2", ["f", "e", "g", "h"], "challenger", served=False),  # other first, all 4 shared
    ]
    report = shadow_report(records)
    assert report["lists"] == {"same_first_item": 0.5, "overlap": pytest.approx(0.75), "mean_length": 4.0}
    assert "declines" not in report
    assert "same first item on 50.0%, the shadow list holds 75.0% of the served items" in report["verdict"]
