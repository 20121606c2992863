"""The micro-batch loop every stream processor runs: poll → validate → sink → dead letters → checkpoint → commit.

What no single message can do here is stop the loop:

- a message that does not decode (bad JSON, wrong types, an id with control characters, an implausible time, more
  bytes than the limit) is dead-lettered with its reason, as it arrived;
- an event far behind the stream's newest one (`max_lateness_s`) is dead-lettered as too late;
- an event the sink refuses (it returns `Rejection`s) is dead-lettered with the sink's reason;
- an event whose processing raises is found by rewinding to the last checkpoint and reading its batch again one
  event at a time, each checkpointed; the one that raises is dead-lettered with the exception, skipped when read
  again, and the rest of the batch goes on.

A dependency that fails (`DependencyUnavailable`: the online store, the state store) is not the events' fault: the
loop restores the sink's state from the last checkpoint, waits (doubling up to 30 s) and reads the same events
again, until the dependency is back.

With a `StateStore`, a sink that keeps state (`StatefulSink`) is checkpointed after every batch together with the
position reached on each partition, and restored from it when partitions are assigned (start, rebalance) — reading
resumes where the state left off, so a crash neither loses nor double-counts (pipelines/platform/state.py). The
group's committed offsets follow the checkpoint, for lag and for tools; the checkpoint is what counts.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from pydantic import BaseModel

from pipelines.platform.errors import DependencyUnavailable
from pipelines.platform.state import Checkpoint, Position, StateStore, TopicPartitionKey, fingerprint
from pipelines.platform.stream import DLQ_COPY_BYTES, Envelope, EventLimits, LoopStats, dead_letter, decode

if TYPE_CHECKING:
    from kafka import KafkaConsumer, KafkaProducer

log = logging.getLogger("mlsd.stream")
MAX_BACKOFF_S = 30.0
CLOCK = "clock"  # checkpoint entries with the stream's newest event time, the reference for lateness


def clock_entries(partitions: list[TopicPartitionKey], at: datetime) -> dict[tuple[str, int, str, str], bytes]:
    """Checkpoint entries saying that the stream of `partitions` has reached `at` (a seed sets them too)."""
    return {(topic, partition, CLOCK, "newest"): at.isoformat().encode() for topic, partition in partitions}


@dataclass(frozen=True)
class Rejection:
    """An event the sink could not use, and why (it goes to the dead-letter topic)."""

    envelope: Envelope
    reason: str


Sink = Callable[[list[Envelope]], "list[Rejection] | None"]


@runtime_checkable
class StatefulSink(Protocol):
    """A sink whose state the loop checkpoints with the source positions (see the module docstring)."""

    def __call__(self, batch: list[Envelope]) -> list[Rejection] | None: ...

    def restore(self, checkpoint: Checkpoint, partitions: list[TopicPartitionKey]) -> None:
        """Replace the in-memory state of `partitions` with the checkpoint's."""

    def release(self, partitions: list[TopicPartitionKey]) -> None:
        """Forget the state of partitions this processor no longer reads."""

    def changes(self) -> tuple[dict[Any, bytes | None], dict[tuple[str, int, str], int]]:
        """Entries changed since the last call, and (topic, partition, kind) → how many commits to keep them for."""

    def positions(self, consumed: dict[TopicPartitionKey, Position]) -> dict[TopicPartitionKey, Position]:
        """The positions to checkpoint: `consumed`, or earlier where events are held back unprocessed."""


class BatchObserver(Protocol):
    """What the loop reports for metrics (pipelines/platform/metrics.py: StreamMetrics); it must not raise."""

    def batch_committed(
        self, consumer: KafkaConsumer, consumed: int, processed: int, dead_letters: dict[str, int], seconds: float
    ) -> None: ...

    def idle(self, consumer: KafkaConsumer) -> None: ...


@dataclass(frozen=True)
class LoopConfig:
    batch_size: int = 2000
    batch_ms: int = 200
    limits: EventLimits = EventLimits()
    max_lateness_s: float | None = None  # None: any lateness is accepted
    dlq_copy_bytes: int = DLQ_COPY_BYTES
    idle_stop_s: float | None = None
    max_events: int | None = None


class _StopFlag:
    def __init__(self) -> None:
        self.stop = False

    def __call__(self, *_: Any) -> None:
        self.stop = True


def event_time(event: BaseModel) -> datetime | None:
    """Where an event sits on the stream's clock: its `event_time` if it has one, else its `timestamp`."""
    value = getattr(event, "event_time", None) or getattr(event, "timestamp", None)
    return value if isinstance(value, datetime) else None


class MicroBatchLoop:
    """One consumer, one producer, one sink; `run()` until stopped (see the module docstring)."""

    def __init__(
        self,
        consumer: KafkaConsumer,
        producer: KafkaProducer,
        schemas: dict[str, type[BaseModel]],
        sink: Sink,
        config: LoopConfig,
        store: StateStore | None = None,
        verify_log: Callable[[dict[TopicPartitionKey, Position]], set[TopicPartitionKey]] | None = None,
        on_batch: Callable[[LoopStats, int], None] | None = None,
        metrics: BatchObserver | None = None,
    ) -> None:
        self.consumer, self.producer, self.schemas, self.sink = consumer, producer, schemas, sink
        self.config, self.store, self.verify_log = config, store, verify_log
        self.on_batch, self.metrics = on_batch, metrics
        self.stats = LoopStats()
        self.stateful = store is not None and isinstance(sink, StatefulSink)
        self.watermark: datetime | None = None
        self.resets: list[TopicPartitionKey] = []  # partitions whose log no longer matched their checkpoint
        self._backoff = 1.0
        self._isolating: dict[TopicPartitionKey, int] = {}  # partition → last offset of a failed batch on it
        self._poisoned: set[tuple[str, int, int]] = set()  # (topic, partition, offset) dead-lettered by the sink
        self.rebalances = 0  # assignments and revocations so far

    # -- partitions and checkpoints

    def assigned(self, partitions: list[Any]) -> None:
        """Load the state of newly assigned partitions and resume each at its checkpointed position."""
        self.rebalances += 1
        if not self.stateful or not partitions:
            return
        assert self.store is not None
        keys = [(tp.topic, tp.partition) for tp in partitions]
        checkpoint = self.store.load(keys)
        for (_topic, _partition, kind, _key), value in checkpoint.entries.items():
            if kind == CLOCK and value:  # lateness counts from the newest event the state has seen
                at = datetime.fromisoformat(value.decode())
                self.watermark = at if self.watermark is None else max(self.watermark, at)
        stale = self.verify_log(checkpoint.positions) if self.verify_log and checkpoint.positions else set()
        self.sink.restore(checkpoint, keys)  # type: ignore[attr-defined]
        for tp in partitions:
            key = (tp.topic, tp.partition)
            position = checkpoint.positions.get(key)
            if key in stale:
                log.warning("%s/%s no longer matches its checkpoint (broker restarted?): reading it anew", *key)
                self.resets.append(key)
                self._poisoned = {p for p in self._poisoned if p[:2] != key}  # its offsets name other records now
                self.consumer.seek_to_beginning(tp)
            elif position is not None:
                self.consumer.seek(tp, position.offset)

    def revoked(self, partitions: list[Any]) -> None:
        self.rebalances += 1
        if self.stateful and partitions:
            self.sink.release([(tp.topic, tp.partition) for tp in partitions])  # type: ignore[attr-defined]

    def _rewind(self) -> None:
        """Back to the last checkpoint: state reloaded, every assigned partition at its stored position."""
        assigned = list(self.consumer.assignment())
        if self.stateful:
            self.revoked(assigned)
            self.assigned(assigned)
        else:
            committed = {tp: self.consumer.committed(tp) for tp in assigned}
            for tp, offset in committed.items():
                if offset is None:
                    self.consumer.seek_to_beginning(tp)
                else:
                    self.consumer.seek(tp, offset)

    # -- one batch

    def _poll(self) -> list[Any]:
        size, batch_ms = self.config.batch_size, self.config.batch_ms
        polled = self.consumer.poll(timeout_ms=batch_ms, max_records=size)
        records = [r for batch in polled.values() for r in batch]
        # A micro-batch closes `batch_ms` after its oldest event was produced: every batch costs a write per
        # view (and an offline file) whatever its size, so a trickle is gathered before it is written, while
        # events that already waited (a backlog, or arrivals during the previous batch) go at once.
        waited = time.time() - min(record.timestamp for record in records) / 1000 if records else 0.0
        until = time.monotonic() + min(max(batch_ms / 1000 - waited, 0.0), batch_ms / 1000)
        while records and len(records) < size and (left := until - time.monotonic()) > 0:
            rebalances = self.rebalances
            more = self.consumer.poll(timeout_ms=max(1, round(left * 1000)), max_records=size - len(records))
            if self.rebalances != rebalances:
                # Partitions moved inside that poll: what was read before it belongs to the old assignment (kept
                # partitions were sought back to their checkpoint). Sinking it would write the state of a partition
                # another processor now owns.
                records = []
            records += [r for batch in more.values() for r in batch]
        return records

    def _dead_letter(self, topic: str, value: bytes | None, reason: str, offset: int, partition: int, key: Any) -> None:
        dead_letter(self.producer, topic, value, reason, offset, partition, key, self.config.dlq_copy_bytes)
        self.stats.count_dead_letter(reason)

    def _decode(self, records: list[Any]) -> tuple[list[Envelope], dict[str, int]]:
        valid: list[Envelope] = []
        before = self.stats.dead_letter_reasons.copy()
        max_lateness = self.config.max_lateness_s
        for record in records:
            try:
                event = decode(record.topic, record.value, self.schemas[record.topic], self.config.limits)
            except ValueError as exc:
                self._dead_letter(record.topic, record.value, str(exc), record.offset, record.partition, record.key)
                continue
            at = event_time(event)
            if at is not None:
                if max_lateness is not None and self.watermark is not None:
                    behind = (self.watermark - at).total_seconds()
                    if behind > max_lateness:
                        reason = (
                            f"timestamp: {behind / 86_400:.1f} days behind the stream's newest event, more than "
                            f"the {max_lateness / 86_400:.0f}-day lateness limit"
                        )
                        self._dead_letter(
                            record.topic, record.value, reason, record.offset, record.partition, record.key
                        )
                        continue
                if self.watermark is None or at > self.watermark:
                    self.watermark = at
            valid.append(
                Envelope(
                    record.topic, event, record.timestamp, record.partition, record.offset, record.key, record.value
                )
            )
        reasons = {k: v - before.get(k, 0) for k, v in self.stats.dead_letter_reasons.items() if v != before.get(k, 0)}
        return valid, reasons

    def _sink(self, valid: list[Envelope]) -> None:
        rejected = self.sink(valid) or []
        for rejection in rejected:
            e = rejection.envelope
            self._dead_letter(e.topic, e.value, rejection.reason, e.offset, e.partition, e.key)

    def _start_isolation(self, records: list[Any], error: Exception) -> None:
        """Back to the last checkpoint, to read the failed batch again one event at a time (`_one_at_a_time`)."""
        self.stats.isolated += 1
        log.warning("a batch failed (%s: %s); reading it again one event at a time", type(error).__name__, error)
        for record in records:
            key = (record.topic, record.partition)
            self._isolating[key] = max(self._isolating.get(key, -1), record.offset)
        self._rewind()

    def _one_at_a_time(self, records: list[Any]) -> tuple[int, int]:
        """Each record sunk and checkpointed alone; one that raises is dead-lettered, remembered (skipped when read
        again) and the loop rewinds to the checkpoint just taken. Returns (consumed, processed)."""
        consumed = processed = 0
        for record in records:
            key, at = (record.topic, record.partition), (record.topic, record.partition, record.offset)
            valid = [] if at in self._poisoned else self._decode([record])[0]
            try:
                if valid:
                    self._sink(valid)
            except DependencyUnavailable:
                raise
            except Exception as exc:  # this one event breaks the sink: it goes, the others stay
                reason = f"processing: {type(exc).__name__}: {exc}"
                self._dead_letter(record.topic, record.value, reason, record.offset, record.partition, record.key)
                self._poisoned.add(at)
                self._rewind()
                return consumed, processed
            self._checkpoint([record])
            consumed, processed = consumed + 1, processed + len(valid)
            if record.offset >= self._isolating.get(key, -1):
                self._isolating.pop(key, None)
        return consumed, processed

    def _checkpoint(self, records: list[Any]) -> None:
        """Flush what the batch sent, then write state + positions (one transaction), then commit the offsets."""
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        self.producer.flush()
        consumed: dict[TopicPartitionKey, Position] = {}
        for record in records:
            key = (record.topic, record.partition)
            if key not in consumed or consumed[key].offset <= record.offset:
                consumed[key] = Position(record.offset + 1, fingerprint(record.key, record.value))
        if self.stateful:
            assert self.store is not None
            positions = self.sink.positions(consumed)  # type: ignore[attr-defined]
            changes, keep = self.sink.changes()  # type: ignore[attr-defined]
            if self.watermark is not None:
                changes.update(clock_entries(list(consumed), self.watermark))
            self.store.commit(changes, positions, keep)
        else:
            positions = consumed
        offsets = {TopicPartition(t, p): OffsetAndMetadata(pos.offset, "", -1) for (t, p), pos in positions.items()}
        if offsets:
            with contextlib.suppress(Exception):  # the checkpoint is what counts; a failed commit only shows as lag
                self.consumer.commit(offsets)

    def _batch(self, records: list[Any]) -> None:
        started = time.perf_counter()
        before_dead = dict(self.stats.dead_letter_reasons)
        try:
            if self._isolating:
                consumed, processed = self._one_at_a_time(records)
            else:
                valid = [e for e in self._decode(records)[0] if (e.topic, e.partition, e.offset) not in self._poisoned]
                if valid:
                    self._sink(valid)
                self._checkpoint(records)
                consumed, processed = len(records), len(valid)
        except DependencyUnavailable as exc:
            self.stats.retries += 1
            log.warning("%s; retrying in %.0f s from the last checkpoint", exc, self._backoff)
            self._rewind()
            time.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
            return
        except Exception as exc:
            self._start_isolation(records, exc)
            return
        self._backoff = 1.0
        self.stats.consumed += consumed
        self.stats.processed += processed
        self.stats.batches += 1
        if self.metrics is not None:
            reasons = {k: v - before_dead.get(k, 0) for k, v in self.stats.dead_letter_reasons.items()}
            self.metrics.batch_committed(
                self.consumer,
                consumed,
                processed,
                {k: v for k, v in reasons.items() if v},
                time.perf_counter() - started,
            )
        if self.on_batch:
            self.on_batch(self.stats, consumed)

    # -- the loop

    def run(self) -> LoopStats:
        flag = _StopFlag()
        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # signals can only be set from the main thread
                previous[sig] = signal.signal(sig, flag)
        started = time.perf_counter()
        last_message = time.monotonic()
        tick = getattr(self.sink, "tick", None)
        try:
            while not flag.stop:
                records = self._poll()
                if tick is not None:
                    tick(self._caught_up(records))
                if not records:
                    if self.metrics is not None:
                        self.metrics.idle(self.consumer)
                    if not self.consumer.assignment():  # still joining: idle time starts once partitions arrive
                        last_message = time.monotonic()
                    elif (
                        self.config.idle_stop_s is not None
                        and time.monotonic() - last_message > self.config.idle_stop_s
                    ):
                        break
                    continue
                last_message = time.monotonic()
                if self.stats.batches == 0:
                    started = time.perf_counter()  # throughput counts from the first message, not from the join
                self._batch(records)
                self.stats.seconds = time.perf_counter() - started
                if self.config.max_events is not None and self.stats.consumed >= self.config.max_events:
                    break
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.stats

    def _caught_up(self, records: list[Any]) -> dict[TopicPartitionKey, int]:
        """Partitions the poll returned nothing from and that are read to their high watermark, with that offset."""
        out = {}
        polled = {(r.topic, r.partition) for r in records}
        for tp in self.consumer.assignment():
            if (tp.topic, tp.partition) in polled:
                continue
            high = self.consumer.highwater(tp)
            position = self.consumer.position(tp) if high is not None else None
            if high is not None and position is not None and position >= high:
                out[(tp.topic, tp.partition)] = position
        return out


def run_micro_batches(
    consumer: KafkaConsumer,
    producer: KafkaProducer,
    schemas: dict[str, type[BaseModel]],
    sink: Sink,
    batch_size: int = 2000,
    batch_ms: int = 200,
    idle_stop_s: float | None = None,
    max_events: int | None = None,
    on_batch: Callable[[LoopStats, int], None] | None = None,
    metrics: BatchObserver | None = None,
    limits: EventLimits | None = None,
    max_lateness_s: float | None = None,
) -> LoopStats:
    """The loop without a state store: at-least-once (offsets committed after the sink and the dead letters).

    Stops on SIGINT/SIGTERM, after `idle_stop_s` seconds without messages, or after `max_events` messages.
    `metrics` hears of every committed batch (counts, dead letters by reason, seconds) and of every empty poll.
    """
    config = LoopConfig(
        batch_size=batch_size,
        batch_ms=batch_ms,
        limits=limits or EventLimits(),
        max_lateness_s=max_lateness_s,
        idle_stop_s=idle_stop_s,
        max_events=max_events,
    )
    return MicroBatchLoop(consumer, producer, schemas, sink, config, on_batch=on_batch, metrics=metrics).run()
