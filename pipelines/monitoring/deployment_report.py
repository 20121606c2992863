"""Reading the prediction log of a shadow or canary deployment: does the challenger behave, and is it better?

`shadow_report` pairs each served prediction with the challenger's shadow prediction of the same request: how
often they decide alike, how far their scores are apart, how fast each model was. It needs no labels, so it is
the first check after a challenger is registered.

For recommendations it also compares the two lists of each request: how often they start with the same item
and how much of the served list the shadow list shares.

`canary_report` compares the outcomes of the requests each variant *served*, once the delayed labels are in:
fraud-catch rate, precision of declines and average precision per variant, each with a 95 % interval, and
challenger − champion differences with a two-proportion z-test (rates) or a bootstrap (AP). Canary routing is
by customer, so a customer's transactions stay on one variant; the tests treat transactions as independent,
which makes the intervals a little narrow when a few customers make many transactions.

`recsys_canary_report` does the same for recommendations, with the user's later interactions as the labels: hit
rate (the user took one of the k items within the horizon) with Wilson intervals and the z-test, and nDCG@k with a
bootstrap interval (routing is by user, with the same caveat).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from pipelines.fraud.events import LabelEvent
from pipelines.platform.predictions import PredictionRecord

Z95 = 1.959963984540054
FLAGGED = frozenset({"review", "decline"})


def _model(record: PredictionRecord) -> str:
    return f"{record.variant} v{record.model_version}"


def _latency(values: list[float]) -> dict[str, float | int]:
    array = np.asarray(values, dtype=float)
    return {
        "count": int(array.size),
        "p50": float(np.percentile(array, 50)),
        "p99": float(np.percentile(array, 99)),
    }


def _unique(records: Iterable[PredictionRecord]) -> list[PredictionRecord]:
    """Drop redelivered records (the log is at-least-once): one per request and served flag."""
    seen: dict[tuple[str, bool], PredictionRecord] = {}
    for record in records:
        seen.setdefault((record.request_id, record.served), record)
    return list(seen.values())


# ---------------------------------------------------------------- shadow


def shadow_report(records: Iterable[PredictionRecord]) -> dict[str, Any]:
    """Served vs shadow predictions of the same requests: agreement, score differences, latency per model."""
    unique = _unique(records)
    served = {r.request_id: r for r in unique if r.served}
    shadow = {r.request_id: r for r in unique if not r.served}
    pairs = [(served[request], shadow[request]) for request in served if request in shadow]
    latency: dict[str, list[float]] = {}
    for record in unique:
        latency.setdefault(f"{_model(record)} ({'served' if record.served else 'shadow'})", []).append(
            record.latency_ms
        )
    report: dict[str, Any] = {
        "records": len(unique),
        "served": len(served),
        "shadow": len(shadow),
        "pairs": len(pairs),
        "served_without_shadow": len(served) - len(pairs),
        "shadow_without_served": len(shadow) - len(pairs),
        "models": dict(Counter(f"{_model(r)} ({'served' if r.served else 'shadow'})" for r in unique)),
        "latency_ms": {name: _latency(values) for name, values in sorted(latency.items())},
        "agreement": None,
        "decisions": {},
        "score_abs_diff": None,
        "score_correlation": None,
    }
    if not pairs:
        report["verdict"] = "No served prediction has a shadow partner yet: nothing to compare."
        return report
    same = sum(a.decision == b.decision for a, b in pairs)
    crosstab: dict[str, dict[str, int]] = {}
    for a, b in pairs:
        row = crosstab.setdefault(a.decision, {})
        row[b.decision] = row.get(b.decision, 0) + 1
    served_scores = np.array([a.score for a, _ in pairs])
    shadow_scores = np.array([b.score for _, b in pairs])
    diff = np.abs(served_scores - shadow_scores)
    constant = served_scores.std() == 0 or shadow_scores.std() == 0
    correlation = None if constant else float(np.corrcoef(served_scores, shadow_scores)[0, 1])
    report.update(
        agreement=same / len(pairs),
        decisions=crosstab,
        score_abs_diff={
            "mean": float(diff.mean()),
            "p50": float(np.percentile(diff, 50)),
            "p95": float(np.percentile(diff, 95)),
            "max": float(diff.max()),
        },
        score_mean={"served": float(served_scores.mean()), "shadow": float(shadow_scores.mean())},
        score_correlation=correlation,
    )
    flips = {
        "served_declines": sum(a.decision == "decline" for a, _ in pairs),
        "shadow_declines": sum(b.decision == "decline" for _, b in pairs),
    }
    report["declines"] = flips
    served_model, shadow_model = _model(pairs[-1][0]), _model(pairs[-1][1])
    if any(a.items for a, _ in pairs):  # recommendations: every decision is "recommend"; compare the lists
        report["lists"] = list_agreement(pairs)
        del report["declines"]
        report["verdict"] = (
            f"{shadow_model} in the shadow of {served_model} on {len(pairs):,} requests: same first item on "
            f"{report['lists']['same_first_item']:.1%}, the shadow list holds {report['lists']['overlap']:.1%} of "
            f"the served items on average, mean |top score difference| {diff.mean():.4f}."
        )
        return report
    report["verdict"] = (
        f"{shadow_model} in the shadow of {served_model} on {len(pairs):,} requests: same decision on "
        f"{report['agreement']:.1%}, mean |score difference| {diff.mean():.4f} (p95 {np.percentile(diff, 95):.4f}), "
        f"score correlation {'n/a' if correlation is None else f'{correlation:.3f}'}; it would decline "
        f"{flips['shadow_declines']:,} where the served model declined {flips['served_declines']:,}."
    )
    return report


def list_agreement(pairs: list[tuple[PredictionRecord, PredictionRecord]]) -> dict[str, float]:
    """Served vs shadow recommendation lists: share starting with the same item, mean share of served items kept."""
    same_first = [bool(a.items and b.items and a.items[0] == b.items[0]) for a, b in pairs]
    overlap = [len(set(a.items) & set(b.items)) / len(a.items) for a, b in pairs if a.items]
    return {
        "same_first_item": float(np.mean(same_first)),
        "overlap": float(np.mean(overlap)) if overlap else 0.0,
        "mean_length": float(np.mean([len(a.items) for a, _ in pairs])),
    }


# ---------------------------------------------------------------- canary


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """Confidence interval of a proportion that stays inside [0, 1] and behaves for small counts."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _normal_p_value(z: float) -> float:
    return math.erfc(abs(z) / math.sqrt(2))


def two_proportion_test(x1: int, n1: int, x2: int, n2: int) -> dict[str, float | None]:
    """p2 − p1 with a 95 % Wald interval and the pooled two-proportion z-test's two-sided p-value."""
    if n1 == 0 or n2 == 0:
        return {"difference": None, "ci_low": None, "ci_high": None, "p_value": None}
    p1, p2 = x1 / n1, x2 / n2
    difference = p2 - p1
    se = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    pooled = (x1 + x2) / (n1 + n2)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    p_value = 1.0 if se_pooled == 0 else _normal_p_value(difference / se_pooled)
    return {
        "difference": difference,
        "ci_low": difference - Z95 * se,
        "ci_high": difference + Z95 * se,
        "p_value": p_value,
    }


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision as scikit-learn defines it (steps over distinct scores), in numpy: fast enough to bootstrap.

    NaN when the labels are all one class, where the number means nothing.
    """
    positives = int(labels.sum())
    if positives == 0 or positives == labels.size:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], labels[order]
    true_pos = np.cumsum(hits)
    last_of_tie = np.r_[np.diff(ranked) != 0, True]  # one point per distinct score
    true_pos = true_pos[last_of_tie]
    predicted = (np.flatnonzero(last_of_tie) + 1).astype(float)
    recall_steps = np.diff(np.r_[0.0, true_pos / positives])
    return float(np.sum(recall_steps * true_pos / predicted))


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


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


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
    served = [r for r in _unique(records) if r.served and (mature_before is None or r.timestamp < mature_before)]
    by_variant = {variant: [r for r in served if r.variant == variant] for variant in ("champion", "challenger")}
    outcomes = {variant: _variant_outcomes(rows, frauds) for variant, rows in by_variant.items()}
    rng = np.random.default_rng(seed)
    boots: dict[str, np.ndarray] = {}
    for variant, outcome in outcomes.items():
        labels_array, scores = outcome.pop("_arrays")
        boots[variant] = _bootstrap_ap(labels_array, scores, rng, n_boot) if labels_array.size else np.array([])
        outcome["average_precision_ci"] = _percentile_interval(boots[variant])
    champion, challenger = outcomes["champion"], outcomes["challenger"]
    comparison = {
        "catch_rate": two_proportion_test(
            champion["caught"], champion["frauds"], challenger["caught"], challenger["frauds"]
        ),
        "decline_precision": two_proportion_test(
            champion["declined_frauds"], champion["declines"], challenger["declined_frauds"], challenger["declines"]
        ),
        "average_precision": _bootstrap_difference(
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


def _bootstrap_difference(
    champion: float | None, challenger: float | None, boots: dict[str, np.ndarray]
) -> dict[str, float | None]:
    """challenger − champion of a metric with the 95 % interval of the bootstrapped differences."""
    if champion is None or challenger is None:
        return {"difference": None, "ci_low": None, "ci_high": None, "p_value": None}
    differences = _finite(boots["challenger"] - boots["champion"])
    if not differences.size:
        return {"difference": None, "ci_low": None, "ci_high": None, "p_value": None}
    # Two-sided bootstrap p-value: how often the resampled difference lands on the other side of zero.
    p_value = min(1.0, 2 * min(float((differences <= 0).mean()), float((differences >= 0).mean())))
    return {
        "difference": challenger - champion,
        "ci_low": float(np.percentile(differences, 2.5)),
        "ci_high": float(np.percentile(differences, 97.5)),
        "p_value": p_value,
    }


def _percentile_interval(values: np.ndarray) -> tuple[float, float] | None:
    finite = _finite(values)
    return (float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))) if finite.size else None


def _significant(test: dict[str, float | None]) -> bool:
    low, high = test["ci_low"], test["ci_high"]
    return low is not None and high is not None and (low > 0 or high < 0)


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

    parts, conclusion = _compared(
        comparison,
        ("catch_rate", "catch rate", 100, " pp"),
        ("decline_precision", "decline precision", 100, " pp"),
        ("average_precision", "AP", 1, ""),
    )
    return (
        f"Challenger {_versions(challenger)} vs champion {_versions(champion)} on {challenger['predictions']:,} vs "
        f"{champion['predictions']:,} labelled predictions ({challenger['frauds']:,} vs {champion['frauds']:,} "
        f"frauds): {', '.join(parts)} — {conclusion}."
    )


# ---------------------------------------------------------------- canary, recommendations


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
    from pipelines.monitoring.monitor import recsys_hits
    from pipelines.platform.ranking import ndcg_at_k

    newest = pd.Timestamp(interactions["timestamp"].max()) if len(interactions) else None
    served = [r for r in _unique(records) if r.served and newest is not None and r.timestamp + horizon <= newest]
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
            f"ndcg_at_{k}_ci": _percentile_interval(boots[variant]),
        }
    champion, challenger = outcomes["champion"], outcomes["challenger"]
    comparison = {
        "hit_rate": two_proportion_test(
            champion["hits"], champion["predictions"], challenger["hits"], challenger["predictions"]
        ),
        f"ndcg_at_{k}": _bootstrap_difference(champion[f"ndcg_at_{k}"], challenger[f"ndcg_at_{k}"], boots),
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
    parts, conclusion = _compared(
        comparison, ("hit_rate", "hit rate", 100, " pp"), (f"ndcg_at_{k}", f"nDCG@{k}", 1, "")
    )
    report["verdict"] = (
        f"Challenger {_versions(challenger)} vs champion {_versions(champion)} on {challenger['predictions']:,} vs "
        f"{champion['predictions']:,} recommendations with a known outcome: {', '.join(parts)} — {conclusion}."
    )
    return report


def _versions(outcome: dict[str, Any]) -> str:
    return "/".join(f"v{v}" for v in sorted(outcome["versions"]))


def _compared(
    comparison: dict[str, dict[str, float | None]], *metrics: tuple[str, str, int, str]
) -> tuple[list[str], str]:
    """One phrase per metric (difference, 95 % CI, p) and the conclusion: what is significantly better or worse."""
    parts = []
    for name, label, scale, unit in metrics:
        test = comparison[name]
        difference, low, high, p_value = test["difference"], test["ci_low"], test["ci_high"], test["p_value"]
        if difference is None or low is None or high is None or p_value is None:
            parts.append(f"{label} n/a")
            continue
        digits = 1 if scale == 100 else 3
        parts.append(
            f"{label} {difference * scale:+.{digits}f}{unit} "
            f"(95 % CI {low * scale:+.{digits}f} to {high * scale:+.{digits}f}, p = {p_value:.2g})"
        )
    better = [n.replace("_", " ") for n, t in comparison.items() if _significant(t) and (t["ci_low"] or 0) > 0]
    worse = [n.replace("_", " ") for n, t in comparison.items() if _significant(t) and (t["ci_high"] or 0) < 0]
    if better or worse:
        found = "; ".join(
            ([f"better on {', '.join(better)}"] if better else []) + ([f"worse on {', '.join(worse)}"] if worse else [])
        )
        return parts, f"significant at 95 %: the challenger is {found}"
    return parts, "no difference is significant at 95 %; keep the canary running for more labels"
