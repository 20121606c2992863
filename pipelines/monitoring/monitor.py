"""The monitor: prediction logs in count-based windows → drift, data quality, delayed-label performance → reports,
alerts on `monitoring.alerts` and Prometheus gauges.

One loop serves every design; what differs comes from the design's `MonitorSpec` (pipelines/platform/design.py,
filled in by `pipelines/<design>/monitoring.py`). One window is judged by `evaluate_window`
(pipelines/monitoring/window.py); this module keeps the windows, the labels and the outputs.

Performance is reported for a window only once its labels are complete in event time: when the label stream's
watermark (the newest label time seen) passes the window's last event time plus the label delay. A single window
of 5,000 transactions holds about 40 frauds, too few for a stable average precision: on unchanged simulated traffic
it fell up to 46% below the reference's value in single windows, 34% over 4 pooled windows and 16% over 6
(benchmarks/drift_detection.py). So decay is judged on the last 6 matured windows pooled (30,000 transactions)
and means a drop of more than 30%.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import BaseModel

from pipelines.designs import find_design as resolve_design
from pipelines.monitoring.alerts import Alert
from pipelines.monitoring.metrics import MonitorMetrics
from pipelines.monitoring.window import (
    WindowResult,
    alert_for,
    decay_alert,
    evaluate_window,
    feature_frame,
    judge_performance,
    label_shift,
    model_versions,
    records_frame,
)
from pipelines.platform.design import Design, MonitorSpec
from pipelines.platform.drift import REFERENCE_LABEL, load_reference, write_json, write_report
from pipelines.platform.errors import InvalidInput
from pipelines.platform.predictions import ALERTS_TOPIC, PredictionRecord
from pipelines.platform.registry import version_tags
from pipelines.settings import Settings

if TYPE_CHECKING:
    from kafka import KafkaProducer

    from pipelines.platform.stream import Envelope


@dataclass
class _Pending:
    result: WindowResult
    frame: pd.DataFrame
    reference: pd.DataFrame


@dataclass
class MonitorRun:
    """What one run of the loop saw and produced."""

    design: str
    windows: list[WindowResult] = field(default_factory=list)
    served_records: int = 0
    shadow_records: int = 0
    degraded_records: int = 0  # served without features (a store was down): left out of the windows
    label_events: int = 0
    dead_lettered: int = 0
    alerts_published: int = 0
    label_watermark: datetime | None = None
    seconds: float = 0.0
    out_dir: str = ""

    @property
    def pending(self) -> list[int]:
        return [w.window for w in self.windows if w.performance is None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "design": self.design,
            "windows": len(self.windows),
            "served_records": self.served_records,
            "shadow_records": self.shadow_records,
            "degraded_records": self.degraded_records,
            "label_events": self.label_events,
            "dead_lettered": self.dead_lettered,
            "alerts_published": self.alerts_published,
            "label_watermark": self.label_watermark.isoformat() if self.label_watermark else None,
            "windows_awaiting_labels": self.pending,
            "seconds": round(self.seconds, 2),
            "reports": self.out_dir,
            "results": [w.to_dict() for w in self.windows],
        }


class _Finished(Exception):
    """Raised between batches once the run has what it was asked for."""


class Monitor:
    """Window state, label store and outputs of one design; `sink` is the platform loop's sink."""

    def __init__(
        self,
        settings: Settings,
        spec: MonitorSpec,
        window_size: int,
        producer: KafkaProducer | None = None,
        metrics: MonitorMetrics | None = None,
        max_windows: int | None = None,
        on_window: Callable[[WindowResult], None] | None = None,
        on_matured: Callable[[WindowResult], None] | None = None,
    ) -> None:
        if window_size < 2:
            raise InvalidInput(f"--window-size must be at least 2 records, got {window_size}.")
        self.settings = settings
        self.spec = spec
        self.window_size = window_size
        self.producer = producer
        self.metrics = metrics
        self.max_windows = max_windows
        self.on_window = on_window
        self.on_matured = on_matured
        self.out_dir = settings.reports_dir / "monitoring" / spec.design
        self.run = MonitorRun(spec.design, out_dir=str(self.out_dir))
        self.buffer: list[PredictionRecord] = []
        self.pending: list[_Pending] = []
        self.matured: list[_Pending] = []  # the last few, pooled for the decay decision
        self.labels: list[pd.DataFrame] = []
        self.label_frame = pd.DataFrame()
        self.watermark: pd.Timestamp | None = None
        self.references: dict[tuple[str, str], tuple[pd.DataFrame, str, dict[str, float]]] = {}
        self.baseline_from_windows: dict[str, float] | None = None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.summary_path = self.out_dir / "summary.jsonl"

    # -- inputs

    @property
    def done(self) -> bool:
        return self.max_windows is not None and len(self.run.windows) >= self.max_windows and not self.pending

    def sink(self, envelopes: list[Envelope]) -> None:
        label_events: list[BaseModel] = []
        for envelope in envelopes:
            event = envelope.event
            if isinstance(event, PredictionRecord):
                if event.design != self.spec.design:
                    continue
                if not event.served:
                    self.run.shadow_records += 1  # the challenger's silent answers stay out of drift
                    continue
                if event.degraded:
                    self.run.degraded_records += 1  # answered without features: nothing to judge drift on
                    continue
                self.run.served_records += 1
                if self.max_windows is None or len(self.run.windows) < self.max_windows:
                    self.buffer.append(event)
                    if len(self.buffer) >= self.window_size:
                        self._close(self.buffer[: self.window_size])
                        self.buffer = self.buffer[self.window_size :]
            else:
                label_events.append(event)
        if label_events:
            self._add_labels(label_events)
        self._mature()

    def _add_labels(self, events: list[BaseModel]) -> None:
        rows = self.spec.label_rows(events)
        self.run.label_events += len(rows)
        self.labels.append(rows)
        newest = pd.to_datetime(rows[self.spec.label_watermark_column], utc=True).max()
        if self.watermark is None or newest > self.watermark:
            self.watermark = newest
            self.run.label_watermark = newest.to_pydatetime()

    def _label_frame(self) -> pd.DataFrame:
        if self.labels:
            parts = [self.label_frame, *self.labels] if not self.label_frame.empty else self.labels
            self.label_frame = pd.concat(parts, ignore_index=True)
            self.labels = []
            self._prune_labels()
        return self.label_frame

    def _prune_labels(self) -> None:
        """Drop labels of events older than every window still waiting or filling (they can no longer count)."""
        starts = [p.result.start for p in self.pending if p.result.start is not None]
        if self.buffer:
            starts.append(min(r.timestamp for r in self.buffer))
        if not starts or self.label_frame.empty:
            return
        horizon = pd.Timestamp(min(starts)) - pd.Timedelta(days=1)
        self.label_frame = self.label_frame[pd.to_datetime(self.label_frame["timestamp"], utc=True) >= horizon]

    # -- references

    def _reference(self, frame: pd.DataFrame) -> tuple[pd.DataFrame, str, dict[str, float]]:
        """The reference of the window's (majority) model version, loaded once per version.

        Without a logged reference (recsys today) or a registry entry, the version's first window becomes its
        reference: later windows are then compared with how the model started out in production.
        """
        versions = model_versions(frame)
        version = max(versions, key=lambda v: versions[v])
        name = str(frame.loc[frame["model_version"].astype(str) == version, "model_name"].iloc[0])
        key = (name, version)
        if key not in self.references:
            baseline: dict[str, float] = {}
            try:
                reference = load_reference(self.settings, name, version)
                missing = "its training run logged no reference"
            except ValueError:
                reference, missing = None, "the registry has no such version"
            if reference is not None:
                tag = self.spec.baseline_tag
                tags = version_tags(name, version) if tag else {}
                if tag and tag in tags:  # the validation metric of the training run
                    baseline[self.spec.primary_metric] = float(tags[tag])
                source = f"{name} v{version} training reference ({len(reference):,} rows)"
            else:
                reference = feature_frame(frame).reset_index(drop=True)
                source = f"{name} v{version} window {len(self.run.windows) + 1} ({missing})"
            self.references[key] = (reference, source, baseline)
        return self.references[key]

    # -- windows

    def _close(self, records: list[PredictionRecord]) -> None:
        frame = records_frame(records)
        reference, source, registry_baseline = self._reference(frame)
        number = len(self.run.windows) + 1
        baseline = {**self.spec.baseline(reference, len(frame)), **registry_baseline}
        result = evaluate_window(self.spec, reference, frame, baseline=baseline, window=number, reference_name=source)
        html_path = self.out_dir / f"window-{number:05d}.html"
        result.html, result.json = str(html_path), str(html_path.with_suffix(".json"))
        reference_features = feature_frame(reference)
        write_report(
            reference_features,
            feature_frame(frame),
            self.spec.drift_config(reference_features),
            result.drift,
            html_path,
            result.to_dict(),
            title=f"{self.spec.design} window {number}",
            facts={
                "records": f"{result.rows:,} served predictions",
                "event time": f"{result.start} → {result.end}",
                "model version": ", ".join(f"v{v} ({n:,})" for v, n in result.model_versions.items()),
                "reference": result.reference,
                "performance": f"in {html_path.with_suffix('.json').name} once labels mature "
                f"({self.spec.label_delay} after the window's last event)",
            },
        )
        self.run.windows.append(result)
        self._publish(result.alerts)
        self._summary("window", result.to_dict())
        if self.metrics:
            self.metrics.window(result)
        self.pending.append(_Pending(result, frame, reference))
        if self.on_window:
            self.on_window(result)

    def _mature(self) -> None:
        if self.watermark is None or not self.pending:
            return
        ready = [
            p
            for p in self.pending
            if p.result.end is not None and pd.Timestamp(p.result.end) + self.spec.label_delay <= self.watermark
        ]
        if not ready:
            return
        labels = self._label_frame()
        for item in ready:
            self.pending.remove(item)
            self._report_performance(item, labels)

    def _report_performance(self, item: _Pending, labels: pd.DataFrame) -> None:
        spec, result, primary = self.spec, item.result, self.spec.primary_metric
        result.performance = spec.performance(item.frame, labels)
        self.matured = [*self.matured, item][-spec.performance_windows :]
        if len(self.matured) > 1:
            pooled = pd.concat([p.frame for p in self.matured], ignore_index=True)
            value = spec.performance(pooled, labels).get(primary)
        else:
            value = result.performance.get(primary)
        result.rolling = {primary: value} if value is not None else {}
        result.rolling_windows = len(self.matured)
        full_pool = len(self.matured) >= spec.performance_windows
        if primary not in result.baseline:
            if self.baseline_from_windows is None and full_pool and result.rolling:
                self.baseline_from_windows = dict(result.rolling)  # no training metric: the first full pool sets it
            result.baseline = {**result.baseline, **(self.baseline_from_windows or {})}
        result.performance_decay = full_pool and judge_performance(spec, result.rolling, result.baseline)
        recent, recent_frame, recent_metrics = self._fast_pool(item, labels)
        new_alerts: list[Alert] = []
        if result.performance_decay:
            new_alerts.append(decay_alert(spec, result, result.rolling, len(self.matured)))
        elif recent and judge_performance(spec, recent_metrics, result.baseline, spec.fast_max_drop):
            result.performance_decay = True
            new_alerts.append(decay_alert(spec, result, recent_metrics, len(recent), spec.fast_max_drop))
        shift = self._label_shift(result, recent_metrics, len(recent_frame), item.reference) if recent else None
        if shift is not None:
            new_alerts.append(shift)
        for alert in new_alerts:
            alert.stream_time = self.watermark.to_pydatetime() if self.watermark is not None else alert.stream_time
        result.alerts.extend(new_alerts)
        self._publish(new_alerts)
        if result.json:
            write_json(Path(result.json), result.to_dict())
        self._summary(
            "performance",
            {
                "design": spec.design,
                "window": result.window,
                "event_time_start": result.start.isoformat() if result.start else None,
                "event_time_end": result.end.isoformat() if result.end else None,
                "model_version": result.model_version,
                "performance": result.performance,
                "rolling_performance": result.rolling,
                "rolling_windows": result.rolling_windows,
                "baseline": result.baseline,
                "performance_decay": result.performance_decay,
                "label_watermark": self.watermark.isoformat() if self.watermark is not None else None,
            },
        )
        if self.metrics:
            self.metrics.matured(result)
        if self.on_matured:
            self.on_matured(result)

    def _fast_pool(self, item: _Pending, labels: pd.DataFrame) -> tuple[list[_Pending], pd.DataFrame, dict[str, float]]:
        """The newest matured windows, at least `fast_windows` of them and enough positives; ([], ...) if too few."""
        spec = self.spec
        for size in range(spec.fast_windows, len(self.matured) + 1):
            pool = self.matured[-size:]
            frame = pd.concat([p.frame for p in pool], ignore_index=True) if size > 1 else item.frame
            metrics = spec.performance(frame, labels) if size > 1 else dict(item.result.performance or {})
            if spec.positives_metric is None or metrics.get(spec.positives_metric, 0) >= spec.fast_min_positives:
                return pool, frame, metrics
        return [], item.frame, dict(item.result.performance or {})

    def _label_shift(
        self, result: WindowResult, metrics: dict[str, float], rows: int, reference: pd.DataFrame
    ) -> Alert | None:
        name, spec = self.spec.label_rate_metric, self.spec
        if name is None or name not in metrics or name not in result.baseline or REFERENCE_LABEL not in reference:
            return None
        rate, expected = metrics[name], result.baseline[name]
        shifted, change, z = label_shift(
            rate * rows, rows, expected, len(reference), spec.label_shift_ratio, spec.label_shift_z
        )
        result.performance = {**(result.performance or {}), f"{name}_ratio": change, f"{name}_z": z}
        if not shifted:
            return None
        return alert_for(
            result,
            "label_shift",
            {name: round(rate, 5), f"baseline_{name}": round(expected, 5), "z": round(z, 2)},
            {"ratio": spec.label_shift_ratio, "z": spec.label_shift_z},
            f"{result.design} {name} over the last matured window(s) "
            f"ending at window {result.window} is {rate:.4f}, {change:.2f}× the reference's {expected:.4f} "
            f"(z = {z:.1f}).",
        )

    # -- outputs

    def _publish(self, alerts: list[Alert]) -> None:
        if self.producer is None:
            return
        from pipelines.platform.stream import encode

        for alert in alerts:
            self.producer.send(ALERTS_TOPIC, encode(alert), key=alert.design.encode())
            self.run.alerts_published += 1

    def _summary(self, event: str, payload: dict[str, Any]) -> None:
        from pipelines.platform.drift import _clean

        with self.summary_path.open("a", encoding="utf-8") as out:
            out.write(json.dumps(_clean({"event": event, **payload}), default=str) + "\n")


def monitor_topics(design: Design, spec: MonitorSpec) -> list[str]:
    from pipelines.platform.stream import DLQ_SUFFIX

    prediction_topic = design.predictions_topic
    return [
        prediction_topic,
        prediction_topic + DLQ_SUFFIX,
        spec.label_topic,
        spec.label_topic + DLQ_SUFFIX,
        ALERTS_TOPIC,
    ]


def run_monitor(
    settings: Settings,
    design: Design | str,
    window_size: int | None = None,
    max_windows: int | None = None,
    idle_timeout: float | None = None,
    from_beginning: bool = True,
    metrics_port: int | None = None,
    on_window: Callable[[WindowResult], None] | None = None,
    on_matured: Callable[[WindowResult], None] | None = None,
    since: datetime | None = None,
) -> MonitorRun:
    """Consume `<design>.predictions` and the design's labels until stopped; see the module docstring.

    Reads from the beginning of the log, from its end (`from_beginning=False`) or from the records received
    since a moment (`since`, for runs on a shared broker). Stops on Ctrl-C, after `idle_timeout` seconds without
    records, or once `max_windows` windows are evaluated and their labels have matured.
    """
    design = resolve_design(design)
    from pipelines.platform.microbatch import run_micro_batches
    from pipelines.platform.stream import ensure_topics, make_consumer, make_producer, place_consumer

    spec = design.monitor(settings)
    ensure_topics(settings, monitor_topics(design, spec))
    schemas: dict[str, type[BaseModel]] = {
        design.predictions_topic: PredictionRecord,
        spec.label_topic: spec.label_schema,
    }
    metrics = MonitorMetrics()
    with contextlib.ExitStack() as cleanup:
        if metrics_port:
            metrics.serve(metrics_port, settings.metrics_host)
            cleanup.callback(metrics.stop)
        consumer = make_consumer(settings, list(schemas), f"mlsd-monitor-{design.name}")
        cleanup.callback(consumer.close)
        place_consumer(consumer, list(schemas), from_beginning, since)
        producer = make_producer(settings)
        cleanup.callback(producer.close)
        cleanup.callback(producer.flush)  # callbacks run last-in first-out: flush, then close
        monitor = Monitor(
            settings,
            spec,
            window_size or settings.monitor_window_size,
            producer,
            metrics,
            max_windows,
            on_window,
            on_matured,
        )
        started = time.perf_counter()

        def check(stats: Any, _size: int) -> None:
            monitor.run.dead_lettered = stats.dead_lettered
            if monitor.done:
                raise _Finished

        with contextlib.suppress(_Finished):
            stats = run_micro_batches(
                consumer,
                producer,
                schemas,
                monitor.sink,
                settings.stream_batch_size,
                settings.stream_batch_ms,
                idle_stop_s=idle_timeout,
                on_batch=check,
            )
            monitor.run.dead_lettered = stats.dead_lettered
        monitor.run.seconds = time.perf_counter() - started
    return monitor.run
