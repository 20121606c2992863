"""The retraining loop: an alert on `monitoring.alerts` → one retrain per incident → challenger → gate → decision.

`mlsd retrain --design NAME --history PATH` follows the alerts the monitor publishes. For each alert:

1. **Judge it** (`judge_alert`, pure). Data-quality alerts never retrain: a broken feed is fixed upstream, and a
   model refit on it would learn the breakage. An alert whose event time falls within `retrain_cooldown_hours` of
   the alert that opened the last retrain joins that incident (this is the dedupe: the windows after a shift all
   drift, and a monitor re-run re-publishes old alerts; both land here). An alert about a version that is no
   longer the champion is stale. The last retrain is read back from the audit trail, so a restarted loop keeps
   its cooldown.
2. **Fresh data**: the history file plus everything the design's input topics carried, with labels as known at the
   alert's stream time (the design's `RetrainSpec.fresh_data`, pipelines/<design>/lifecycle.py).
3. **Retrain** on the rows before the gate's holdout, so that the gate compares both models out of time; the new
   version is registered as `challenger` (`RetrainSpec.fit_challenger`: fraud keeps the champion's imbalance
   strategy and backfills features into a scratch Feast repo, never the live stores).
4. **Gate** (`pipelines/monitoring/gate.py`): both models on the same recent holdout; promote or record a rejection.

Every step is in the registry audit (`mlsd registry history`): `retrain` (the incident, its alert and the data),
`register` (the challenger), then `promote` or `reject` with the gate's numbers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd

from pipelines.designs import find_design as resolve_design
from pipelines.monitoring.alerts import ALERT_KINDS, Alert
from pipelines.monitoring.gate import promote, run_gate
from pipelines.platform.design import Design, RetrainInputs
from pipelines.platform.errors import InvalidInput, UserError
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

Verdict = Literal["retrain", "join", "ignore"]


@dataclass(frozen=True)
class RetrainPolicy:
    triggers: frozenset[str]
    cooldown: pd.Timedelta

    @classmethod
    def from_settings(cls, settings: Settings) -> RetrainPolicy:
        unknown = sorted(set(settings.retrain_triggers) - set(ALERT_KINDS))
        if unknown:
            raise InvalidInput(
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


def retrain_for(
    settings: Settings,
    design: Design | str,
    alert: Alert,
    inputs: RetrainInputs,
    command: str | None = None,
) -> RetrainResult:
    """Audit the incident, fit and register a challenger on fresh data, gate it and promote or reject it.

    A failure a user can fix (no usable data, a holdout with one class, ...) is recorded in the audit and returned,
    never raised: the loop keeps following alerts.
    """
    design = resolve_design(design)
    name = design.model_name
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
        data = design.retrain.fresh_data(settings, inputs, alert_time(alert))
        result.seconds["data"] = time.perf_counter() - clock
        result.data = {"rows": len(data), "span": _span(data)}
        audit(
            f"incident {incident}: {alert.message}",
            {"trigger": alert.kind, "window": str(alert.window), "alert_model_version": str(alert.model_version)},
            {"fresh_rows": float(len(data))},
        )
        clock = time.perf_counter()
        challenger = design.retrain.fit_challenger(settings, data, inputs)
        result.challenger_version = challenger.version
        result.data.update(challenger.data)
        result.seconds["train"] = time.perf_counter() - clock
        clock = time.perf_counter()
        gate = run_gate(settings, design, challenger.gate_rows)
        result.seconds["gate"] = time.perf_counter() - clock
        outcome = promote(
            settings,
            design,
            gate=lambda: gate,
            reason=f"incident {incident} ({alert.kind}): {gate.reason}",
            command=command,
        )
        result.promoted = outcome.promoted
        result.decision = gate.reason
        result.gate = gate.to_dict()
    except (UserError, OSError) as exc:  # GateError, DataFileError, RegistryError and friends: one sentence each
        result.failed = True
        result.decision = f"retrain failed: {exc}"
        audit(f"incident {incident}: {result.decision}", {"failed": "true"})
    except Exception as exc:  # a bug: its traceback goes to the log, and the loop keeps following alerts
        log.exception("retrain for incident %s failed", incident)
        result.failed = True
        result.decision = f"retrain failed unexpectedly ({type(exc).__name__}: {exc}); see the loop's log"
        audit(f"incident {incident}: {result.decision}", {"failed": "true"})
    result.seconds["total"] = time.perf_counter() - started
    result.incident_to_decision_s = (datetime.now(UTC) - alert.detected_at).total_seconds()
    return result


def _span(frame: pd.DataFrame) -> str:
    times = pd.to_datetime(frame["timestamp"], utc=True)
    return f"{times.min():%Y-%m-%d %H:%M} → {times.max():%Y-%m-%d %H:%M}" if len(frame) else "empty"


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
        design: Design | str,
        inputs: RetrainInputs,
        on_handled: Callable[[HandledAlert], None] | None = None,
        command: str | None = None,
        metrics: RetrainMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.design = design = resolve_design(design)
        self.model = design.model_name
        self.policy = RetrainPolicy.from_settings(settings)
        self.inputs = inputs
        self.on_handled = on_handled
        self.command = command
        self.run = RetrainRun(design.name)
        self.metrics = metrics
        self.broken_windows: set[int] = set()
        connect_mlflow(settings)
        self.last = last_retrain(self.model)
        self.out_path = settings.reports_dir / "monitoring" / design.name / "retrain.jsonl"
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
            handled.result = retrain_for(self.settings, self.design, alert, self.inputs, self.command)
        self.run.handled.append(handled)
        with self.out_path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(handled.to_dict(), default=str) + "\n")
        if self.metrics:
            self.metrics.handled(handled, self.design.name)
        if self.on_handled:
            self.on_handled(handled)
        return handled


def run_retrain_loop(
    settings: Settings,
    design: Design | str,
    inputs: RetrainInputs | None = None,
    once: bool = False,
    idle_timeout: float | None = None,
    from_beginning: bool = False,
    since: datetime | None = None,
    on_handled: Callable[[HandledAlert], None] | None = None,
    kinds: Sequence[str] | None = None,
    stop: threading.Event | None = None,
    metrics_port: int | None = None,
) -> RetrainRun:
    """Follow `monitoring.alerts` for `design` and act on each alert (`inputs`: the user's history and catalogue).

    Stops on Ctrl-C, after `idle_timeout` seconds without alerts, at the first retrain's decision (`once`), or
    once `stop` is set and the topic is drained. Reads new alerts by default; `from_beginning` replays the topic
    (the cooldown read from the audit keeps old incidents from retraining again).
    """
    design = resolve_design(design)
    from pipelines.platform.registry import current_command
    from pipelines.platform.stream import (
        DLQ_SUFFIX,
        dead_letter,
        decode,
        ensure_topics,
        make_consumer,
        make_producer,
        place_consumer,
    )

    ensure_topics(settings, [ALERTS_TOPIC, ALERTS_TOPIC + DLQ_SUFFIX])
    metrics = RetrainMetrics()
    loop = RetrainLoop(settings, design, inputs or RetrainInputs(), on_handled, current_command(), metrics)
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
                        if alert.design != design.name or (kinds and alert.kind not in kinds):
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
