"""Prometheus metrics of the stream processors, and the small HTTP endpoint that serves them.

`StreamMetrics` is the micro-batch loop's observer (`run_micro_batches(..., metrics=...)`): counters per batch,
a batch-duration histogram, and the consumer lag, which costs a broker round trip and so is looked up only every
few batches (and now and then while idle, so a drained topic shows 0). Every `StreamMetrics` owns its registry, so
several processors, or tests, can live in one process.

`start_metrics_server` serves a registry on `/metrics` with prometheus_client's own exposition and answers
`/healthz` from a health callback, which is what a container healthcheck probes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.process_collector import ProcessCollector

from pipelines.platform.stream import end_offsets_lag

if TYPE_CHECKING:
    from kafka import KafkaConsumer

log = logging.getLogger(__name__)

# Seconds from a batch's arrival to its commit: decode, sink write (Feast push), dead-letter flush, commit.
BATCH_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HEALTH_PATH = "/healthz"


class StreamMetrics:
    """The `mlsd_stream_*` series of one processor (label `processor`), fed by the micro-batch loop.

    `lag_every`: batches between two lag look-ups; `lag_idle_s`: seconds between look-ups while no messages
    arrive; `stale_after_s`: how long the loop may go without polling before `/healthz` reports it stuck.
    """

    def __init__(
        self,
        processor: str,
        registry: CollectorRegistry | None = None,
        lag_every: int = 10,
        lag_idle_s: float = 5.0,
        stale_after_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if lag_every < 1:
            raise ValueError("lag_every must be at least 1 batch")
        self.processor = processor
        self.registry = registry if registry is not None else CollectorRegistry()
        self.lag_every, self.lag_idle_s, self.stale_after_s = lag_every, lag_idle_s, stale_after_s
        self._clock = clock
        labels = ["processor"]
        self.consumed = Counter(
            "mlsd_stream_consumed", "Messages polled and committed", labels, registry=self.registry
        ).labels(processor)
        self.processed = Counter(
            "mlsd_stream_processed", "Valid events written to the sink", labels, registry=self.registry
        ).labels(processor)
        self.dead_letters = Counter(
            "mlsd_stream_dead_letters",
            "Events sent to the dead-letter topic, by reason (the field that failed, or the kind of failure)",
            ["processor", "reason"],
            registry=self.registry,
        )
        self.lag = Gauge(
            "mlsd_stream_consumer_lag",
            "Messages behind the end offsets of the assigned partitions (looked up every few batches)",
            labels,
            registry=self.registry,
        ).labels(processor)
        self.batch_seconds = Histogram(
            "mlsd_stream_batch_seconds",
            "Seconds from a batch's arrival to its commit",
            labels,
            buckets=BATCH_SECONDS_BUCKETS,
            registry=self.registry,
        ).labels(processor)
        self.last_batch = Gauge(
            "mlsd_stream_last_batch_timestamp_seconds", "Unix time of the last committed batch", labels,
            registry=self.registry,
        ).labels(processor)  # fmt: skip
        self.lag_lookups = 0
        self._batches_since_lag = lag_every  # the first batch looks the lag up
        self._last_lag_at = clock()
        self._last_poll_at = clock()

    def batch_committed(
        self, consumer: KafkaConsumer, consumed: int, processed: int, dead_letters: dict[str, int], seconds: float
    ) -> None:
        """Called by the loop after each commit."""
        self._last_poll_at = self._clock()
        self.consumed.inc(consumed)
        self.processed.inc(processed)
        for reason, count in dead_letters.items():
            self.dead_letters.labels(self.processor, reason).inc(count)
        self.batch_seconds.observe(seconds)
        self.last_batch.set_to_current_time()
        self._batches_since_lag += 1
        if self._batches_since_lag >= self.lag_every:
            self.refresh_lag(consumer)

    def idle(self, consumer: KafkaConsumer) -> None:
        """Called by the loop after a poll that returned nothing."""
        self._last_poll_at = self._clock()
        if consumer.assignment() and self._clock() - self._last_lag_at >= self.lag_idle_s:
            self.refresh_lag(consumer)

    def refresh_lag(self, consumer: KafkaConsumer) -> None:
        """Look the lag up now; a failed look-up keeps the last value (metrics never stop the processor)."""
        from kafka.errors import KafkaError

        self._batches_since_lag = 0
        self._last_lag_at = self._clock()
        try:
            self.lag.set(end_offsets_lag(consumer))
            self.lag_lookups += 1
        except KafkaError as exc:
            log.warning("consumer lag look-up failed (%s); keeping the last value", exc)

    def health(self) -> str | None:
        """None while the loop polls; otherwise why it looks stuck (for `/healthz`)."""
        quiet = self._clock() - self._last_poll_at
        if quiet > self.stale_after_s:
            return f"the {self.processor} processor has not polled Kafka for {quiet:.0f} s"
        return None


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
        """Scrapes every few seconds would flood the processor's output."""


@dataclass
class MetricsServer:
    """A running metrics endpoint; `stop()` closes its socket."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '') else self.host}:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def metrics_app(registry: CollectorRegistry, health: Callable[[], str | None] | None = None) -> Callable[..., Any]:
    """WSGI app: `/healthz` answers 200 `ok` or 503 with the reason; every other path is prometheus_client's."""
    exposition = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == HEALTH_PATH:
            problem = health() if health else None
            status = "503 Service Unavailable" if problem else "200 OK"
            start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
            return [(problem or "ok").encode() + b"\n"]
        result: Iterable[bytes] = exposition(environ, start_response)
        return result

    return app


def start_metrics_server(
    port: int,
    registry: CollectorRegistry,
    host: str = "127.0.0.1",
    health: Callable[[], str | None] | None = None,
    process_metrics: bool = True,
) -> MetricsServer:
    """Serve `registry` on http://host:port/metrics (and `/healthz`) from a daemon thread.

    A taken port ends in one sentence (`PortInUse`). `process_metrics` adds the process's CPU, memory and open
    files (`process_*`) to the registry, once.
    """
    from pipelines.platform.infra import require_free_port

    require_free_port(port, "the metrics endpoint", "--metrics-port")
    if process_metrics and "process_cpu_seconds" not in _family_names(registry):
        ProcessCollector(registry=registry)
    server = make_server(
        host, port, metrics_app(registry, health), server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, name=f"metrics-{port}", daemon=True)
    thread.start()
    return MetricsServer(host, port, server, thread)


def _family_names(registry: CollectorRegistry) -> set[str]:
    return {family.name for family in registry.collect()}
