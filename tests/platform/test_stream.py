"""The micro-batch loop against the real embedded broker: dead letters, commit-after-sink, redelivery."""

from __future__ import annotations

import json
import threading
import time

import pytest
from kafka import KafkaConsumer
from pydantic import BaseModel, Field

from pipelines.platform.stream import (
    DLQ_SUFFIX,
    ServiceUnavailable,
    check_broker,
    ensure_topics,
    make_consumer,
    make_producer,
    run_micro_batches,
)
from tests.conftest import unique

pytestmark = pytest.mark.integration


class Reading(BaseModel):
    sensor: str = Field(min_length=1)
    value: float = Field(ge=0)


def drain(bootstrap: str, topic: str) -> list[dict]:
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest", consumer_timeout_ms=2000
    )
    values = [json.loads(m.value) for m in consumer]
    consumer.close()
    return values


def test_bad_events_go_to_the_dead_letter_topic_and_the_stream_goes_on(kafka_settings):
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
    for message in messages:
        producer.send(topic, message)
    producer.flush()
    seen: list[str] = []
    consumer = make_consumer(kafka_settings, [topic], unique("group"))
    stats = run_micro_batches(
        consumer, producer, {topic: Reading}, lambda batch: seen.extend(e.event.sensor for e in batch), idle_stop_s=3
    )
    consumer.close()
    assert seen == ["a", "e"]
    assert stats.processed == 2 and stats.dead_lettered == 4
    dead = drain(kafka_settings.kafka_bootstrap, topic + DLQ_SUFFIX)
    reasons = [d["reason"] for d in dead]
    assert reasons[0] == "not valid JSON"
    assert reasons[1].startswith("value:") and "required" in reasons[1].lower()
    assert reasons[2].startswith("value:") and "greater than or equal" in reasons[2]
    assert [d["original"] for d in dead] == [m.decode() for m in messages[1:5]]
    assert all(d["source_topic"] == topic for d in dead)


def test_offsets_are_committed_only_after_the_sink_succeeds(kafka_settings):
    topic = unique("test.readings")
    ensure_topics(kafka_settings, [topic, topic + DLQ_SUFFIX])
    producer = make_producer(kafka_settings)
    for i in range(5):
        producer.send(topic, json.dumps({"sensor": f"s{i}", "value": i}).encode())
    producer.flush()
    group = unique("group")

    def failing_sink(batch):
        raise RuntimeError("feature store down")

    consumer = make_consumer(kafka_settings, [topic], group)
    with pytest.raises(RuntimeError):
        run_micro_batches(consumer, producer, {topic: Reading}, failing_sink, idle_stop_s=3)
    consumer.close()

    delivered: list[str] = []
    consumer = make_consumer(kafka_settings, [topic], group)
    run_micro_batches(
        consumer, producer, {topic: Reading}, lambda b: delivered.extend(e.event.sensor for e in b), idle_stop_s=3
    )
    consumer.close()
    assert delivered == [f"s{i}" for i in range(5)]  # nothing was lost: the failed batch came again

    again: list[str] = []
    consumer = make_consumer(kafka_settings, [topic], group)
    run_micro_batches(
        consumer, producer, {topic: Reading}, lambda b: again.extend(e.event.sensor for e in b), idle_stop_s=3
    )
    consumer.close()
    assert again == []  # and once written, it was committed


def test_a_trickle_of_events_is_gathered_into_micro_batches(kafka_settings):
    topic = unique("test.readings")
    ensure_topics(kafka_settings, [topic, topic + DLQ_SUFFIX])
    producer = make_producer(kafka_settings)
    consumer = make_consumer(kafka_settings, [topic], unique("group"))
    while not consumer.assignment():  # joined before the trickle starts, so the first events open a batch
        consumer.poll(timeout_ms=100)

    def trickle() -> None:  # 40 events over ~2 s
        for i in range(40):
            producer.send(topic, json.dumps({"sensor": f"s{i}", "value": i}).encode())
            producer.flush()
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
    assert len(batches) <= 4  # one batch per second of events, not one per poll


def test_a_missing_broker_is_one_sentence():
    with pytest.raises(ServiceUnavailable, match="No Kafka broker answers at 127.0.0.1:1; start one with `mlsd up`"):
        check_broker("127.0.0.1:1", timeout_s=0.5)


def test_topics_are_created_once(kafka_settings):
    topic = unique("test.created")
    assert ensure_topics(kafka_settings, [topic]) == [topic]
    assert ensure_topics(kafka_settings, [topic]) == []
