"""Promotion gate: challenger against champion on the same recent, time-ordered holdout, then promote or reject.

The rule: the challenger passes when `challenger − champion ≥ min_improvement` on the chosen metric (absolute, so
0.005 means half a point of average precision or nDCG). A first model (no champion) passes. Both models are scored
on exactly the same rows, which the design cuts and scores (its `GateSpec`, pipelines/<design>/lifecycle.py): the
fraud design on the last days of transactions whose labels are final, with training's point-in-time features; the
recommendation design on the newest share of interactions.

A fair comparison needs a holdout newer than what either model was fit on: versions carry a `train_data_end` tag,
and the gate refuses (does not pass, says why in one sentence) when the holdout starts before either model's end.
Both ends are written to the audit record with the holdout's bounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from pipelines.designs import find_design as resolve_design
from pipelines.platform.design import Design, GateError, GateOptions, Holdout
from pipelines.platform.registry import (
    CHALLENGER,
    CHAMPION,
    AuditRecord,
    alias_version,
    connect_mlflow,
    promote_version,
    record_rejection,
    require_model,
)
from pipelines.settings import Settings

TRAIN_DATA_END_TAG = "train_data_end"


def check_metric(design: Design | str, metric: str | None) -> str:
    """The metric to compare (the design's default when None); unknown names fail before any work is done."""
    design = resolve_design(design)
    return design.gate.check_metric(metric or design.gate.default_metric)


def metric_key(metric: str) -> str:
    """An MLflow-safe metric name (`ndcg@10` → `ndcg_at_10`)."""
    return metric.replace("@", "_at_")


# ---------------------------------------------------------------- result and rule


@dataclass(frozen=True)
class GateResult:
    model: str
    metric: str
    champion_version: str | None
    challenger_version: str
    champion_value: float | None
    challenger_value: float
    improvement: float | None
    min_improvement: float
    passed: bool
    holdout: Holdout
    reason: str
    champion_metrics: dict[str, float] = field(default_factory=dict)
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    # Why the holdout is not out of time for a model (then the gate does not pass); empty when the comparison is fair.
    warnings: tuple[str, ...] = ()
    # role → the `train_data_end` tag of that version ("" when it has none).
    train_data_end: dict[str, str] = field(default_factory=dict)

    @property
    def holdout_rows(self) -> int:
        return self.holdout.rows

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["holdout"]["start"] = self.holdout.start.isoformat()
        out["holdout"]["end"] = self.holdout.end.isoformat()
        out["warnings"] = list(self.warnings)
        return out

    def audit_metrics(self) -> dict[str, float]:
        """Every number of both models plus the rule's inputs, as MLflow metrics of the audit run."""
        out = {f"champion_{metric_key(k)}": v for k, v in self.champion_metrics.items()}
        out |= {f"challenger_{metric_key(k)}": v for k, v in self.challenger_metrics.items()}
        out |= {"min_improvement": self.min_improvement, "holdout_rows": float(self.holdout.rows)}
        if self.improvement is not None:
            out["improvement"] = self.improvement
        return out

    def audit_details(self) -> dict[str, str]:
        return {
            "metric": self.metric,
            "gate": self.reason,
            "passed": str(self.passed).lower(),
            "champion_version": self.champion_version or "",
            "challenger_version": self.challenger_version,
            "holdout_start": self.holdout.start.isoformat(),
            "holdout_end": self.holdout.end.isoformat(),
            "holdout_rows": str(self.holdout.rows),
            "warnings": " | ".join(self.warnings),
            "champion_train_data_end": self.train_data_end.get("champion", ""),
            "challenger_train_data_end": self.train_data_end.get("challenger", ""),
        }


def decide(champion: float | None, challenger: float, min_improvement: float) -> tuple[bool, float | None]:
    """(passed, improvement): no champion passes; otherwise the absolute gain must reach `min_improvement`."""
    if not math.isfinite(challenger):
        return False, None
    if champion is None:
        return True, None
    improvement = challenger - champion
    # A gain equal to the bar passes; the tolerance keeps float noise (0.1 + 0.2) from deciding it.
    return improvement >= min_improvement - 1e-12, improvement


def explain(
    name: str,
    metric: str,
    champion_version: str | None,
    challenger_version: str,
    champion: float | None,
    challenger: float,
    improvement: float | None,
    min_improvement: float,
    passed: bool,
    holdout: Holdout,
) -> str:
    """One sentence a person can read in the audit trail."""
    window = f"{holdout.rows:,} {holdout.unit} from {holdout.start:%Y-%m-%d %H:%M} to {holdout.end:%Y-%m-%d %H:%M} UTC"
    if champion is None or improvement is None:
        if passed:
            return (
                f"{name} has no champion yet, so challenger v{challenger_version} passes as the first model "
                f"({metric} {challenger:.4f} on {window})."
            )
        return f"Challenger v{challenger_version} has no {metric} on {window}, so it cannot pass."
    verdict = "passes" if passed else f"is rejected and champion v{champion_version} stays"
    sign = "≥" if passed else "<"
    return (
        f"Challenger v{challenger_version} {verdict}: {metric} {champion:.4f} → {challenger:.4f} "
        f"({improvement:+.4f} {sign} {min_improvement:+.4f} required) on {window}."
    )


# ---------------------------------------------------------------- the gate


def _training_data_ends(name: str, versions: dict[str, str | None]) -> dict[str, str]:
    from mlflow import MlflowClient

    client = MlflowClient()
    return {
        role: client.get_model_version(name, version).tags.get(TRAIN_DATA_END_TAG, "")
        for role, version in versions.items()
        if version is not None
    }


def _not_out_of_time(versions: dict[str, str | None], ends: dict[str, str], holdout: Holdout) -> list[str]:
    """One clause per model whose training data reaches into the holdout."""
    problems = []
    for role, tag in ends.items():
        try:
            seen_until = pd.Timestamp(tag) if tag else None
        except ValueError:  # a tag written by hand cannot be compared; the holdout is then taken as fair
            continue
        if seen_until is not None and seen_until.tzinfo is None:
            seen_until = seen_until.tz_localize("UTC")
        if seen_until is not None and seen_until >= pd.Timestamp(holdout.start):
            problems.append(
                f"the {role} v{versions[role]} was fit on data up to {tag}, after the holdout starts "
                f"({holdout.start.isoformat()}), so this is not an out-of-time comparison for it"
            )
    return problems


def run_gate(
    settings: Settings,
    design: Design | str,
    data: pd.DataFrame,
    metric: str | None = None,
    min_improvement: float | None = None,
    holdout_days: float | None = None,
    holdout_frac: float | None = None,
    max_users: int | None = 5_000,
    rebuild_features: bool = True,
) -> GateResult:
    """Compare `<model>@challenger` with `<model>@champion` on the same holdout cut from `data`."""
    design = resolve_design(design)
    name = design.model_name
    metric = check_metric(design, metric)
    bar = settings.gate_min_improvement if min_improvement is None else min_improvement
    connect_mlflow(settings)
    require_model(name)
    challenger = alias_version(name, CHALLENGER)
    if challenger is None:
        raise GateError(
            f"{name} has no challenger to compare; register one with `mlsd {design.name} train --alias challenger`."
        )
    champion = alias_version(name, CHAMPION)
    if champion == challenger:
        raise GateError(f"{name} v{challenger} is already the champion, so there is nothing to compare.")
    options = GateOptions(metric, holdout_days, holdout_frac, max_users, rebuild_features)
    holdout, evaluate = design.gate.prepare(settings, data, options)
    challenger_metrics = evaluate(challenger)
    champion_metrics = evaluate(champion) if champion is not None else {}
    champion_value = champion_metrics.get(metric) if champion is not None else None
    passed, improvement = decide(champion_value, challenger_metrics[metric], bar)
    reason = explain(
        name,
        metric,
        champion,
        challenger,
        champion_value,
        challenger_metrics[metric],
        improvement,
        bar,
        passed,
        holdout,
    )
    versions = {"champion": champion, "challenger": challenger}
    ends = _training_data_ends(name, versions)
    unfair = _not_out_of_time(versions, ends, holdout)
    if unfair:
        passed = False
        reason = (
            f"Challenger v{challenger} is refused: {'; '.join(unfair)}; "
            "give the gate data newer than both models' training data."
        )
    return GateResult(
        model=name,
        metric=metric,
        champion_version=champion,
        challenger_version=challenger,
        champion_value=champion_value,
        challenger_value=challenger_metrics[metric],
        improvement=improvement,
        min_improvement=bar,
        passed=passed,
        holdout=holdout,
        reason=reason,
        champion_metrics=champion_metrics,
        challenger_metrics=challenger_metrics,
        warnings=tuple(unfair),
        train_data_end=ends,
    )


@dataclass(frozen=True)
class PromotionOutcome:
    promoted: bool
    record: AuditRecord
    gate: GateResult | None


def promote(
    settings: Settings,
    design: Design | str,
    data: pd.DataFrame | None = None,
    metric: str | None = None,
    min_improvement: float | None = None,
    holdout_days: float | None = None,
    holdout_frac: float | None = None,
    force: bool = False,
    reason: str | None = None,
    command: str | None = None,
    gate: Callable[[], GateResult] | None = None,
    max_users: int | None = 5_000,
) -> PromotionOutcome:
    """Gate the challenger against the champion; promote it when it passes, record a rejection when not.

    `force` skips the gate (the audit says "forced"). `gate` replaces the evaluation from `data` with a result
    computed elsewhere (for example by a retraining loop that already scored both models).
    """
    design = resolve_design(design)
    name = design.model_name
    connect_mlflow(settings)
    require_model(name)
    if force:
        challenger = alias_version(name, CHALLENGER)
        if challenger is None:
            raise GateError(
                f"{name} has no challenger to promote; register one with `mlsd {design.name} train --alias challenger`."
            )
        text = f"forced: {reason}" if reason else "forced"
        record = promote_version(name, challenger, text, command=command, details={"gate": "skipped (--force)"})
        return PromotionOutcome(True, record, None)
    if gate is not None:
        result = gate()
    elif data is not None:
        result = run_gate(
            settings, design, data, metric, min_improvement, holdout_days, holdout_frac, max_users=max_users
        )
    else:
        raise GateError("promote needs --data PATH (recent data the gate scores both models on) unless --force.")
    if result.model != name:
        raise GateError(f"the gate result is about {result.model}, not {name}.")
    text = reason or result.reason
    if result.passed:
        record = promote_version(
            name,
            result.challenger_version,
            text,
            result.audit_metrics(),
            result.audit_details(),
            command,
            expected_champion=result.champion_version,
        )
        return PromotionOutcome(True, record, result)
    record = record_rejection(
        name, result.challenger_version, text, result.audit_metrics(), result.audit_details(), command
    )
    return PromotionOutcome(False, record, result)
