"""Stream-processor metrics: the micro-batch loop on the real broker, read back over HTTP from the endpoint."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel, Field

from pipelines.platform.errors import PortInUse
from pipelines.platform.infra import free_port
from pipelines.platform.metrics import MetricsServer, StreamMetrics, start_metrics_server
from pipelines.platform.microbatch import run_micro_batches
from pipelines.platform.stream import DLQ_SUFFIX, ensure_topics, make_consumer, make_producer
from tests.conftest import unique


class Reading(BaseModel):
    sensor: str = Field(min_length=1)
    value: float = Field(ge=0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def scrape(server: MetricsServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample on /metrics as {(name, labels): value}."""
    status, text = get(f"{server.url}/metrics")
    assert status == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def send(settings, topic: str, messages: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    producer = make_producer(settings)
    for message in messages:
        producer.send(topic, message)
    producer.flush()
    producer.close()


@pytest.fixture
def served() -> Iterator[tuple[StreamMetrics, MetricsServer, FakeClock]]:
    clock = FakeClock()
    # A name of its own: Feast switches prometheus_client to multiprocess mode when it is imported first, and then
    # every series with the same name and labels in this process shares one value, whichever registry holds it.
    metrics = StreamMetrics(unique("readings"), lag_every=1, lag_idle_s=5, stale_after_s=60, clock=clock)
    server = start_metrics_server(free_port(), metrics.registry, health=metrics.health)
    yield metrics, server, clock
    server.stop()


@pytest.mark.integration
def test_the_loop_records_consumed_processed_dead_letters_and_lag(kafka_settings, served) -> None:
    metrics, server, _ = served
    topic = unique("test.readings")
    ensure_topics(kafka_settings, [topic, topic + DLQ_SUFFIX])
    good = [json.dumps({"sensor": f"s{i}", "value": i}).encode() for i in range(30)]
    bad = [b"{not json", b'{"sensor":"x","value":-1}', b"[oops"]
    send(kafka_settings, topic, good[:10] + bad + good[10:])
    total = len(good) + len(bad)
    group = unique("group")
    producer = make_producer(kafka_settings)

    # Stop part-way: the lag is what the broker still holds for this group.
    consumer = make_consumer(kafka_settings, [topic], group)
    first = run_micro_batches(
        consumer, producer, {topic: Reading}, lambda b: None, batch_size=10, max_events=20, metrics=metrics
    )
    consumer.close()
    samples = scrape(server)
    consumed = value(samples, "mlsd_stream_consumed_total", processor=metrics.processor)
    assert consumed == first.consumed >= 20
    assert value(samples, "mlsd_stream_consumer_lag", processor=metrics.processor) == total - consumed > 0

    # Carry on in the same group to the end.
    consumer = make_consumer(kafka_settings, [topic], group)
    second = run_micro_batches(
        consumer, producer, {topic: Reading}, lambda b: None, batch_size=10, idle_stop_s=2, metrics=metrics
    )
    consumer.close()
    producer.close()
    samples = scrape(server)
    assert value(samples, "mlsd_stream_consumed_total", processor=metrics.processor) == total
    assert value(samples, "mlsd_stream_processed_total", processor=metrics.processor) == len(good)
    assert value(samples, "mlsd_stream_dead_letters_total", processor=metrics.processor, reason="not valid JSON") == 2
    assert value(samples, "mlsd_stream_dead_letters_total", processor=metrics.processor, reason="value") == 1
    assert value(samples, "mlsd_stream_consumer_lag", processor=metrics.processor) == 0
    batches = value(samples, "mlsd_stream_batch_seconds_count", processor=metrics.processor)
    assert batches == first.batches + second.batches
    last = value(samples, "mlsd_stream_last_batch_timestamp_seconds", processor=metrics.processor)
    assert time.time() - 600 < last <= time.time()
    assert get(f"{server.url}/healthz") == (200, "ok\n")


@pytest.mark.integration
def test_lag_is_looked_up_every_few_batches_and_when_idle(kafka_settings) -> None:
    clock = FakeClock()
    metrics = StreamMetrics(unique("readings"), lag_every=3, lag_idle_s=5, clock=clock)
    topic = unique("test.readings")
    ensure_topics(kafka_settings, [topic, topic + DLQ_SUFFIX])
    send(kafka_settings, topic, [json.dumps({"sensor": "s", "value": i}).encode() for i in range(50)])
    producer = make_producer(kafka_settings)
    consumer = make_consumer(kafka_settings, [topic], unique("group"))
    stats = run_micro_batches(
        consumer, producer, {topic: Reading}, lambda b: None, batch_size=10, idle_stop_s=2, metrics=metrics
    )
    # The fake clock stood still, so idle polls never looked: only the first batch and every third after it did.
    assert stats.batches >= 5  # 50 messages, at most 10 a batch
    assert metrics.lag_lookups == 1 + (stats.batches - 1) // 3 < stats.batches
    clock.now += 5  # a quiet topic is looked at again after lag_idle_s
    metrics.idle(consumer)
    assert metrics.lag_lookups == 2 + (stats.batches - 1) // 3
    assert metrics.registry.get_sample_value("mlsd_stream_consumer_lag", {"processor": metrics.processor}) == 0
    consumer.close()
    producer.close()


@pytest.mark.unit
def test_healthz_turns_503_when_the_loop_stops_polling(served) -> None:
    metrics, server, clock = served
    assert get(f"{server.url}/healthz") == (200, "ok\n")
    clock.now += 61
    status, body = get(f"{server.url}/healthz")
    assert status == 503 and f"{metrics.processor} processor has not polled Kafka for 61 s" in body
    status, text = get(f"{server.url}/metrics")
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"mlsd_stream_consumed", "mlsd_stream_consumer_lag", "mlsd_stream_batch_seconds"} <= names
    assert "process_cpu_seconds" in names  # the process's own figures come along


@pytest.mark.unit
def test_a_taken_port_is_one_sentence(served) -> None:
    _, server, _ = served
    with pytest.raises(PortInUse, match=f"Port {server.port} for the metrics endpoint is already in use"):
        start_metrics_server(server.port, StreamMetrics("other").registry)


@pytest.mark.integration
def test_the_feature_processor_serves_metrics_while_it_runs(kafka_settings) -> None:
    from pipelines.platform.processor import run_feature_processor

    topic = unique("test.readings")
    ensure_topics(kafka_settings, [topic, topic + DLQ_SUFFIX])
    send(kafka_settings, topic, [json.dumps({"sensor": "s", "value": i}).encode() for i in range(25)])
    port = free_port()
    processor = unique("readings")  # a series of its own (see `served`)
    written: list[str] = []
    runner = threading.Thread(
        target=run_feature_processor,
        args=(
            kafka_settings,
            processor,
            {topic: Reading},
            lambda _producer: lambda b: written.extend(e.topic for e in b),
        ),
        kwargs={
            "group": unique("group"),
            "idle_stop": 4,
            "max_events": None,
            "json_out": None,
            "sink_figures": dict,
            "metrics_port": port,
        },
    )
    runner.start()
    url = f"http://127.0.0.1:{port}"
    seen = 0.0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and seen < 25:
        try:
            _, text = get(f"{url}/metrics")
        except OSError:  # not listening yet
            time.sleep(0.2)
            continue
        samples = {
            s.name: s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.labels.get("processor") == processor
        }
        seen = samples.get("mlsd_stream_processed_total", 0.0)
        time.sleep(0.2)
    assert seen == 25
    assert get(f"{url}/healthz") == (200, "ok\n")
    runner.join(timeout=30)
    assert not runner.is_alive() and len(written) == 25
    with pytest.raises(OSError):  # the endpoint closes with the processor
        get(f"{url}/metrics")
