"""The fraud canary report (pipelines/fraud/canary.py): outcomes per variant on the chargebacks that arrived."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import numpy as np
import pytest

from pipelines.fraud.canary import canary_report
from pipelines.fraud.events import LabelEvent
from tests.factories import T0, record


def canary_log(caught: dict[str, int], frauds: int = 100, genuine: int = 900) -> tuple[list[Any], list[LabelEvent]]:
    """Served records per variant: `caught[variant]` of the frauds flagged, genuine ones approved except 10."""
    records, labels = [], []
    rng = np.random.default_rng(1)
    for variant, version in (("champion", "1"), ("challenger", "2")):
        for i in range(frauds):
            tx = f"{variant}-fraud-{i}"
            flagged = i < caught[variant]
            score = rng.uniform(0.6, 1.0) if flagged else rng.uniform(0.0, 0.4)
            records.append(record(tx, score, "decline" if flagged else "approve", variant, True, version))
            labels.append(
                LabelEvent(
                    transaction_id=tx,
                    customer_id="c",
                    terminal_id="t",
                    timestamp=T0,
                    label_timestamp=T0 + timedelta(days=3),
                )
            )
        for i in range(genuine):
            declined = i < 10
            score = rng.uniform(0.6, 1.0) if declined else rng.uniform(0.0, 0.5)
            records.append(
                record(f"{variant}-ok-{i}", score, "decline" if declined else "approve", variant, True, version)
            )
    return records, labels


@pytest.mark.unit
def test_canary_report_finds_a_clearly_better_challenger_significant() -> None:
    records, labels = canary_log({"champion": 60, "challenger": 80})
    report = canary_report(records, labels, n_boot=200)
    champion, challenger = report["variants"]["champion"], report["variants"]["challenger"]
    assert (champion["predictions"], champion["frauds"], champion["catch_rate"]) == (1000, 100, 0.6)
    assert challenger["catch_rate"] == 0.8
    assert champion["decline_precision"] == pytest.approx(60 / 70)
    assert challenger["decline_precision"] == pytest.approx(80 / 90)
    low, high = champion["catch_rate_ci"]
    assert low < 0.6 < high
    assert challenger["average_precision"] > champion["average_precision"]
    catch = report["challenger_minus_champion"]["catch_rate"]
    assert catch["difference"] == pytest.approx(0.2) and catch["p_value"] < 0.01
    assert "significant at 95 %: the challenger is better on catch rate" in report["verdict"]
    json.dumps(report)  # the CLI writes it as JSON


@pytest.mark.unit
def test_canary_report_calls_a_small_difference_not_significant_and_respects_label_maturity() -> None:
    records, labels = canary_log({"champion": 60, "challenger": 62})
    report = canary_report(records, labels, n_boot=200)
    assert report["challenger_minus_champion"]["catch_rate"]["p_value"] > 0.05
    assert "no difference is significant at 95 %" in report["verdict"]

    late = [record("late-fraud", 0.1, "approve", "challenger", True, "2", at=T0 + timedelta(days=30))]
    settled = canary_report(records + late, labels, mature_before=T0 + timedelta(days=1), n_boot=50)
    assert settled["variants"]["challenger"]["predictions"] == 1000
    assert canary_report(records + late, labels, n_boot=50)["variants"]["challenger"]["predictions"] == 1001


@pytest.mark.unit
def test_canary_report_without_challenger_traffic_says_so() -> None:
    records, labels = canary_log({"champion": 60, "challenger": 60})
    only_champion = [r for r in records if r.variant == "champion"]
    report = canary_report(only_champion, labels, n_boot=20)
    assert report["verdict"] == "No labelled predictions served by the challenger yet: nothing to compare."
