"""The micro-batch loop against the real embedded broker: dead letters, commit-after-sink, redelivery."""

from __future__ import annotations

import json
import threading
import time

import pytest
from pydantic import BaseModel, Field

from pipelines.platform.errors import DependencyUnavailable
from pipelines.platform.events import EventTime
from pipelines.platform.microbatch import run_micro_batches
from pipelines.platform.stream import (
    DLQ_SUFFIX,
    EventLimits,
    ServiceUnavailable,
    check_broker,
    ensure_topics,
    make_consumer,
    make_producer,
    read_dead_letters,
)
from tests.conftest import unique

pytestmark = pytest.mark.integration


class Reading(BaseModel):
    sensor: str = Field(min_length=1)
    value: float = Field(ge=0)


class Timed(BaseModel):
    name: str
    timestamp: EventTime


def test_bad_events_go_to_the_dead_letter_topic_as_they_arrived_and_the_stream_goes_on(kafka_settings):
    topic = unique("test.readings")
    ensure_topics(kafka_settings, [topic, topic + DLQ_SUFFIX])
    producer = make_producer(kafka_settings)
    messages = [
        b'{"sensor":"a","value":1}',
        b"{not json",
        b'{"sensor":"b"}',
        b'{"sensor":"c","value":-3}',
        b'{"sensor":"d","value":"x"}',
        b'{"sensor":"e","value":2.5}',
    ]
    for i, message in enumerate(messages):
        producer.send(topic, message, key=f"k{i}".encode())
    producer.flush()
    seen: list[str] = []
    consumer = make_consumer(kafka_settings, [topic], unique("group"))
    stats = run_micro_batches(
        consumer, producer, {topic: Reading}, lambda batch: seen.extend(e.event.sensor for e in batch), idle_stop_s=3
    )
    consumer.close()
    assert seen == ["a", "e"]
    assert stats.processed == 2 and stats.dead_lettered == 4
    dead = read_dead_letters(kafka_settings, topic)
    reasons = [d.reason for d in dead]
    assert reasons[0] == "not valid JSON"
    assert reasons[1].startswith("value:") and "required" in reasons[1].lower()
    assert reasons[2].startswith("value:") and "greater than or equal" in reasons[2]
    # The bytes and the key as they arrived, and where they came from: a fixed event can be sent again as it was.
    assert [d.value for d in dead] == messages[1:5]
    assert [d.key for d in dead] == [b"k1", b"k2", b"k3", b"k4"]
    assert [d.source_offset for d in dead] == [1, 2, 3, 4]
    assert all(d.source_topic == topic and not d.truncated for d in dead)


def test_an_event_over_the_size_limit_is_dead_lettered_with_a_truncated_copy(kafka_settings):
    topic = unique("test.readings")
    ensure_topics(kafka_settings, [topic, topic + DLQ_SUFFIX])
    producer = make_producer(kafka_settings, max_request_size=4 * 1024 * 1024)
    big = b'{"sensor":"' + b"x" * 2_000_000 + b'","value":1}'
    producer.send(topic, big)
    producer.send(topic, b'{"sensor":"after","value":1}')
    producer.flush()
    seen: list[str] = []
    consumer = make_consumer(kafka_settings, [topic], unique("group"))
    stats = run_micro_batches(
        consumer,
        producer,
        {topic: Reading},
        lambda batch: seen.extend(e.event.sensor for e in batch),
        idle_stop_s=3,
        limits=EventLimits(max_bytes=1_048_576),
    )
    consumer.close()
    assert seen == ["after"] and stats.dead_lettered == 1
    (letter,) = read_dead_letters(kafka_settings, topic)
    assert letter.reason.startswith("size: 2,000,023 bytes is over the 1,048,576-byte event limit")
    assert letter.truncated and letter.original_bytes == len(big) and letter.value == big[:65_536]


def test_a_failing_dependency_is_retried_and_loses_nothing(kafka_settings):
    topic = unique("test.readings")
    ensure_topics(kafka_settings, [topic, topic + DLQ_SUFFIX])
    producer = make_producer(kafka_settings)
    for i in range(5):
        producer.send(topic, json.dumps({"sensor": f"s{i}", "value": i}).encode())
    producer.flush()
    group = unique("group")
    delivered: list[str] = []
    failures = [DependencyUnavailable("feature store down"), DependencyUnavailable("feature store still down")]

    def flaky_sink(batch):
        if failures:
            raise failures.pop(0)
        delivered.extend(e.event.sensor for e in batch)

    consumer = make_consumer(kafka_settings, [topic], group)
    stats = run_micro_batches(consumer, producer, {topic: Reading}, flaky_sink, idle_stop_s=5)
    consumer.close()
    assert delivered == [f"s{i}" for i in range(5)]  # the failed batch came again, whole
    assert stats.retries == 2 and stats.dead_lettered == 0

    again: list[str] = []
    consumer = make_consumer(kafka_settings, [topic], group)
    run_micro_batches(
        consumer, producer, {topic: Reading}, lambda b: again.extend(e.event.sensor for e in b), idle_stop_s=3
    )
    consumer.close()
    assert again == []  # and once written, it was committed


def test_an_event_that_breaks_the_sink_is_dead_lettered_and_the_others_go_on(kafka_settings):
    topic = unique("test.readings")
    ensure_topics(kafka_settings, [topic, topic + DLQ_SUFFIX])
    producer = make_producer(kafka_settings)
    for i in range(6):
        producer.send(topic, json.dumps({"sensor": f"s{i}", "value": i}).encode())
    producer.flush()
    delivered: list[str] = []

    def sink(batch):
        if any(e.event.sensor == "s3" for e in batch):
            raise ZeroDivisionError("a bug this event triggers")
        delivered.extend(e.event.sensor for e in batch)

    consumer = make_consumer(kafka_settings, [topic], unique("group"))
    stats = run_micro_batches(consumer, producer, {topic: Reading}, sink, idle_stop_s=3)
    consumer.close()
    assert sorted(delivered) == ["s0", "s1", "s2", "s4", "s5"] and len(delivered) == 5
    assert stats.isolated == 1 and stats.dead_lettered == 1
    (letter,) = read_dead_letters(kafka_settings, topic)
    assert letter.reason == "processing: ZeroDivisionError: a bug this event triggers" and letter.source_offset == 3


def test_events_far_behind_the_stream_are_dead_lettered_as_too_late(kafka_settings):
    topic = unique("test.timed")
    ensure_topics(kafka_settings, [topic, topic + DLQ_SUFFIX])
    producer = make_producer(kafka_settings)
    for day in ("2026-03-10", "2026-03-11", "2025-01-01", "2026-03-09"):
        producer.send(topic, json.dumps({"name": day, "timestamp": f"{day}T00:00:00Z"}).encode())
    producer.flush()
    seen: list[str] = []
    consumer = make_consumer(kafka_settings, [topic], unique("group"))
    run_micro_batches(
        consumer,
        producer,
        {topic: Timed},
        lambda batch: seen.extend(e.event.name for e in batch),
        idle_stop_s=3,
        max_lateness_s=30 * 86_400,
    )
    consumer.close()
    assert seen == ["2026-03-10", "2026-03-11", "2026-03-09"]  # two days late is fine, fourteen months is not
    (letter,) = read_dead_letters(kafka_settings, topic)
    assert letter.reason.startswith("timestamp: 434.0 days behind the stream's newest event")


def test_a_trickle_of_events_is_gathered_into_micro_batches(kafka_settings):
    topic = unique("test.readings")
    ensure_topics(kafka_settings, [topic, topic + DLQ_SUFFIX])
    producer = make_producer(kafka_settings)
    consumer = make_consumer(kafka_settings, [topic], unique("group"))
    while not consumer.assignment():  # joined before the trickle starts, so the first events open a batch
        consumer.poll(timeout_ms=100)

    sent_at: list[float] = []

    def trickle() -> None:  # 40 events over ~2 s
        for i in range(40):
            producer.send(topic, json.dumps({"sensor": f"s{i}", "value": i}).encode())
            producer.flush()
            sent_at.append(time.monotonic())
            time.sleep(0.05)

    sender = threading.Thread(target=trickle)
    sender.start()
    batches: list[list[str]] = []
    run_micro_batches(
        consumer,
        producer,
        {topic: Reading},
        lambda batch: batches.append([e.event.sensor for e in batch]),
        batch_ms=1000,
        idle_stop_s=3,
    )
    sender.join()
    consumer.close()
    assert [sensor for batch in batches for sensor in batch] == [f"s{i}" for i in range(40)]
    # A batch stays open for batch_ms after its first event, so the trickle's own span bounds the number of batches
    # (one per second of sending, plus the one open at the end); one batch per poll would give ~40.
    span = sent_at[-1] - sent_at[0]
    assert 2 <= len(batches) <= span // 1.0 + 2, (len(batches), span)


def test_a_missing_broker_is_one_sentence():
    with pytest.raises(ServiceUnavailable, match="No Kafka broker answers at 127.0.0.1:1; start one with `mlsd up`"):
        check_broker("127.0.0.1:1", timeout_s=0.5)


def test_topics_are_created_once(kafka_settings):
    topic = unique("test.created")
    assert ensure_topics(kafka_settings, [topic]) == [topic]
    assert ensure_topics(kafka_settings, [topic]) == []
