"""Kafka I/O shared by every design: clients, topics, JSON serde, dead-letter topics and the micro-batch loop.

The loop's contract is at-least-once: a batch's offsets are committed only after its sink write returned and its
dead letters were flushed, so a crash replays the batch and idempotent sinks make the replay harmless.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

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


def make_consumer(settings: Settings, topics: Iterable[str], group_id: str, **overrides: Any) -> KafkaConsumer:
    """A manual-commit consumer; short session timeouts make group joins take seconds, not tens of seconds."""
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
    consumer.subscribe(list(topics))
    return consumer


def ensure_topics(settings: Settings, topics: Iterable[str], partitions: int = 1) -> list[str]:
    """Create the topics that do not exist yet (the embedded broker does not auto-create); return the new ones."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    check_broker(settings.kafka_bootstrap)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, client_id="mlsd-admin")
    try:
        existing = set(admin.list_topics())
        missing = [t for t in topics if t not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                admin.create_topics(
                    [NewTopic(name=t, num_partitions=partitions, replication_factor=1) for t in missing]
                )
        return missing
    finally:
        admin.close()


def end_offsets_lag(consumer: KafkaConsumer) -> int:
    """Messages not yet consumed on the assigned partitions (consumer lag).

    An end offset is the larger of the broker's ListOffsets answer and the high watermark of the last fetch: the
    embedded broker answers ListOffsets with the last record batch's base offset + 1, short of a multi-record batch.
    """
    assigned = consumer.assignment()
    if not assigned:
        return 0
    ends = consumer.end_offsets(list(assigned))
    return sum(max(0, max(ends[tp], consumer.highwater(tp) or 0) - (consumer.position(tp) or 0)) for tp in assigned)


@dataclass
class Envelope:
    """One decoded, validated event with where it came from."""

    topic: str
    event: BaseModel
    produced_ms: int


@dataclass
class LoopStats:
    consumed: int = 0
    processed: int = 0
    dead_lettered: int = 0
    batches: int = 0
    seconds: float = 0.0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.processed / self.seconds if self.seconds else 0.0


def decode(topic: str, value: bytes | None, schema: type[BaseModel]) -> BaseModel:
    """Parse and validate one message; raise ValueError with a short reason for the dead-letter topic."""
    if value is None:
        raise ValueError("empty message")
    try:
        return schema.model_validate_json(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "message"
        if first.get("type") == "json_invalid":
            raise ValueError("not valid JSON") from None
        raise ValueError(f"{where}: {first.get('msg', 'invalid')}") from None


def dead_letter(producer: KafkaProducer, topic: str, value: bytes | None, reason: str, offset: int) -> None:
    """Keep the original bytes with the reason, so nothing is lost and the event can be replayed after a fix."""
    payload = {
        "reason": reason,
        "source_topic": topic,
        "source_offset": offset,
        "original": (value or b"").decode("utf-8", errors="replace"),
        "failed_at": datetime.now().astimezone().isoformat(),
    }
    producer.send(topic + DLQ_SUFFIX, encode(payload))


class BatchObserver(Protocol):
    """What the loop reports for metrics (pipelines/platform/metrics.py: StreamMetrics); it must not raise."""

    def batch_committed(
        self, consumer: KafkaConsumer, consumed: int, processed: int, dead_letters: dict[str, int], seconds: float
    ) -> None: ...

    def idle(self, consumer: KafkaConsumer) -> None: ...


class _StopFlag:
    def __init__(self) -> None:
        self.stop = False

    def __call__(self, *_: Any) -> None:
        self.stop = True


def run_micro_batches(
    consumer: KafkaConsumer,
    producer: KafkaProducer,
    schemas: dict[str, type[BaseModel]],
    sink: Callable[[list[Envelope]], None],
    batch_size: int = 2000,
    batch_ms: int = 200,
    idle_stop_s: float | None = None,
    max_events: int | None = None,
    on_batch: Callable[[LoopStats, int], None] | None = None,
    metrics: BatchObserver | None = None,
) -> LoopStats:
    """Poll → validate → sink(valid events) → dead-letter the rest → flush → commit, until stopped.

    A micro-batch closes at `batch_size` events or `batch_ms` after its oldest event was produced, whichever
    comes first. Stops on SIGINT/SIGTERM, after `idle_stop_s` seconds without messages, or after `max_events` messages.
    `metrics` hears of every committed batch (counts, dead letters by reason, seconds) and of every empty poll.
    """
    # One loop on purpose: the order poll → sink → dead letters → flush → commit is the at-least-once contract, and
    # it reads best in one place.
    stats = LoopStats()
    flag = _StopFlag()
    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # signals can only be set from the main thread
            previous[sig] = signal.signal(sig, flag)
    started = time.perf_counter()
    last_message = time.monotonic()
    try:
        while not flag.stop:
            polled = consumer.poll(timeout_ms=batch_ms, max_records=batch_size)
            records = [r for batch in polled.values() for r in batch]
            # A micro-batch closes `batch_ms` after its oldest event was produced: every batch costs a write per
            # view (and an offline file) whatever its size, so a trickle is gathered before it is written, while
            # events that already waited (a backlog, or arrivals during the previous batch) go at once.
            waited = time.time() - min(record.timestamp for record in records) / 1000 if records else 0.0
            until = time.monotonic() + min(max(batch_ms / 1000 - waited, 0.0), batch_ms / 1000)
            while records and len(records) < batch_size and (left := until - time.monotonic()) > 0:
                more = consumer.poll(timeout_ms=max(1, round(left * 1000)), max_records=batch_size - len(records))
                records += [r for batch in more.values() for r in batch]
            if not records:
                if metrics is not None:
                    metrics.idle(consumer)
                if not consumer.assignment():  # still joining the group: idle time starts once partitions arrive
                    last_message = time.monotonic()
                elif idle_stop_s is not None and time.monotonic() - last_message > idle_stop_s:
                    break
                continue
            last_message = time.monotonic()
            batch_started = time.perf_counter()
            if stats.batches == 0:
                started = batch_started  # throughput counts from the first message, not from the join
            valid: list[Envelope] = []
            batch_reasons: dict[str, int] = {}
            for record in records:
                try:
                    event = decode(record.topic, record.value, schemas[record.topic])
                except ValueError as exc:
                    reason = str(exc)
                    dead_letter(producer, record.topic, record.value, reason, record.offset)
                    stats.dead_lettered += 1
                    key = reason.split(":")[0]
                    stats.dead_letter_reasons[key] = stats.dead_letter_reasons.get(key, 0) + 1
                    batch_reasons[key] = batch_reasons.get(key, 0) + 1
                    continue
                valid.append(Envelope(record.topic, event, record.timestamp))
            if valid:
                sink(valid)
            producer.flush()
            consumer.commit()
            stats.consumed += len(records)
            stats.processed += len(valid)
            stats.batches += 1
            stats.seconds = time.perf_counter() - started
            if metrics is not None:
                seconds = time.perf_counter() - batch_started
                metrics.batch_committed(consumer, len(records), len(valid), batch_reasons, seconds)
            if on_batch:
                on_batch(stats, len(records))
            if max_events is not None and stats.consumed >= max_events:
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return stats


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
