"""Promotion gate: challenger against champion on the same recent, time-ordered holdout, then promote or reject.

The rule: the challenger passes when `challenger − champion ≥ min_improvement` on the chosen metric (absolute, so
0.005 means half a point of average precision or nDCG). A first model (no champion) passes. Both models are scored
on exactly the same rows, built the way training builds them:

- fraud (`fraud-xgboost`): the last `holdout_days` of transactions whose labels are final (the newest
  `label_delay_days` of the file are left out: their chargebacks may not have arrived), with point-in-time features
  from Feast exactly as training retrieves them. By default the file is backfilled into a scratch Feast repo, so
  the gate never rewrites the stores that serving reads.
- recsys (`recsys-ranker`): the last `holdout_frac` of interactions in time (the temporal split of the offline
  evaluation); both registered pyfuncs recommend for the holdout users, scored with the shared ranking metrics.

A fair comparison needs a holdout newer than what either model was fit on; versions carry a `train_data_end` tag
and the result warns when the holdout starts before it.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

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

FRAUD_MODEL = "fraud-xgboost"
RECSYS_MODEL = "recsys-ranker"
DESIGNS = {"fraud": FRAUD_MODEL, "recsys": RECSYS_MODEL}
DEFAULT_METRIC = {FRAUD_MODEL: "average_precision", RECSYS_MODEL: "ndcg@10"}
FRAUD_METRICS = ("average_precision", "roc_auc", "card_precision_at_100")
RECSYS_METRICS = ("ndcg", "recall", "map", "precision", "hit_rate")
_RECSYS_METRIC = re.compile(r"(ndcg|recall|map|precision|hit_rate)@([1-9][0-9]*)")
TRAIN_DATA_END_TAG = "train_data_end"


class GateError(ValueError):
    """The gate cannot compare the two models; the message says why and what to do."""


def resolve_model(model: str) -> str:
    """`fraud` / `recsys` or the registered name itself."""
    name = DESIGNS.get(model, model)
    if name not in DESIGNS.values():
        raise GateError(f"'{model}' is not a model with a promotion gate; use fraud-xgboost or recsys-ranker.")
    return name


def check_metric(name: str, metric: str | None) -> str:
    """The metric to compare (the design's default when None); unknown names fail before any work is done."""
    metric = metric or DEFAULT_METRIC[name]
    if name == FRAUD_MODEL:
        metric = "card_precision_at_100" if metric == "card_precision_at_k" else metric
        if metric not in FRAUD_METRICS:
            raise GateError(f"'{metric}' is not a fraud gate metric; use one of {', '.join(FRAUD_METRICS)}.")
    elif not _RECSYS_METRIC.fullmatch(metric):
        raise GateError(f"'{metric}' is not a recommendation gate metric; use ndcg@10, recall@10 or map@10 (any k).")
    return metric


def metric_key(metric: str) -> str:
    """An MLflow-safe metric name (`ndcg@10` → `ndcg_at_10`)."""
    return metric.replace("@", "_at_")


# ---------------------------------------------------------------- result and rule


@dataclass(frozen=True)
class Holdout:
    """What the two models were compared on."""

    rows: int
    start: datetime
    end: datetime
    unit: str  # "transactions" | "interactions"
    entities: int  # cards in the window (fraud) or users evaluated (recsys)
    entity_unit: str


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
    warnings: tuple[str, ...] = ()

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


# ---------------------------------------------------------------- fraud


@dataclass
class FraudHoldout:
    frame: pd.DataFrame  # transactions with their point-in-time feature columns
    labels: np.ndarray
    holdout: Holdout


def fraud_holdout_bounds(
    times: pd.Series, label_delay_days: float, holdout_days: float
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """(start, end] of the fraud holdout: the last `holdout_days` whose labels are final by the newest row.

    A retrain fits its challenger on rows up to `start` only, so that the gate compares both models out of time.
    """
    final_until = pd.to_datetime(times, utc=True).max() - pd.Timedelta(days=label_delay_days)
    return final_until - pd.Timedelta(days=holdout_days), final_until


def fraud_holdout(
    settings: Settings, transactions: pd.DataFrame, holdout_days: float = 7, rebuild_features: bool = True
) -> FraudHoldout:
    """The last `holdout_days` of transactions whose labels are final, with training's point-in-time features.

    `rebuild_features=False` reads the configured Feast store as it is (rows a training backfill or the stream
    processor already wrote) instead of backfilling the file into a scratch repo.
    """
    from pipelines.fraud.train import backfill_feature_store, training_frame
    from pipelines.platform.features import apply_feature_definitions, scratch_feature_settings

    if holdout_days <= 0:
        raise GateError(f"--holdout-days must be more than 0, got {holdout_days}.")
    if transactions.empty:
        raise GateError("the transactions file is empty, so there is nothing to compare the models on.")
    times = pd.to_datetime(transactions["timestamp"], utc=True)
    as_of = times.max()
    start, final_until = fraud_holdout_bounds(times, settings.fraud_label_delay_days, holdout_days)
    window = ((times > start) & (times <= final_until)).to_numpy()
    if not window.any():
        raise GateError(
            f"the file has no transaction older than the {settings.fraud_label_delay_days}-day label delay "
            f"(it ends {as_of:%Y-%m-%d}), so no label is final yet; pass a longer file."
        )
    rows = transactions[window]
    labels = ((rows["is_fraud"] == 1) & (pd.to_datetime(rows["label_timestamp"], utc=True) <= as_of)).to_numpy(
        dtype=int
    )
    if labels.sum() == 0 or labels.sum() == len(labels):
        raise GateError(
            f"the {len(rows):,} holdout transactions hold only one class, so ranking metrics are undefined; "
            "use more --holdout-days or a file with more fraud."
        )
    if rebuild_features:
        with tempfile.TemporaryDirectory(prefix="mlsd-gate-") as scratch_home:
            scratch = scratch_feature_settings(settings, Path(scratch_home))
            store = apply_feature_definitions(scratch)
            backfill_feature_store(scratch, transactions[(times <= final_until).to_numpy()], store)
            frame = training_frame(store, rows)
    else:
        frame = training_frame(apply_feature_definitions(settings), rows)
    holdout = Holdout(
        rows=len(rows),
        start=times[window].min().to_pydatetime(),
        end=times[window].max().to_pydatetime(),
        unit="transactions",
        entities=int(rows["customer_id"].nunique()),
        entity_unit="cards",
    )
    return FraudHoldout(frame=frame, labels=labels, holdout=holdout)


def fraud_scores(loaded: Any, data: FraudHoldout) -> np.ndarray:
    """Fraud probability of each holdout transaction from a loaded registry version (its own feature list)."""
    from pipelines.fraud.features import MODEL_FEATURES, model_matrix

    features = json.loads(loaded.tags.get("features", json.dumps(MODEL_FEATURES)))
    missing = sorted(set(features) - set(MODEL_FEATURES))
    if missing:
        raise GateError(
            f"{loaded.name} v{loaded.version} needs features this code does not compute ({', '.join(missing)}); "
            "retrain it."
        )
    return np.asarray(loaded.model.predict_proba(model_matrix(data.frame)[features])[:, 1], dtype=float)


def fraud_metrics(settings: Settings, loaded: Any, data: FraudHoldout) -> dict[str, float]:
    """The training metrics on the holdout, plus precision and recall at the version's own threshold."""
    from pipelines.fraud.train import evaluate_scores
    from pipelines.platform.training import precision_recall_at

    scores = fraud_scores(loaded, data)
    metrics, _ = evaluate_scores(
        data.frame, data.labels, scores, settings.fraud_cost_missed_fraud, settings.fraud_cost_false_alarm
    )
    out = {name: float(metrics[name]) for name in FRAUD_METRICS}
    at_own = precision_recall_at(data.labels, scores, float(loaded.tags.get("threshold", "0.5")))
    out["precision_at_threshold"] = at_own["precision"]
    out["recall_at_threshold"] = at_own["recall"]
    return out


def _fraud_evaluator(
    settings: Settings, data: pd.DataFrame, holdout_days: float, rebuild_features: bool
) -> tuple[Holdout, Callable[[str], dict[str, float]]]:
    from pipelines.platform.registry import load_version

    prepared = fraud_holdout(settings, data, holdout_days, rebuild_features)

    def evaluate(version: str) -> dict[str, float]:
        return fraud_metrics(settings, load_version(FRAUD_MODEL, version), prepared)

    return prepared.holdout, evaluate


# ---------------------------------------------------------------- recsys


@dataclass
class RecsysHoldout:
    relevant: dict[str, set[str]]
    users: list[str]
    catalogue_size: int
    holdout: Holdout


def recsys_holdout(
    interactions: pd.DataFrame, holdout_frac: float = 0.2, max_users: int | None = 5_000, seed: int = 7
) -> RecsysHoldout:
    """The last `holdout_frac` of interactions in time; relevance as the offline evaluation defines it."""
    from pipelines.recsys.splits import split_interactions, test_relevance

    if not 0 < holdout_frac < 1:
        raise GateError(f"--holdout-frac must lie strictly between 0 and 1, got {holdout_frac}.")
    train, test = split_interactions(interactions, "temporal", holdout_frac, seed)
    relevant = test_relevance(train, test)
    if not relevant:
        raise GateError("the holdout holds no new user-item pair to recommend; use a larger --holdout-frac.")
    if max_users is not None and len(relevant) > max_users:
        chosen = pd.Series(sorted(relevant)).sample(max_users, random_state=seed).tolist()
        relevant = {user: relevant[user] for user in chosen}
    times = pd.to_datetime(test["timestamp"], utc=True)
    holdout = Holdout(
        rows=len(test),
        start=times.min().to_pydatetime(),
        end=times.max().to_pydatetime(),
        unit="interactions",
        entities=len(relevant),
        entity_unit="users",
    )
    return RecsysHoldout(relevant, sorted(relevant), int(interactions["item_id"].nunique()), holdout)


def recsys_metrics(model: Any, data: RecsysHoldout, ks: tuple[int, ...] = (10,)) -> dict[str, float]:
    """Ask a registered pyfunc for the holdout users' top-k and score the lists with the shared ranking metrics."""
    from pipelines.platform.ranking import evaluate_rankings

    depth = max(ks)
    recommended = model.predict(pd.DataFrame({"user_id": data.users, "k": [depth] * len(data.users)}))
    out: dict[str, float] = {}
    for k in sorted(set(ks)):
        report = evaluate_rankings(recommended, data.relevant, k, data.catalogue_size)
        for name in RECSYS_METRICS:
            out[f"{name}@{k}"] = float(getattr(report, name))
        out[f"coverage@{k}"] = float(report.coverage)
    return out


def _recsys_evaluator(
    settings: Settings, data: pd.DataFrame, holdout_frac: float, max_users: int | None, metric: str
) -> tuple[Holdout, Callable[[str], dict[str, float]]]:
    import mlflow.pyfunc

    prepared = recsys_holdout(data, holdout_frac, max_users, settings.seed)
    ks = tuple(sorted({10, int(metric.split("@")[1])}))

    def evaluate(version: str) -> dict[str, float]:
        return recsys_metrics(mlflow.pyfunc.load_model(f"models:/{RECSYS_MODEL}/{version}"), prepared, ks)

    return prepared.holdout, evaluate


# ---------------------------------------------------------------- the gate


def _leakage_warnings(name: str, versions: dict[str, str | None], holdout: Holdout) -> list[str]:
    from mlflow import MlflowClient

    warnings = []
    for role, version in versions.items():
        if version is None:
            continue
        tag = MlflowClient().get_model_version(name, version).tags.get(TRAIN_DATA_END_TAG)
        try:
            seen_until = pd.Timestamp(tag) if tag else None
        except ValueError:  # a tag written by hand; the check is advice, not a reason to fail
            continue
        if seen_until is not None and seen_until.tzinfo is None:
            seen_until = seen_until.tz_localize("UTC")
        if seen_until is not None and seen_until >= pd.Timestamp(holdout.start):
            warnings.append(
                f"the {role} v{version} was fit on data up to {tag}, after the holdout starts "
                f"({holdout.start.isoformat()}), so this is not an out-of-time comparison for it"
            )
    return warnings


def run_gate(
    settings: Settings,
    model: str,
    data: pd.DataFrame,
    metric: str | None = None,
    min_improvement: float | None = None,
    holdout_days: float | None = None,
    holdout_frac: float | None = None,
    max_users: int | None = 5_000,
    rebuild_features: bool = True,
) -> GateResult:
    """Compare `model@challenger` with `model@champion` on the same holdout cut from `data`."""
    name = resolve_model(model)
    metric = check_metric(name, metric)
    bar = settings.gate_min_improvement if min_improvement is None else min_improvement
    connect_mlflow(settings)
    require_model(name)
    challenger = alias_version(name, CHALLENGER)
    design = next(key for key, value in DESIGNS.items() if value == name)
    if challenger is None:
        raise GateError(
            f"{name} has no challenger to compare; register one with `mlsd {design} train --alias challenger`."
        )
    champion = alias_version(name, CHAMPION)
    if champion == challenger:
        raise GateError(f"{name} v{challenger} is already the champion, so there is nothing to compare.")
    if name == FRAUD_MODEL:
        days = settings.gate_holdout_days if holdout_days is None else holdout_days
        holdout, evaluate = _fraud_evaluator(settings, data, days, rebuild_features)
    else:
        frac = settings.gate_holdout_frac if holdout_frac is None else holdout_frac
        holdout, evaluate = _recsys_evaluator(settings, data, frac, max_users, metric)
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
        warnings=tuple(_leakage_warnings(name, {"champion": champion, "challenger": challenger}, holdout)),
    )


@dataclass(frozen=True)
class PromotionOutcome:
    promoted: bool
    record: AuditRecord
    gate: GateResult | None


def promote(
    settings: Settings,
    model: str,
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
    name = resolve_model(model)
    connect_mlflow(settings)
    require_model(name)
    if force:
        challenger = alias_version(name, CHALLENGER)
        if challenger is None:
            design = next(key for key, value in DESIGNS.items() if value == name)
            raise GateError(
                f"{name} has no challenger to promote; register one with `mlsd {design} train --alias challenger`."
            )
        text = f"forced: {reason}" if reason else "forced"
        record = promote_version(name, challenger, text, command=command, details={"gate": "skipped (--force)"})
        return PromotionOutcome(True, record, None)
    if gate is not None:
        result = gate()
    elif data is not None:
        result = run_gate(
            settings, name, data, metric, min_improvement, holdout_days, holdout_frac, max_users=max_users
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


def read_gate_data(settings: Settings, model: str, path: Path) -> pd.DataFrame:
    """Read and validate the gate's data file with the design's own reader."""
    name = resolve_model(model)
    if name == FRAUD_MODEL:
        from pipelines.fraud.data import read_transactions

        return read_transactions(Path(path), settings.fraud_label_delay_days)
    from pipelines.recsys.data import read_interactions

    return read_interactions(Path(path))
