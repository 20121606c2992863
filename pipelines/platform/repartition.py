"""Features keyed by another entity than the topic's key: a repartition topic, and event-time order after it.

A topic keyed by customer spreads one terminal's events over every partition, so N processors would each see a
part of every terminal. As in Kafka Streams, the first stage forwards each event to a repartition topic keyed by
the other entity (`Forwarder`), and the second stage reads that topic: every terminal's events in one partition.

A partition of the repartition topic mixes events from every source partition (the *origins*), each origin in
its own order but not in step with the others. The second stage therefore holds events back (`EventTimeBuffer`)
until every origin has passed their event time — each origin's progress travels as a watermark record the first
stage sends to every repartition partition — and releases them in (event time, order, id) order, the order the
batch backfill uses. So N processors compute what one computes, and what the backfill computes. An origin that is
read to its end and quiet for `idle_ms` is marked idle and stops holding the others back (Flink's idleness); an
event that then arrives behind the released ones is processed late and counted.

Released event ids are remembered (dedupe after a crash of either stage), and a partition's checkpoint never
passes an event still held back, so a restart reads held events again (pipelines/platform/microbatch.py).
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from pipelines.platform.sinkstate import RecentIds
from pipelines.platform.state import Position, TopicPartitionKey, fingerprint
from pipelines.platform.stream import Envelope, encode

if TYPE_CHECKING:
    from kafka import KafkaProducer

FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)


class Forwarded(BaseModel):
    """A record of a repartition topic: an event with its origin, or an origin's watermark."""

    model_config = ConfigDict(extra="forbid")

    kind: str  # "event" | "watermark"
    origin: str  # "<topic>/<partition>" the event (or the watermark) comes from
    at: datetime | None = None  # the event's time, or the origin's newest event time (None: nothing read yet)
    idle: bool = False  # watermark: the origin is read to its end and quiet
    id: str = ""  # the event's id, for dedupe
    order: int = 0  # tie-break at equal times (the backfill's order)
    payload: dict[str, Any] = Field(default_factory=dict)

    @property
    def event_time(self) -> datetime | None:
        return self.at if self.kind == "event" else None


def origin_name(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


def partition_for(key: str, partitions: int) -> int:
    """The partition the producer's default partitioner (Kafka's murmur2) sends `key` to."""
    from kafka.partitioner.default import murmur2

    return int((murmur2(key.encode()) & 0x7FFFFFFF) % partitions)


class Forwarder:
    """The first stage's side: events re-keyed to the repartition topic, and the watermark of each origin it reads."""

    def __init__(self, producer: KafkaProducer, topic: str, partitions: int, idle_ms: int) -> None:
        self.producer, self.topic, self.partitions, self.idle_ms = producer, topic, partitions, idle_ms
        self.newest: dict[str, datetime] = {}  # origin → newest event time forwarded (part of the checkpoint)
        self._sent: dict[str, tuple[datetime | None, bool]] = {}  # origin → the last watermark sent
        # origin → since when (monotonic) every poll found it read to its end. Only polls count: while the loop
        # is busy elsewhere nobody looks, so a gap longer than half of `idle_ms` between polls starts over.
        self._caught_up_since: dict[str, float] = {}
        self._last_look = float("-inf")

    def forward(self, key: str, origin: str, at: datetime, order: int, event_id: str, payload: dict[str, Any]) -> None:
        record = Forwarded(kind="event", origin=origin, at=at, id=event_id, order=order, payload=payload)
        self.producer.send(self.topic, encode(record), key=key.encode())
        if origin not in self.newest or at > self.newest[origin]:
            self.newest[origin] = at
        self._caught_up_since.pop(origin, None)

    def watermarks(self, owned: set[str], caught_up: set[str] | None = None) -> int:
        """Send each owned origin's watermark to every repartition partition when it changed; returns how many.

        `caught_up`: the origins the last poll found read to their end (None: no poll since the last call)."""
        sent = 0
        now = time.monotonic()
        if caught_up is not None:
            if now - self._last_look > self.idle_ms / 2000:
                self._caught_up_since.clear()
            self._last_look = now
            for origin in owned:
                if origin in caught_up:
                    self._caught_up_since.setdefault(origin, now)
                else:
                    self._caught_up_since.pop(origin, None)
        for origin in sorted(owned):
            idle = now - self._caught_up_since.get(origin, now) > self.idle_ms / 1000
            mark = (self.newest.get(origin), idle)
            if self._sent.get(origin) == mark:
                continue
            record = encode(Forwarded(kind="watermark", origin=origin, at=mark[0], idle=mark[1]))
            for partition in range(self.partitions):
                self.producer.send(self.topic, record, partition=partition)
            self._sent[origin] = mark
            sent += 1
        return sent

    def rebalanced(self) -> None:
        """Partitions moved: what was read to its end must be seen so again, for `idle_ms`, to count as quiet."""
        self._caught_up_since.clear()

    def forget(self, origins: set[str]) -> None:
        """Origins this processor no longer reads: another one sends their watermarks now."""
        for origin in origins:
            self.newest.pop(origin, None)
            self._sent.pop(origin, None)
            self._caught_up_since.pop(origin, None)


@dataclass(order=True)
class _Held:
    at: datetime
    order: int
    id: str
    offset: int = field(compare=False)
    before: str = field(compare=False)  # fingerprint of the record before it in its partition
    record: Forwarded = field(compare=False)


@dataclass
class Channel:
    """One repartition partition as this processor reads it: its own watermarks (a watermark read here vouches
    only for the events before it *in this partition*), its held events, the ids it released."""

    marks: dict[str, tuple[datetime | None, bool]] = field(default_factory=dict)  # origin → (watermark, idle)
    held: list[_Held] = field(default_factory=list)
    seen: RecentIds = field(default_factory=RecentIds)  # released ids (part of the checkpoint)
    released: datetime | None = None  # the newest time released so far
    last_fingerprint: str = ""  # of the last record read

    def mark(self, origin: str, at: datetime | None, idle: bool) -> None:
        previous = self.marks.get(origin, (None, False))[0]
        if previous is not None and (at is None or at < previous):
            at = previous  # a restarted first stage may send an older watermark: never go back
        self.marks[origin] = (at, idle)


class EventTimeBuffer:
    """The second stage's side: events held until every origin passed them, released in event-time order."""

    def __init__(self, topic: str, origins: list[str]) -> None:
        self.topic = topic
        self.origins = list(origins)
        self.channels: dict[int, Channel] = {}
        self.late = 0
        self.duplicates = 0

    def channel(self, partition: int) -> Channel:
        return self.channels.setdefault(partition, Channel())

    def resume(self, partition: int, position: Position) -> None:
        """Reading of `partition` restarts at `position`: the record before it is the one it fingerprints."""
        self.channel(partition).last_fingerprint = position.fingerprint

    def add(self, envelope: Envelope) -> None:
        record = envelope.event
        assert isinstance(record, Forwarded)
        channel = self.channel(envelope.partition)
        before, channel.last_fingerprint = channel.last_fingerprint, fingerprint(envelope.key, envelope.value)
        if record.kind == "watermark":
            channel.mark(record.origin, record.at, record.idle)
            return
        if record.id in channel.seen:
            self.duplicates += 1
            return
        assert record.at is not None
        heapq.heappush(channel.held, _Held(record.at, record.order, record.id, envelope.offset, before, record))

    def watermark(self, partition: int) -> datetime | None:
        """The time every origin has passed in `partition`: the lowest watermark of the origins not idle."""
        marks = self.channel(partition).marks
        lowest = FAR_FUTURE
        for origin in self.origins:
            at, idle = marks.get(origin, (None, False))
            if idle:
                continue
            if at is None:
                return None
            lowest = min(lowest, at)
        return lowest

    def release(self) -> list[tuple[int, Forwarded]]:
        """(partition, event) strictly before its partition's watermark, in order within each partition (ties wait:
        an origin may still send one at that very time; once every origin is idle, everything goes)."""
        out: list[tuple[int, Forwarded]] = []
        for partition, channel in sorted(self.channels.items()):
            limit = self.watermark(partition)
            while channel.held and limit is not None and (channel.held[0].at < limit or limit == FAR_FUTURE):
                item = heapq.heappop(channel.held)
                if item.id in channel.seen:
                    self.duplicates += 1
                    continue
                channel.seen.add(item.id)
                if channel.released is not None and item.at < channel.released:
                    self.late += 1
                channel.released = item.at if channel.released is None else max(channel.released, item.at)
                out.append((partition, item.record))
        return out

    def hold_back(self, consumed: dict[TopicPartitionKey, Position]) -> dict[TopicPartitionKey, Position]:
        """Positions that never pass an event still held: a restart must read it again."""
        out = dict(consumed)
        for partition, channel in self.channels.items():
            if channel.held:
                earliest = min(channel.held, key=lambda item: item.offset)
                out[(self.topic, partition)] = Position(earliest.offset, earliest.before)
        return out

    def release_partitions(self, partitions: set[int]) -> None:
        """Partitions another processor reads now: drop what this one knew of them (it reads them again)."""
        for partition in partitions:
            self.channels.pop(partition, None)
