"""Kafka I/O shared by every design: clients, topics, JSON serde with plausibility limits, dead-letter topics.

A dead letter keeps the original bytes and key as they arrived (truncated past `dlq_copy_bytes`, with the original
size said), and says what failed in Kafka Connect's headers (`__connect.errors.*`: source topic, partition, offset,
the reason), so a fixed event can be replayed as it was (`read_dead_letters`). The micro-batch loop that uses them
is pipelines/platform/microbatch.py.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from pipelines.platform.errors import ServiceUnavailable
from pipelines.settings import Settings

if TYPE_CHECKING:
    from kafka import KafkaConsumer, KafkaProducer

DLQ_SUFFIX = ".dlq"


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode(event: dict[str, Any] | BaseModel) -> bytes:
    if isinstance(event, BaseModel):
        return event.model_dump_json().encode()
    return json.dumps(event, default=_json_default, separators=(",", ":")).encode()


def check_broker(bootstrap: str, timeout_s: float = 3.0) -> None:
    """Fail with one sentence when nothing listens at the bootstrap address."""
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return
    except OSError as exc:
        raise ServiceUnavailable(
            f"No Kafka broker answers at {bootstrap}; start one with `mlsd up` or set MLSD_KAFKA_BOOTSTRAP."
        ) from exc


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    from kafka import KafkaProducer

    check_broker(settings.kafka_bootstrap)
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "acks": 1,
        "retries": 5,
    }
    options.update(overrides)
    return KafkaProducer(**options)


def make_consumer(
    settings: Settings, topics: Iterable[str], group_id: str, listener: Any = None, **overrides: Any
) -> KafkaConsumer:
    """A manual-commit consumer; short session timeouts make group joins take seconds, not tens of seconds.

    `listener` (a kafka `ConsumerRebalanceListener`) hears of partitions assigned and revoked.
    """
    from kafka import KafkaConsumer

    check_broker(settings.kafka_bootstrap)
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
        "max_poll_interval_ms": 60000,
        "max_partition_fetch_bytes": 8 * 1024 * 1024,
        "fetch_max_bytes": 32 * 1024 * 1024,
    }
    options.update(overrides)
    consumer = KafkaConsumer(**options)
    if topics := list(topics):
        consumer.subscribe(topics, listener=listener) if listener is not None else consumer.subscribe(topics)
    return consumer


def ensure_topics(settings: Settings, topics: Iterable[str], partitions: int | Mapping[str, int] = 1) -> list[str]:
    """Create the topics that do not exist yet (the embedded broker does not auto-create); return the new ones.

    `partitions` is one count for all, or a count per topic (topics not named get 1).
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    check_broker(settings.kafka_bootstrap)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="mlsd-admin")

    def count(topic: str) -> int:
        return partitions if isinstance(partitions, int) else int(partitions.get(topic, 1))

    try:
        existing = set(admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                admin.create_topics([NewTopic(name=t, num_partitions=count(t), replication_factor=1) for t in missing])
        return missing
    finally:
        admin.close()


def partition_count(settings: Settings, topic: str) -> int:
    """How many partitions `topic` has on the broker (0 when it does not exist)."""
    consumer = make_consumer(settings, [], group_id=None)  # type: ignore[arg-type]
    try:
        return len(consumer.partitions_for_topic(topic) or ())
    finally:
        consumer.close()


def log_ends(consumer: KafkaConsumer, partitions: Iterable[Any]) -> dict[Any, int]:
    """The broker's end offset of each partition it answers for (one it does not answer for is left out).

    kafka-python raises for all when the embedded broker leaves one out of its answer: those are asked one by one.
    The embedded broker's answer is the last record batch's base offset + 1, short of a multi-record batch's end."""
    wanted = list(partitions)
    try:
        return {tp: int(end) for tp, end in consumer.end_offsets(wanted).items()}
    except Exception:  # noqa: BLE001 - asked again one by one below
        out: dict[Any, int] = {}
        for tp in wanted:
            with contextlib.suppress(Exception):
                out.update({t: int(end) for t, end in consumer.end_offsets([tp]).items()})
        return out


def stale_positions(settings: Settings, positions: Mapping[tuple[str, int], Any]) -> set[tuple[str, int]]:
    """The stored positions whose log no longer holds the record they were taken after (a new log: the broker was
    restarted and lost its topics, or the topic was recreated). `positions` map (topic, partition) → Position."""
    from kafka import TopicPartition

    from pipelines.platform.state import fingerprint

    # Only the record itself can tell: the embedded broker's end offsets fall short inside a multi-record batch. They
    # do tell an empty log, though (0), and every other partition is read at once: one wait, not one per partition.
    to_check = {key: pos for key, pos in positions.items() if pos.offset > 0 and pos.fingerprint}
    if not to_check:
        return set()
    consumer = make_consumer(settings, [], group_id=None)  # type: ignore[arg-type]
    partitions = {key: TopicPartition(*key) for key in to_check}
    try:
        ends = log_ends(consumer, partitions.values())
        stale = {key for key, tp in partitions.items() if ends.get(tp) == 0}
        wanted = {tp: to_check[key] for key, tp in partitions.items() if key not in stale}
        consumer.assign(list(wanted))
        for tp, position in wanted.items():
            consumer.seek(tp, position.offset - 1)  # past a shorter log's end, reading resets to its beginning
        found: dict[Any, Any] = {}
        deadline = time.monotonic() + 5
        while len(found) < len(wanted) and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=200).items():
                if records and tp not in found:
                    found[tp] = records[0]
                    consumer.pause(tp)
        for tp, position in wanted.items():
            record = found.get(tp)
            if (
                record is None
                or record.offset != position.offset - 1
                or fingerprint(record.key, record.value) != position.fingerprint
            ):
                stale.add((tp.topic, tp.partition))
    finally:
        consumer.close()
    return stale


def end_offsets_lag(consumer: KafkaConsumer) -> int:
    """Messages not yet consumed on the assigned partitions (consumer lag).

    An end offset is the larger of the broker's answer (`log_ends`, short on the embedded broker) and the high
    watermark of the last fetch.
    """
    assigned = consumer.assignment()
    if not assigned:
        return 0
    ends = log_ends(consumer, assigned)
    return sum(
        max(0, max(ends.get(tp, 0), consumer.highwater(tp) or 0) - (consumer.position(tp) or 0)) for tp in assigned
    )


@dataclass
class Envelope:
    """One decoded, validated event with where it came from (enough to dead-letter it as it arrived)."""

    topic: str
    event: BaseModel
    produced_ms: int
    partition: int = 0
    offset: int = -1
    key: bytes | None = None
    value: bytes | None = None


@dataclass
class LoopStats:
    consumed: int = 0
    processed: int = 0
    dead_lettered: int = 0
    batches: int = 0
    seconds: float = 0.0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    retries: int = 0  # batches retried after a dependency (online store, ...) failed
    isolated: int = 0  # batches replayed one event at a time to find the event that broke them

    @property
    def rate(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0

    def count_dead_letter(self, reason: str) -> None:
        self.dead_lettered += 1
        key = reason.split(":")[0]
        self.dead_letter_reasons[key] = self.dead_letter_reasons.get(key, 0) + 1


@dataclass(frozen=True)
class EventLimits:
    """What a stream accepts: event size, how far ahead of now an event time may be (see platform/events.py)."""

    max_bytes: int = 1_048_576
    max_future_s: float = 86_400.0

    @classmethod
    def from_settings(cls, settings: Settings) -> EventLimits:
        return cls(settings.stream_max_event_bytes, settings.event_max_future_seconds)


def decode(topic: str, value: bytes | None, schema: type[BaseModel], limits: EventLimits | None = None) -> BaseModel:
    """Parse and validate one message; raise ValueError with a short reason for the dead-letter topic."""
    from pipelines.platform.events import event_context

    limits = limits or EventLimits()
    if value is None:
        raise ValueError("empty message")
    if len(value) > limits.max_bytes:
        raise ValueError(f"size: {len(value):,} bytes is over the {limits.max_bytes:,}-byte event limit")
    try:
        return schema.model_validate_json(value, context=event_context(limits.max_future_s))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "message"
        if first.get("type") == "json_invalid":
            raise ValueError("not valid JSON") from None
        raise ValueError(f"{where}: {first.get('msg', 'invalid')}") from None


# Kafka Connect's dead-letter headers, so that tools that know them read ours.
ERROR_HEADERS = (
    "__connect.errors.topic",
    "__connect.errors.partition",
    "__connect.errors.offset",
    "__connect.errors.exception.message",
)
DLQ_COPY_BYTES = 65_536


def dead_letter(
    producer: KafkaProducer,
    topic: str,
    value: bytes | None,
    reason: str,
    offset: int,
    partition: int = 0,
    key: bytes | None = None,
    copy_bytes: int = DLQ_COPY_BYTES,
) -> None:
    """Send the event as it arrived to `<topic>.dlq` with why it failed and where it came from.

    An event larger than `copy_bytes` keeps its first `copy_bytes` (and its size, and the source offset to fetch
    it whole while the source topic retains it): the dead-letter copy must itself fit in a Kafka message.
    """
    original = value or b""
    kept = original[:copy_bytes]
    headers = [
        ("__connect.errors.topic", topic.encode()),
        ("__connect.errors.partition", str(partition).encode()),
        ("__connect.errors.offset", str(offset).encode()),
        ("__connect.errors.exception.message", reason[:1000].encode()),
        ("mlsd.original.bytes", str(len(original)).encode()),
        ("mlsd.truncated", b"true" if len(kept) < len(original) else b"false"),
        ("mlsd.failed_at", datetime.now().astimezone().isoformat().encode()),
    ]
    producer.send(topic + DLQ_SUFFIX, kept, key=key, headers=headers)


@dataclass(frozen=True)
class DeadLetter:
    """One dead-lettered event, read back: its bytes and key as they arrived, and what failed."""

    source_topic: str
    source_partition: int
    source_offset: int
    reason: str
    key: bytes | None
    value: bytes
    original_bytes: int
    truncated: bool
    failed_at: str
    offset: int  # in the dead-letter topic


def read_dead_letters(settings: Settings, topic: str, max_records: int | None = None) -> list[DeadLetter]:
    """The dead letters of `topic` (its `.dlq`), oldest first."""
    consumer = make_consumer(settings, [topic + DLQ_SUFFIX], group_id=None)  # type: ignore[arg-type]
    letters: list[DeadLetter] = []
    deadline = time.monotonic() + 30
    try:
        while max_records is None or len(letters) < max_records:
            polled = consumer.poll(timeout_ms=500, max_records=5000)
            for batch in polled.values():
                for message in batch:
                    headers = {name: value.decode(errors="replace") for name, value in message.headers or []}
                    letters.append(
                        DeadLetter(
                            source_topic=headers.get("__connect.errors.topic", topic),
                            source_partition=int(headers.get("__connect.errors.partition", "0")),
                            source_offset=int(headers.get("__connect.errors.offset", "-1")),
                            reason=headers.get("__connect.errors.exception.message", ""),
                            key=message.key,
                            value=message.value or b"",
                            original_bytes=int(headers.get("mlsd.original.bytes", len(message.value or b""))),
                            truncated=headers.get("mlsd.truncated") == "true",
                            failed_at=headers.get("mlsd.failed_at", ""),
                            offset=message.offset,
                        )
                    )
            if consumer.assignment() and end_offsets_lag(consumer) == 0:
                break
            if not polled and time.monotonic() > deadline:
                break
    finally:
        consumer.close()
    return letters[:max_records] if max_records is not None else letters


def place_consumer(
    consumer: KafkaConsumer, topics: Sequence[str], from_beginning: bool, since: datetime | None
) -> None:
    """Take every partition of `topics` directly and set where reading starts.

    For observers such as the monitor and the retraining loop: they need no group membership (no join wait, no
    competing for partitions with another observer), and they rebuild their state from the log, so their start is
    explicit rather than a committed offset. `since` starts at the first record the broker received at or after
    that moment.
    """
    from kafka import TopicPartition

    consumer.unsubscribe()
    partitions = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or [])]
    consumer.assign(partitions)
    if since is not None:
        found = consumer.offsets_for_times({tp: int(since.timestamp() * 1000) for tp in partitions})
        for tp in partitions:
            hit = found.get(tp)
            if hit is None or hit.timestamp < 0:  # nothing that recent yet
                consumer.seek_to_end(tp)
            else:
                consumer.seek(tp, hit.offset)
    elif from_beginning:
        consumer.seek_to_beginning(*partitions)
    else:
        consumer.seek_to_end(*partitions)


def percentile_summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    import numpy as np

    array = np.asarray(values)
    return {
        "count": int(array.size),
        "p50": float(np.percentile(array, 50)),
        "p95": float(np.percentile(array, 95)),
        "p99": float(np.percentile(array, 99)),
        "max": float(array.max()),
    }


def send_at_rate(
    producer: KafkaProducer,
    records: list[tuple[str, bytes, bytes]],
    rate: float,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Send (topic, key, value) records in order at `rate` per second (0 = as fast as possible), then flush."""
    started = time.perf_counter()
    for i, (topic, key, value) in enumerate(records):
        if rate > 0:
            delay = started + i / rate - time.perf_counter()
            if delay > 0.002:
                time.sleep(delay)
        producer.send(topic, value=value, key=key)
        if progress and i % 1000 == 0:
            progress(i, len(records))
    producer.flush()
    seconds = time.perf_counter() - started
    if progress:
        progress(len(records), len(records))
    return {"events": len(records), "seconds": seconds, "rate": len(records) / seconds if seconds else 0.0}


def read_topic(
    settings: Settings, topic: str, schema: type[BaseModel], max_records: int | None = None, join_s: float = 30.0
) -> tuple[list[Any], int]:
    """Every valid event on `topic` from the start up to its current end (or `max_records`); and how many were not.

    No consumer group: nothing is committed, and the read stops once it has caught up with the end offsets.
    """
    # group_id None is kafka-python's group-less mode: all partitions, no join wait, no commits.
    consumer = make_consumer(settings, [topic], group_id=None)  # type: ignore[arg-type]
    events: list[Any] = []
    invalid = 0
    deadline = time.monotonic() + join_s
    try:
        while max_records is None or len(events) < max_records:
            polled = consumer.poll(timeout_ms=500, max_records=5000)
            for batch in polled.values():
                for message in batch:
                    try:
                        events.append(decode(topic, message.value, schema))
                    except ValueError:
                        invalid += 1
            if consumer.assignment() and end_offsets_lag(consumer) == 0:
                break
            if not polled and time.monotonic() > deadline:
                break
    finally:
        consumer.close()
    return events[:max_records] if max_records is not None else events, invalid
