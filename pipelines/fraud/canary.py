"""The fraud canary: per variant, the outcomes of the transactions it served once their chargebacks are in.

Catch rate (fraud flagged for review or declined), precision of declines and average precision per variant, each
with a 95 % interval, and challenger − champion differences with a two-proportion z-test (rates) or a bootstrap
(AP). The statistics are the platform's (pipelines/platform/experiments.py).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from pipelines.fraud.events import LABELS_TOPIC, LabelEvent
from pipelines.platform.errors import InvalidInput
from pipelines.platform.experiments import (
    average_precision,
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

FLAGGED = frozenset({"review", "decline"})


def _bootstrap_ap(labels: np.ndarray, scores: np.ndarray, rng: np.random.Generator, n_boot: int) -> np.ndarray:
    values = np.empty(n_boot)
    for i in range(n_boot):
        take = rng.integers(0, labels.size, labels.size)
        values[i] = average_precision(labels[take], scores[take])
    return values


def _variant_outcomes(records: list[PredictionRecord], frauds: set[str]) -> dict[str, Any]:
    labels = np.array([r.entity_id in frauds for r in records], dtype=int)
    scores = np.array([r.score for r in records], dtype=float)
    flagged = np.array([r.decision in FLAGGED for r in records], dtype=bool)
    declined = np.array([r.decision == "decline" for r in records], dtype=bool)
    n_fraud = int(labels.sum())
    caught = int((flagged & (labels == 1)).sum())
    n_declined = int(declined.sum())
    declined_fraud = int((declined & (labels == 1)).sum())
    return {
        "predictions": len(records),
        "frauds": n_fraud,
        "versions": dict(Counter(r.model_version for r in records)),
        "caught": caught,
        "catch_rate": caught / n_fraud if n_fraud else None,
        "catch_rate_ci": wilson_interval(caught, n_fraud),
        "declines": n_declined,
        "declined_frauds": declined_fraud,
        "decline_precision": declined_fraud / n_declined if n_declined else None,
        "decline_precision_ci": wilson_interval(declined_fraud, n_declined),
        "average_precision": None if np.isnan(ap := average_precision(labels, scores)) else ap,
        "_arrays": (labels, scores),
    }


def canary_report(
    records: Iterable[PredictionRecord],
    labels: Iterable[LabelEvent],
    mature_before: datetime | None = None,
    n_boot: int = 500,
    seed: int = 7,
) -> dict[str, Any]:
    """Outcomes of the served predictions per variant on the labels that arrived, champion vs challenger.

    A transaction without a chargeback counts as genuine; `mature_before` keeps only transactions older than the
    label delay, whose chargeback would have arrived by now (newer ones would count late fraud as genuine).
    """
    frauds = {label.transaction_id for label in labels if label.is_fraud == 1}
    # Degraded answers (no features, no score) judge neither model: they are left out, like the monitor does.
    served = [
        r
        for r in unique_records(records)
        if r.served and not r.degraded and (mature_before is None or r.timestamp < mature_before)
    ]
    by_variant = {variant: [r for r in served if r.variant == variant] for variant in ("champion", "challenger")}
    outcomes = {variant: _variant_outcomes(rows, frauds) for variant, rows in by_variant.items()}
    rng = np.random.default_rng(seed)
    boots: dict[str, np.ndarray] = {}
    for variant, outcome in outcomes.items():
        labels_array, scores = outcome.pop("_arrays")
        boots[variant] = _bootstrap_ap(labels_array, scores, rng, n_boot) if labels_array.size else np.array([])
        outcome["average_precision_ci"] = percentile_interval(boots[variant])
    champion, challenger = outcomes["champion"], outcomes["challenger"]
    comparison = {
        "catch_rate": two_proportion_test(
            champion["caught"], champion["frauds"], challenger["caught"], challenger["frauds"]
        ),
        "decline_precision": two_proportion_test(
            champion["declined_frauds"], champion["declines"], challenger["declined_frauds"], challenger["declines"]
        ),
        "average_precision": bootstrap_difference(
            champion["average_precision"], challenger["average_precision"], boots
        ),
    }
    report: dict[str, Any] = {
        "labelled_predictions": len(served),
        "frauds_known": len(frauds),
        "mature_before": mature_before.isoformat() if mature_before else None,
        "variants": outcomes,
        "challenger_minus_champion": comparison,
    }
    report["verdict"] = canary_verdict(outcomes, comparison)
    return report


def canary_verdict(outcomes: dict[str, dict[str, Any]], comparison: dict[str, dict[str, float | None]]) -> str:
    champion, challenger = outcomes["champion"], outcomes["challenger"]
    if not challenger["predictions"]:
        return "No labelled predictions served by the challenger yet: nothing to compare."
    if not champion["predictions"]:
        return "No labelled predictions served by the champion: nothing to compare against."
    if not challenger["frauds"] or not champion["frauds"]:
        return (
            f"No known fraud among the challenger's {challenger['predictions']:,} or the champion's "
            f"{champion['predictions']:,} labelled predictions yet: wait for more chargebacks."
        )

    parts, conclusion = compared(
        comparison,
        ("catch_rate", "catch rate", 100, " pp"),
        ("decline_precision", "decline precision", 100, " pp"),
        ("average_precision", "AP", 1, ""),
    )
    return (
        f"Challenger {versions_text(challenger)} vs champion {versions_text(champion)} on "
        f"{challenger['predictions']:,} vs "
        f"{champion['predictions']:,} labelled predictions ({challenger['frauds']:,} vs {champion['frauds']:,} "
        f"frauds): {', '.join(parts)} — {conclusion}."
    )


def read_canary(settings: Settings, records: list[PredictionRecord], all_predictions: bool) -> dict[str, Any]:
    """The canary report from the served records and the chargebacks on `fraud.labels`.

    Only transactions older than the label stream's newest chargeback minus the label delay count, unless
    `all_predictions`: for newer ones a fraud's chargeback may still be on its way.
    """
    from pipelines.platform.stream import read_topic

    labels, _ = read_topic(settings, LABELS_TOPIC, LabelEvent)
    mature_before = None
    if not all_predictions:
        if not labels:
            raise InvalidInput(
                f"No labels on {LABELS_TOPIC} yet, so no prediction's outcome is known; replay chargebacks "
                "(`mlsd fraud replay`) or pass --all-predictions to count every transaction without one as genuine."
            )
        # The label stream's own clock: a transaction older than the newest chargeback minus the delay is settled.
        mature_before = max(label.label_timestamp for label in labels) - timedelta(days=settings.fraud_label_delay_days)
    report = canary_report(records, labels, mature_before, seed=settings.seed)
    return {**report, "table": table(report)}


ROWS = (
    ("versions", version_counts),
    ("labelled predictions / frauds", lambda o: f"{o['predictions']:,} / {o['frauds']:,}"),
    ("catch rate [95 % CI]", lambda o: f"{percent(o['catch_rate'])} [{interval(o['catch_rate_ci'])}]"),
    (
        "decline precision [95 % CI]",
        lambda o: f"{percent(o['decline_precision'])} [{interval(o['decline_precision_ci'])}]",
    ),
    ("average precision [95 % CI]", lambda o: value_with_interval(o, "average_precision")),
)


def table(report: dict[str, Any]) -> list[list[str]]:
    """[label, champion, challenger] per row, as the canary report prints them."""
    variants = report["variants"]
    return [[label, render(variants["champion"]), render(variants["challenger"])] for label, render in ROWS]
