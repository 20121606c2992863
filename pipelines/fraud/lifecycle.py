"""The fraud design in the model lifecycle: the promotion gate's holdout and metrics, the retraining loop's data.

The generic gate and loop live in pipelines/monitoring (gate.py, retrain.py); they reach this module through the
Design contract (pipelines/fraud/design.py).

- **Holdout**: the last `holdout_days` of transactions whose labels are final (the newest `label_delay_days` of the
  file are left out: their chargebacks may not have arrived), with point-in-time features from Feast exactly as
  training retrieves them. By default the file is backfilled into a scratch Feast repo, so the gate never rewrites
  the stores that serving reads.
- **Fresh data**: the history file plus every transaction on `fraud.transactions`, labelled with the chargebacks
  on `fraud.labels` that had arrived by the alert's stream time.
- **Challenger**: the champion's imbalance strategy fit on the last `retrain_fraud_days` before the gate's
  holdout (so the gate compares both models out of time), features backfilled into a scratch Feast repo.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.fraud.model import MODEL_NAME, load_fraud_version
from pipelines.platform.design import Challenger, Evaluate, GateError, GateOptions, Holdout, RetrainInputs
from pipelines.settings import Settings

METRICS = ("average_precision", "roc_auc", "card_precision_at_100")
# Fraud features look back 30 days: the gate's holdout needs that much history before it to be built.
FEATURE_LOOKBACK = pd.Timedelta(days=31)


def check_metric(metric: str) -> str:
    metric = "card_precision_at_100" if metric == "card_precision_at_k" else metric
    if metric not in METRICS:
        raise GateError(f"'{metric}' is not a fraud gate metric; use one of {', '.join(METRICS)}.")
    return metric


# ---------------------------------------------------------------- the gate's holdout


@dataclass
class FraudHoldout:
    frame: pd.DataFrame  # transactions with their point-in-time feature columns
    labels: np.ndarray
    holdout: Holdout


def holdout_bounds(times: pd.Series, label_delay_days: float, holdout_days: float) -> tuple[pd.Timestamp, pd.Timestamp]:
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
    from feature_repo.fraud import fraud_feature_objects
    from pipelines.fraud.train import backfill_feature_store, training_frame
    from pipelines.platform.features import apply_feature_definitions, scratch_feature_settings

    if holdout_days <= 0:
        raise GateError(f"--holdout-days must be more than 0, got {holdout_days}.")
    if transactions.empty:
        raise GateError("the transactions file is empty, so there is nothing to compare the models on.")
    times = pd.to_datetime(transactions["timestamp"], utc=True)
    as_of = times.max()
    start, final_until = holdout_bounds(times, settings.fraud_label_delay_days, holdout_days)
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
            store = apply_feature_definitions(scratch, [fraud_feature_objects])
            backfill_feature_store(scratch, transactions[(times <= final_until).to_numpy()], store)
            frame = training_frame(store, rows)
    else:
        frame = training_frame(apply_feature_definitions(settings, [fraud_feature_objects]), rows)
    holdout = Holdout(
        rows=len(rows),
        start=times[window].min().to_pydatetime(),
        end=times[window].max().to_pydatetime(),
        unit="transactions",
        entities=int(rows["customer_id"].nunique()),
        entity_unit="cards",
    )
    return FraudHoldout(frame=frame, labels=labels, holdout=holdout)


def holdout_metrics(settings: Settings, version: str, data: FraudHoldout) -> dict[str, float]:
    """The training metrics of one registered version on the holdout, plus precision and recall at its threshold."""
    from pipelines.fraud.features import model_matrix
    from pipelines.fraud.modeling import precision_recall_at
    from pipelines.fraud.train import evaluate_scores

    loaded = load_fraud_version(version)
    scores = loaded.scores(model_matrix(data.frame))
    metrics, _ = evaluate_scores(
        data.frame, data.labels, scores, settings.fraud_cost_missed_fraud, settings.fraud_cost_false_alarm
    )
    out = {name: float(metrics[name]) for name in METRICS}
    at_own = precision_recall_at(data.labels, scores, loaded.threshold)
    out["precision_at_threshold"] = at_own["precision"]
    out["recall_at_threshold"] = at_own["recall"]
    return out


def prepare_gate(settings: Settings, data: pd.DataFrame, options: GateOptions) -> tuple[Holdout, Evaluate]:
    days = settings.gate_holdout_days if options.holdout_days is None else options.holdout_days
    prepared = fraud_holdout(settings, data, days, options.rebuild_features)
    return prepared.holdout, lambda version: holdout_metrics(settings, version, prepared)


# ---------------------------------------------------------------- the retraining loop


def _until(frame: pd.DataFrame, column: str, as_of: datetime | None) -> pd.DataFrame:
    if as_of is None or frame.empty:
        return frame
    return frame[(pd.to_datetime(frame[column], utc=True) <= pd.Timestamp(as_of)).to_numpy()]


def fresh_data(settings: Settings, inputs: RetrainInputs, as_of: datetime | None = None) -> pd.DataFrame:
    """Transactions in the history file and on `fraud.transactions`, labelled with the chargebacks known then.

    `as_of` (the alert's stream time) keeps what happened later out, so a replayed stream retrains on what a live
    one would have had at that moment.
    """
    from pipelines.fraud.events import LABELS_TOPIC, TRANSACTIONS_TOPIC, LabelEvent, TransactionEvent
    from pipelines.platform.errors import InvalidInput
    from pipelines.platform.stream import read_topic

    transactions, _ = read_topic(settings, TRANSACTIONS_TOPIC, TransactionEvent)
    labels, _ = read_topic(settings, LABELS_TOPIC, LabelEvent)
    streamed = pd.DataFrame(
        [t.model_dump() for t in transactions],
        columns=["transaction_id", "timestamp", "customer_id", "terminal_id", "amount"],
    )
    streamed["timestamp"] = pd.to_datetime(streamed["timestamp"], utc=True)
    streamed = _until(streamed, "timestamp", as_of)
    cutoff = pd.Timestamp(as_of) if as_of is not None else None
    chargebacks = {
        label.transaction_id: label.label_timestamp
        for label in labels
        if label.is_fraud == 1 and (cutoff is None or label.label_timestamp <= cutoff)
    }
    streamed["is_fraud"] = streamed["transaction_id"].map(lambda t: int(t in chargebacks)).astype(int)
    # No chargeback yet: genuine as far as anyone knows; training treats it as known only after the delay.
    streamed["label_timestamp"] = pd.to_datetime(streamed["transaction_id"].map(chargebacks), utc=True).fillna(
        streamed["timestamp"] + pd.Timedelta(days=settings.fraud_label_delay_days)
    )
    history = inputs.history
    history_part = _until(history, "timestamp", as_of) if history is not None else None
    frames = [f for f in (history_part, streamed) if f is not None and len(f)]
    if not frames:
        raise InvalidInput("There are no transactions to retrain on: pass --history or replay transactions first.")
    combined = pd.concat(frames, ignore_index=True)
    combined = combined.drop_duplicates("transaction_id", keep="first")  # the history's final labels win
    return combined.sort_values(["timestamp", "transaction_id"], kind="stable").reset_index(drop=True)


def span(frame: pd.DataFrame) -> str:
    times = pd.to_datetime(frame["timestamp"], utc=True)
    return f"{times.min():%Y-%m-%d %H:%M} → {times.max():%Y-%m-%d %H:%M}" if len(frame) else "empty"


def fit_challenger(settings: Settings, data: pd.DataFrame, _inputs: RetrainInputs) -> Challenger:
    """The champion's strategy fit on the days before the gate's holdout, registered as challenger."""
    from pipelines.fraud.train import train_fraud
    from pipelines.platform.features import scratch_feature_settings
    from pipelines.platform.registry import CHALLENGER, CHAMPION, alias_version, version_tags

    times = pd.to_datetime(data["timestamp"], utc=True)
    holdout_start, _ = holdout_bounds(times, settings.fraud_label_delay_days, settings.gate_holdout_days)
    fit_from = holdout_start - pd.Timedelta(days=settings.retrain_fraud_days)
    train_rows = data[((times > fit_from) & (times <= holdout_start)).to_numpy()].reset_index(drop=True)
    gate_rows = data[(times > holdout_start - FEATURE_LOOKBACK).to_numpy()].reset_index(drop=True)
    champion = alias_version(MODEL_NAME, CHAMPION)
    strategy = version_tags(MODEL_NAME, champion).get("strategy") if champion else None
    strategies = (strategy,) if strategy else ("smote",)
    with tempfile.TemporaryDirectory(prefix="mlsd-retrain-") as scratch_home:
        scratch = scratch_feature_settings(settings, Path(scratch_home))
        version = train_fraud(scratch, train_rows, strategies=strategies, alias=CHALLENGER).model_version
    return Challenger(
        version, gate_rows, {"train_rows": len(train_rows), "train_span": span(train_rows), "strategy": strategies[0]}
    )


def read_data(settings: Settings, path: Path) -> pd.DataFrame:
    """A transactions file, validated (the gate's data and the retraining loop's history)."""
    from pipelines.fraud.data import read_transactions

    return read_transactions(path, settings.fraud_label_delay_days)
