"""The retraining loop: an alert on `monitoring.alerts` → one retrain per incident → challenger → gate → decision.

`mlsd retrain --design fraud|recsys --history PATH` follows the alerts the monitor publishes. For each alert:

1. **Judge it** (`judge_alert`, pure). Data-quality alerts never retrain: a broken feed is fixed upstream, and a
   model refit on it would learn the breakage. An alert whose event time falls within `retrain_cooldown_hours` of
   the alert that opened the last retrain joins that incident (this is the dedupe: the windows after a shift all
   drift, and a monitor re-run re-publishes old alerts; both land here). An alert about a version that is no
   longer the champion is stale. The last retrain is read back from the audit trail, so a restarted loop keeps
   its cooldown.
2. **Fresh data**: the history file plus everything the design's input topics carried, with labels as known now
   (fraud: transactions and the chargebacks that have arrived; recsys: interactions).
3. **Retrain** on the rows before the gate's holdout, so that the gate compares both models out of time; the new
   version is registered as `challenger` (fraud keeps the champion's imbalance strategy, fit on the last
   `retrain_fraud_days`; features are backfilled into a scratch Feast repo, never the live stores).
4. **Gate** (`pipelines/monitoring/gate.py`): both models on the same recent holdout; promote or record a rejection.

Every step is in the registry audit (`mlsd registry history`): `retrain` (the incident, its alert and the data),
`register` (the challenger), then `promote` or `reject` with the gate's numbers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from pipelines.monitoring.gate import DESIGNS, FRAUD_MODEL, GateResult, fraud_holdout_bounds, promote, run_gate
from pipelines.monitoring.monitor import ALERT_KINDS, Alert, place_consumer
from pipelines.platform.predictions import ALERTS_TOPIC
from pipelines.platform.registry import (
    CHALLENGER,
    CHAMPION,
    alias_version,
    connect_mlflow,
    history,
    record_change,
)
from pipelines.settings import Settings

log = logging.getLogger(__name__)

NEVER_TRIGGERS = ("data_quality",)
# Fraud features look back 30 days: the gate's holdout needs that much history before it to be built.
FRAUD_FEATURE_LOOKBACK = pd.Timedelta(days=31)

Verdict = Literal["retrain", "join", "ignore"]


@dataclass(frozen=True)
class RetrainPolicy:
    triggers: frozenset[str]
    cooldown: pd.Timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> RetrainPolicy:
        unknown = sorted(set(settings.retrain_triggers) - set(ALERT_KINDS))
        if unknown:
            raise ValueError(
                f"MLSD_RETRAIN_TRIGGERS names unknown alert kind(s) {', '.join(unknown)}; "
                f"use some of {', '.join(ALERT_KINDS)}."
            )
        return cls(
            frozenset(settings.retrain_triggers) - set(NEVER_TRIGGERS),
            pd.Timedelta(hours=settings.retrain_cooldown_hours),
        )


@dataclass(frozen=True)
class LastRetrain:
    """The retrain that opened the current incident, as the audit trail remembers it."""

    incident: str
    event_time: datetime  # of the alert that opened it: the stream's clock, so replays behave like live traffic
    at: datetime  # wall clock


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str


def alert_time(alert: Alert) -> datetime:
    """Where the alert sits on the stream's clock: the end of its window (or when it was raised)."""
    return alert.event_time_end or alert.event_time_start or alert.detected_at


def incident_id(alert: Alert) -> str:
    return f"{alert.design}-{alert_time(alert):%Y%m%dT%H%M%S}-w{alert.window}"


def judge_alert(
    policy: RetrainPolicy,
    alert: Alert,
    last: LastRetrain | None,
    champion: str | None,
    broken_windows: frozenset[int] = frozenset(),
) -> Judgement:
    """Whether this alert opens an incident (retrain), belongs to the open one (join) or is ignored, and why.

    `broken_windows`: windows of this design that failed data-quality checks: whatever else they raise (drift, a
    decay or a fraud rate judged up to them) is measured on the broken feed's records.
    """
    if alert.kind in NEVER_TRIGGERS:
        return Judgement(
            "ignore",
            f"{alert.kind} alerts do not retrain: fix the feed upstream (a model refit on broken data learns the "
            "breakage).",
        )
    if alert.window in broken_windows:
        return Judgement(
            "ignore",
            f"window {alert.window} also failed data-quality checks, so its {alert.kind.replace('_', ' ')} is "
            "measured on the broken feed's records; no retrain until the feed is fixed.",
        )
    if alert.kind not in policy.triggers:
        return Judgement("ignore", f"{alert.kind} is not among MLSD_RETRAIN_TRIGGERS.")
    if last is not None and alert_time(alert) <= last.event_time + policy.cooldown:
        return Judgement(
            "join",
            f"within the {policy.cooldown} cooldown of incident {last.incident}, which already retrained.",
        )
    if champion is not None and alert.model_version not in (None, champion):
        return Judgement("ignore", f"about v{alert.model_version}, which is no longer the champion (v{champion}).")
    return Judgement("retrain", f"{alert.kind} in window {alert.window}: {alert.message}")


def last_retrain(model: str) -> LastRetrain | None:
    """The newest `retrain` record of `model` in the audit trail."""
    for record in history(model, limit=200, alias=CHALLENGER):
        if record.action == "retrain" and record.details.get("event_time"):
            return LastRetrain(
                record.details.get("incident", record.run_id),
                datetime.fromisoformat(record.details["event_time"]),
                record.at,
            )
    return None


# ----------------------------------------------------------------------------------------------------------
# Fresh data: the history file plus what the stream carried since


def _until(frame: pd.DataFrame, column: str, as_of: datetime | None) -> pd.DataFrame:
    if as_of is None or frame.empty:
        return frame
    return frame[(pd.to_datetime(frame[column], utc=True) <= pd.Timestamp(as_of)).to_numpy()]


def fraud_fresh_data(
    settings: Settings, history_frame: pd.DataFrame | None, as_of: datetime | None = None
) -> pd.DataFrame:
    """Transactions in the history file and on `fraud.transactions`, labelled with the chargebacks known then.

    `as_of` (the alert's stream time) keeps what happened later out, so a replayed stream retrains on what a live
    one would have had at that moment.
    """
    from pipelines.fraud.events import LABELS_TOPIC, TRANSACTIONS_TOPIC, LabelEvent, TransactionEvent
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
    history_part = _until(history_frame, "timestamp", as_of) if history_frame is not None else None
    frames = [f for f in (history_part, streamed) if f is not None and len(f)]
    if not frames:
        raise ValueError("There are no transactions to retrain on: pass --history or replay transactions first.")
    combined = pd.concat(frames, ignore_index=True)
    combined = combined.drop_duplicates("transaction_id", keep="first")  # the history's final labels win
    return combined.sort_values(["timestamp", "transaction_id"], kind="stable").reset_index(drop=True)


def recsys_fresh_data(
    settings: Settings, history_frame: pd.DataFrame | None, as_of: datetime | None = None
) -> pd.DataFrame:
    """Interactions in the history file and on `recsys.interactions` (up to `as_of`, as for fraud)."""
    from pipelines.platform.stream import read_topic
    from pipelines.recsys.events import INTERACTIONS_TOPIC, InteractionEvent

    events, _ = read_topic(settings, INTERACTIONS_TOPIC, InteractionEvent)
    streamed = pd.DataFrame(
        [e.model_dump() for e in events], columns=["user_id", "item_id", "timestamp", "event_type", "weight"]
    )
    streamed["timestamp"] = pd.to_datetime(streamed["timestamp"], utc=True)
    streamed = _until(streamed, "timestamp", as_of)
    history_part = _until(history_frame, "timestamp", as_of) if history_frame is not None else None
    frames = [f for f in (history_part, streamed) if f is not None and len(f)]
    if not frames:
        raise ValueError("There are no interactions to retrain on: pass --history or replay interactions first.")
    combined = pd.concat(frames, ignore_index=True)
    combined = combined.drop_duplicates(["user_id", "item_id", "timestamp"], keep="first")
    return combined.sort_values("timestamp", kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------------------
# One retrain


@dataclass
class RetrainResult:
    design: str
    incident: str
    trigger: str
    challenger_version: str | None = None
    promoted: bool = False
    decision: str = ""  # the gate's sentence, or why the retrain failed
    gate: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    # From the moment the monitor raised the alert to the promote/reject record.
    incident_to_decision_s: float | None = None
    failed: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _span(frame: pd.DataFrame) -> str:
    times = pd.to_datetime(frame["timestamp"], utc=True)
    return f"{times.min():%Y-%m-%d %H:%M} → {times.max():%Y-%m-%d %H:%M}" if len(frame) else "empty"


def retrain_fraud(settings: Settings, data: pd.DataFrame, result: RetrainResult) -> GateResult:
    from pipelines.fraud.train import train_fraud
    from pipelines.platform.drift import version_tags
    from pipelines.platform.features import scratch_feature_settings

    times = pd.to_datetime(data["timestamp"], utc=True)
    holdout_start, _ = fraud_holdout_bounds(times, settings.fraud_label_delay_days, settings.gate_holdout_days)
    fit_from = holdout_start - pd.Timedelta(days=settings.retrain_fraud_days)
    train_rows = data[((times > fit_from) & (times <= holdout_start)).to_numpy()].reset_index(drop=True)
    gate_rows = data[(times > holdout_start - FRAUD_FEATURE_LOOKBACK).to_numpy()].reset_index(drop=True)
    champion = alias_version(FRAUD_MODEL, CHAMPION)
    strategy = version_tags(settings, FRAUD_MODEL, champion).get("strategy") if champion else None
    strategies = (strategy,) if strategy else ("smote",)
    result.data.update({"train_rows": len(train_rows), "train_span": _span(train_rows), "strategy": strategies[0]})

    def fit() -> str:
        with tempfile.TemporaryDirectory(prefix="mlsd-retrain-") as scratch_home:
            scratch = scratch_feature_settings(settings, Path(scratch_home))
            return train_fraud(scratch, train_rows, strategies=strategies, alias=CHALLENGER).model_version

    return _fit_and_gate(settings, FRAUD_MODEL, fit, gate_rows, result)


def _fit_and_gate(
    settings: Settings, model: str, fit: Callable[[], str], gate_rows: pd.DataFrame, result: RetrainResult
) -> GateResult:
    """Register the challenger `fit` returns, then score it against the champion on `gate_rows`; both timed."""
    clock = time.perf_counter()
    result.challenger_version = fit()
    result.seconds["train"] = time.perf_counter() - clock
    clock = time.perf_counter()
    gate = run_gate(settings, model, gate_rows)
    result.seconds["gate"] = time.perf_counter() - clock
    return gate


def retrain_recsys(
    settings: Settings, data: pd.DataFrame, items: pd.DataFrame | None, result: RetrainResult
) -> GateResult:
    from pipelines.monitoring.gate import RECSYS_MODEL
    from pipelines.recsys.splits import split_interactions
    from pipelines.recsys.train import train_recsys

    # The gate holds out the newest share of interactions; the challenger is fit on the rest.
    train_rows, _ = split_interactions(data, "temporal", settings.gate_holdout_frac, settings.seed)
    result.data.update({"train_rows": len(train_rows), "train_span": _span(train_rows)})
    return _fit_and_gate(
        settings,
        RECSYS_MODEL,
        lambda: train_recsys(settings, train_rows, items, alias=CHALLENGER).model_version,
        data,
        result,
    )


def retrain_for(
    settings: Settings,
    alert: Alert,
    history_frame: pd.DataFrame | None,
    items: pd.DataFrame | None = None,
    command: str | None = None,
) -> RetrainResult:
    """Audit the incident, fit and register a challenger on fresh data, gate it and promote or reject it.

    A failure (no usable data, a holdout with one class, ...) is recorded in the audit and returned, never raised:
    the loop keeps following alerts.
    """
    name = DESIGNS[alert.design]
    started = time.perf_counter()
    connect_mlflow(settings)
    incident = incident_id(alert)
    result = RetrainResult(design=alert.design, incident=incident, trigger=alert.kind)

    def audit(reason: str, details: dict[str, Any] | None = None, metrics: dict[str, float] | None = None) -> None:
        record_change(
            name,
            CHALLENGER,
            "retrain",
            alias_version(name, CHALLENGER),
            result.challenger_version,
            reason,
            metrics=metrics,
            details={"incident": incident, "event_time": alert_time(alert).isoformat(), **(details or {})},
            command=command,
        )

    try:
        clock = time.perf_counter()
        if alert.design == "fraud":
            data = fraud_fresh_data(settings, history_frame, alert_time(alert))
        else:
            data = recsys_fresh_data(settings, history_frame, alert_time(alert))
        result.seconds["data"] = time.perf_counter() - clock
        result.data = {"rows": len(data), "span": _span(data)}
        audit(
            f"incident {incident}: {alert.message}",
            {"trigger": alert.kind, "window": str(alert.window), "alert_model_version": str(alert.model_version)},
            {"fresh_rows": float(len(data))},
        )
        if alert.design == "fraud":
            gate = retrain_fraud(settings, data, result)
        else:
            gate = retrain_recsys(settings, data, items, result)
        outcome = promote(
            settings,
            name,
            gate=lambda: gate,
            reason=f"incident {incident} ({alert.kind}): {gate.reason}",
            command=command,
        )
        result.promoted = outcome.promoted
        result.decision = gate.reason
        result.gate = gate.to_dict()
    except (ValueError, OSError) as exc:  # GateError, DataFileError, RegistryError and friends: one sentence each
        result.failed = True
        result.decision = f"retrain failed: {exc}"
        audit(f"incident {incident}: {result.decision}", {"failed": "true"})
    result.seconds["total"] = time.perf_counter() - started
    result.incident_to_decision_s = (datetime.now(UTC) - alert.detected_at).total_seconds()
    return result


# ----------------------------------------------------------------------------------------------------------
# The loop


@dataclass
class HandledAlert:
    alert: dict[str, Any]
    verdict: Verdict
    reason: str
    result: RetrainResult | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"alert": self.alert, "verdict": self.verdict, "reason": self.reason}
        if self.result is not None:
            out["result"] = self.result.to_dict()
        return out


@dataclass
class RetrainRun:
    design: str
    handled: list[HandledAlert] = field(default_factory=list)
    invalid_alerts: int = 0

    @property
    def retrains(self) -> list[RetrainResult]:
        return [h.result for h in self.handled if h.result is not None]

    def counts(self) -> dict[str, int]:
        out = {"retrain": 0, "join": 0, "ignore": 0}
        for h in self.handled:
            out[h.verdict] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "design": self.design,
            "counts": self.counts(),
            "invalid_alerts": self.invalid_alerts,
            "handled": [h.to_dict() for h in self.handled],
        }


class RetrainMetrics:
    """The loop's Prometheus series in their own registry (several loops can live in one test process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.alerts = Counter(
            "mlsd_retrain_alerts", "Alerts the retraining loop judged", ["design", "verdict"], registry=self.registry
        )
        self.retrains = Counter(
            "mlsd_retrains",
            "Retrains by outcome (promoted, rejected, failed)",
            ["design", "outcome"],
            registry=self.registry,
        )
        self.seconds = Gauge(
            "mlsd_retrain_last_seconds",
            "The last retrain, from the alert to the decision",
            ["design"],
            registry=self.registry,
        )

    def handled(self, handled: HandledAlert, design: str) -> None:
        self.alerts.labels(design, handled.verdict).inc()
        result = handled.result
        if result is not None:
            outcome = "failed" if result.failed else ("promoted" if result.promoted else "rejected")
            self.retrains.labels(design, outcome).inc()
            self.seconds.labels(design).set(result.seconds.get("total", 0.0))


class RetrainLoop:
    """Judges and acts on one alert at a time; `handle` is what the Kafka loop and the scenarios call."""

    def __init__(
        self,
        settings: Settings,
        design: str,
        history_frame: pd.DataFrame | None,
        items: pd.DataFrame | None = None,
        on_handled: Callable[[HandledAlert], None] | None = None,
        command: str | None = None,
        metrics: RetrainMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.design = design
        self.model = DESIGNS[design]
        self.policy = RetrainPolicy.from_settings(settings)
        self.history_frame = history_frame
        self.items = items
        self.on_handled = on_handled
        self.command = command
        self.run = RetrainRun(design)
        self.metrics = metrics
        self.broken_windows: set[int] = set()
        connect_mlflow(settings)
        self.last = last_retrain(self.model)
        self.out_path = settings.reports_dir / "monitoring" / design / "retrain.jsonl"
        self.out_path.parent.mkdir(parents=True, exist_ok=True)

    def handle(self, alert: Alert) -> HandledAlert:
        if alert.kind == "data_quality":  # published before the same window's drift alerts
            self.broken_windows.add(alert.window)
        judgement = judge_alert(
            self.policy, alert, self.last, alias_version(self.model, CHAMPION), frozenset(self.broken_windows)
        )
        handled = HandledAlert(alert.model_dump(mode="json"), judgement.verdict, judgement.reason)
        if judgement.verdict == "retrain":
            self.last = LastRetrain(incident_id(alert), alert_time(alert), datetime.now(UTC))
            handled.result = retrain_for(self.settings, alert, self.history_frame, self.items, self.command)
        self.run.handled.append(handled)
        with self.out_path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(handled.to_dict(), default=str) + "\n")
        if self.metrics:
            self.metrics.handled(handled, self.design)
        if self.on_handled:
            self.on_handled(handled)
        return handled


def run_retrain_loop(
    settings: Settings,
    design: str,
    history_frame: pd.DataFrame | None,
    items: pd.DataFrame | None = None,
    once: bool = False,
    idle_timeout: float | None = None,
    from_beginning: bool = False,
    since: datetime | None = None,
    on_handled: Callable[[HandledAlert], None] | None = None,
    kinds: Sequence[str] | None = None,
    stop: threading.Event | None = None,
    metrics_port: int | None = None,
) -> RetrainRun:
    """Follow `monitoring.alerts` for `design` and act on each alert.

    Stops on Ctrl-C, after `idle_timeout` seconds without alerts, at the first retrain's decision (`once`), or
    once `stop` is set and the topic is drained. Reads new alerts by default; `from_beginning` replays the topic
    (the cooldown read from the audit keeps old incidents from retraining again).
    """
    from pipelines.platform.registry import current_command
    from pipelines.platform.stream import (
        DLQ_SUFFIX,
        dead_letter,
        decode,
        ensure_topics,
        make_consumer,
        make_producer,
    )

    ensure_topics(settings, [ALERTS_TOPIC, ALERTS_TOPIC + DLQ_SUFFIX])
    metrics = RetrainMetrics()
    loop = RetrainLoop(settings, design, history_frame, items, on_handled, current_command(), metrics)
    with contextlib.ExitStack() as cleanup:
        if metrics_port:
            from pipelines.platform.metrics import start_metrics_server

            cleanup.callback(start_metrics_server(metrics_port, metrics.registry, settings.metrics_host).stop)
        consumer = make_consumer(settings, [ALERTS_TOPIC], group_id=None)  # type: ignore[arg-type]
        cleanup.callback(consumer.close)
        place_consumer(consumer, [ALERTS_TOPIC], from_beginning, since)
        producer = make_producer(settings)
        cleanup.callback(producer.close)
        last_seen = time.monotonic()
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                polled = consumer.poll(timeout_ms=500, max_records=500)
                for batch in polled.values():
                    for message in batch:
                        last_seen = time.monotonic()
                        try:
                            alert = decode(ALERTS_TOPIC, message.value, Alert)
                        except ValueError as exc:
                            loop.run.invalid_alerts += 1
                            dead_letter(producer, ALERTS_TOPIC, message.value, str(exc), message.offset)
                            continue
                        assert isinstance(alert, Alert)
                        if alert.design != design or (kinds and alert.kind not in kinds):
                            continue
                        handled = loop.handle(alert)
                        if once and handled.result is not None:
                            return loop.run
                if idle_timeout is not None and time.monotonic() - last_seen > idle_timeout:
                    break
                if stop is not None and stop.is_set() and not polled:  # asked to stop, and nothing left to read
                    break
        producer.flush()
    return loop.run
