"""A design's feature processor as a command: the platform's micro-batch loop (checkpointed when a state store is
given), progress lines, an optional Prometheus endpoint and a JSON summary at the end."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pipelines.platform.console import console, write_json_out
from pipelines.platform.microbatch import LoopConfig, MicroBatchLoop
from pipelines.platform.state import StateStore
from pipelines.platform.stream import EventLimits
from pipelines.settings import Settings


def loop_config(settings: Settings, idle_stop: float | None = None, max_events: int | None = None) -> LoopConfig:
    """The loop's batch size and timing, event limits and dead-letter copy size, from Settings."""
    return LoopConfig(
        batch_size=settings.stream_batch_size,
        batch_ms=settings.stream_batch_ms,
        limits=EventLimits.from_settings(settings),
        max_lateness_s=settings.stream_max_lateness_days * 86_400,
        dlq_copy_bytes=settings.stream_dlq_copy_bytes,
        idle_stop_s=idle_stop,
        max_events=max_events,
    )


def run_feature_processor(
    settings: Settings,
    design: str,
    schemas: dict[str, type[BaseModel]],
    make_sink: Callable[[Any], Any],
    group: str,
    idle_stop: float | None,
    max_events: int | None,
    json_out: Path | None,
    sink_figures: Callable[[], dict[str, Any]],
    metrics_port: int | None = None,
    store: StateStore | None = None,
) -> dict[str, Any]:
    """Consume `schemas`' topics in group `group` into `sink` until stopped; print and return the figures.

    `make_sink` builds the sink from the loop's producer (a sink that sends records, e.g. to a repartition topic,
    sends them with the producer the loop flushes before each checkpoint). With a
    `store`, a stateful sink is checkpointed with the source positions. With `metrics_port`, Prometheus metrics
    (processor label = design) and /healthz are served while it runs.
    """
    from kafka import ConsumerRebalanceListener

    from pipelines.platform.stream import make_consumer, make_producer, stale_positions

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
        holder: dict[str, MicroBatchLoop] = {}

        class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
            def on_partitions_revoked(self, revoked: Any) -> None:
                holder["loop"].revoked(list(revoked))

            def on_partitions_assigned(self, assigned: Any) -> None:
                holder["loop"].assigned(list(assigned))

        consumer = make_consumer(settings, list(schemas), group, listener=Rebalance())
        if not settings.kafka_embedded:
            cleanup.callback(consumer.close)
        # On the embedded broker a stopping processor does not leave the group: Tansu 0.6 loses the group's leader
        # when the leader leaves during a rebalance, and every later join waits forever for an assignment (seen in
        # `mlsd drill --scenario rebalance`). Its session expires instead, as after a crash (6 s), which the broker
        # handles; the checkpoint is already written, so nothing is lost either way.
        producer = make_producer(settings)
        cleanup.callback(producer.close)
        the_sink = make_sink(producer)
        loop = holder["loop"] = MicroBatchLoop(
            consumer,
            producer,
            schemas,
            the_sink,
            loop_config(settings, idle_stop, max_events),
            store=store,
            verify_log=lambda positions: stale_positions(settings, positions),
            on_batch=report,
            metrics=metrics,
        )
        console.print(f"{design} feature processor consuming {', '.join(schemas)} (group {group}); Ctrl-C stops it")
        stats = loop.run()
    result = {
        "events": stats.processed,
        "dead_lettered": stats.dead_lettered,
        "dead_letter_reasons": stats.dead_letter_reasons,
        "retries": stats.retries,
        "isolated_batches": stats.isolated,
        "log_resets": [f"{t}/{p}" for t, p in loop.resets],
        "seconds": round(stats.seconds, 3),
        "events_per_s": round(stats.rate, 1),
        **sink_figures(),
    }
    console.print_json(json.dumps(result))
    write_json_out(json_out, result)
    return result
