"""The monitor's Prometheus series: drift scores, threshold flags, matured-window performance, windows seen."""

from __future__ import annotations

import math
from typing import Any

from pipelines.monitoring.window import WindowResult


class MonitorMetrics:
    """The monitor's gauges in their own registry (several monitors can live in one test process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        self.drift_score = Gauge(
            "mlsd_drift_score",
            "Latest drift score per feature (prediction included)",
            ["design", "feature"],
            registry=self.registry,
        )
        self.drift_detected = Gauge(
            "mlsd_drift_detected",
            "1 if the latest window crossed the threshold of this kind",
            ["design", "kind"],
            registry=self.registry,
        )
        self.performance = Gauge(
            "mlsd_window_performance", "Latest matured window's metric", ["design", "metric"], registry=self.registry
        )
        self.windows = Counter("mlsd_monitor_windows", "Windows evaluated", ["design"], registry=self.registry)
        self._server: Any = None

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        from pipelines.platform.metrics import start_metrics_server

        self._server = start_metrics_server(port, self.registry, host)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def window(self, result: WindowResult) -> None:
        drift = result.drift
        for name, column in drift.features.items():
            self.drift_score.labels(result.design, name).set(column.score)
        if drift.prediction:
            self.drift_score.labels(result.design, drift.prediction.column).set(drift.prediction.score)
        flags = {
            "data_drift": drift.data_drift,
            "prediction_drift": drift.prediction_drift,
            "data_quality": not drift.quality_ok,
        }
        for kind, flag in flags.items():
            self.drift_detected.labels(result.design, kind).set(int(flag))
        self.windows.labels(result.design).inc()

    def matured(self, result: WindowResult) -> None:
        for name, value in (result.performance or {}).items():
            if value is not None and math.isfinite(value):
                self.performance.labels(result.design, name).set(value)
        self.drift_detected.labels(result.design, "performance_decay").set(int(result.performance_decay))

    def text(self) -> str:
        from prometheus_client import generate_latest

        return generate_latest(self.registry).decode()
