"""Reading the prediction log of a shadow or canary deployment: the statistics every design's report shares.

`shadow_report` pairs each served prediction with the challenger's shadow prediction of the same request: how
often they decide alike, how far their scores are apart, how fast each model was. It needs no labels, so it is
the first check after a challenger is registered. For lists (records with `items`) it compares the two lists of
each request: how often they start with the same item and how much of the served list the shadow list shares.

A canary compares the outcomes of the requests each variant *served*, once the delayed labels are in; what an
outcome is belongs to the design (pipelines/<design>/canary.py), the statistics are here: Wilson intervals for
rates, the two-proportion z-test for their difference, bootstrap intervals for ranking metrics, and the verdict
sentence. Routing is by a key (customer, user), so a key's requests stay on one variant; the tests treat requests
as independent, which makes the intervals a little narrow when a few keys make many requests.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from pipelines.platform.predictions import PredictionRecord

Z95 = 1.959963984540054


def _model(record: PredictionRecord) -> str:
    return f"{record.variant} v{record.model_version}"


def _latency(values: list[float]) -> dict[str, float | int]:
    array = np.asarray(values, dtype=float)
    return {
        "count": int(array.size),
        "p50": float(np.percentile(array, 50)),
        "p99": float(np.percentile(array, 99)),
    }


def unique_records(records: Iterable[PredictionRecord]) -> list[PredictionRecord]:
    """Drop redelivered records (the log is at-least-once): one per request and served flag."""
    seen: dict[tuple[str, bool], PredictionRecord] = {}
    for record in records:
        seen.setdefault((record.request_id, record.served), record)
    return list(seen.values())


# ---------------------------------------------------------------- shadow


def shadow_report(records: Iterable[PredictionRecord]) -> dict[str, Any]:
    """Served vs shadow predictions of the same requests: agreement, score differences, latency per model."""
    unique = unique_records(records)
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


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def bootstrap_difference(
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


def percentile_interval(values: np.ndarray) -> tuple[float, float] | None:
    finite = _finite(values)
    return (float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))) if finite.size else None


def _significant(test: dict[str, float | None]) -> bool:
    low, high = test["ci_low"], test["ci_high"]
    return low is not None and high is not None and (low > 0 or high < 0)


def versions_text(outcome: dict[str, Any]) -> str:
    return "/".join(f"v{v}" for v in sorted(outcome["versions"]))


def compared(
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


# ---------------------------------------------------------------- how reports print numbers


def percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def interval(bounds: tuple[float, float] | None, as_percent: bool = True) -> str:
    if bounds is None:
        return "-"
    low, high = bounds
    return f"{low:.1%} – {high:.1%}" if as_percent else f"{low:.3f} – {high:.3f}"


def value_with_interval(outcome: dict[str, Any], key: str) -> str:
    value = outcome[key]
    return "-" if value is None else f"{value:.3f} [{interval(outcome[f'{key}_ci'], as_percent=False)}]"


def version_counts(outcome: dict[str, Any]) -> str:
    return ", ".join(f"v{v} ({n:,})" for v, n in sorted(outcome["versions"].items())) or "-"
