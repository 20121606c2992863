"""A design's feature processor as a command: the platform's micro-batch loop with progress lines, an optional
Prometheus endpoint and a JSON summary at the end."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipelines.platform.console import console, write_json_out
from pipelines.settings import Settings


def run_feature_processor(
    settings: Settings,
    design: str,
    schemas: dict[str, type[BaseModel]],
    sink: Any,
    group: str,
    idle_stop: float | None,
    max_events: int | None,
    json_out: Path | None,
    sink_figures: Callable[[], dict[str, Any]],
    metrics_port: int | None = None,
) -> dict[str, Any]:
    """Consume `schemas`' topics in group `group` into `sink` until stopped; print and return the figures.

    With `metrics_port`, Prometheus metrics (processor label = design) and /healthz are served while it runs.
    """
    from pipelines.platform.stream import make_consumer, make_producer, run_micro_batches

    def report(stats: Any, _size: int) -> None:
        if stats.batches % 20 == 0:
            console.print(f"{stats.processed:,} events, {stats.dead_lettered:,} dead-lettered, {stats.rate:,.0f}/s")

    with ExitStack() as cleanup:  # closes, last opened first: producer, consumer, metrics endpoint
        metrics = None
        if metrics_port is not None:
            from pipelines.platform.metrics import StreamMetrics, start_metrics_server

            metrics = StreamMetrics(design, lag_every=settings.stream_lag_every)
            server = start_metrics_server(metrics_port, metrics.registry, settings.metrics_host, health=metrics.health)
            cleanup.callback(server.stop)
            console.print(f"metrics on {server.url}/metrics, health on {server.url}/healthz")
        consumer = make_consumer(settings, list(schemas), group)
        cleanup.callback(consumer.close)
        producer = make_producer(settings)
        cleanup.callback(producer.close)
        console.print(f"{design} feature processor consuming {', '.join(schemas)} (group {group}); Ctrl-C stops it")
        stats = run_micro_batches(
            consumer,
            producer,
            schemas,
            sink,
            settings.stream_batch_size,
            settings.stream_batch_ms,
            idle_stop_s=idle_stop,
            max_events=max_events,
            on_batch=report,
            metrics=metrics,
        )
    result = {
        "events": stats.processed,
        "dead_lettered": stats.dead_lettered,
        "dead_letter_reasons": stats.dead_letter_reasons,
        "seconds": round(stats.seconds, 3),
        "events_per_s": round(stats.rate, 1),
        **sink_figures(),
    }
    console.print_json(json.dumps(result))
    write_json_out(json_out, result)
    return result
