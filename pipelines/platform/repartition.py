"""Features keyed by another entity than the topic's key: a repartition topic, and event-time order after it.

A topic keyed by customer spreads one terminal's events over every partition, so N processors would each see a
part of every terminal. As in Kafka Streams, the first stage forwards each event to a repartition topic keyed by
the other entity (`Forwarder`), and the second stage reads that topic: every terminal's events in one partition.

A partition of the repartition topic mixes events from every source partition (the *origins*), each origin in
its own order but not in step with the others. The second stage therefore holds events back (`EventTimeBuffer`)
until every origin has passed their event time — each origin's progress travels as a watermark record the first
stage sends to every repartition partition — and releases them in (event time, order, id) order, the order the
batch backfill uses. So N processors compute what one computes, and what the backfill computes.

An origin that is read to its end and quiet for `idle_ms` is marked idle, with the offset it was read to, and stops
holding the others back (Flink's idleness) — but only while its log still ends there: the second stage asks the
broker for the origin's end offset, and once events were appended the origin holds the others at its last
watermark again until its reader forwards them. So a reader that crashed while its origins were quiet cannot let the
others run ahead of the events that arrive meanwhile. An event that still arrives behind the released ones (appended
after that check) is processed late and counted.

Released event ids are remembered (dedupe after a crash of either stage), and a partition's checkpoint never
passes an event still held back, so a restart reads held events again (pipelines/platform/microbatch.py).
"""

from __future__ import annotations

import contextlib
import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from pipelines.platform.sinkstate import RecentIds
from pipelines.platform.state import Position, TopicPartitionKey, fingerprint
from pipelines.platform.stream import Envelope, encode

if TYPE_CHECKING:
    from kafka import KafkaProducer

    from pipelines.settings import Settings

FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
GROWN = 2**63 - 1  # the end offset of an origin the broker did not answer for


class Forwarded(BaseModel):
    """A record of a repartition topic: an event with its origin, or an origin's watermark."""

    model_config = ConfigDict(extra="forbid")

    kind: str  # "event" | "watermark"
    origin: str  # "<topic>/<partition>" the event (or the watermark) comes from
    at: datetime | None = None  # the event's time, or the origin's newest event time (None: nothing read yet)
    idle: bool = False  # watermark: the origin is read to its end and quiet
    through: int | None = None  # watermark, idle: the offset the origin was read to (its log's end then)
    id: str = ""  # the event's id, for dedupe
    order: int = 0  # tie-break at equal times (the backfill's order)
    payload: dict[str, Any] = Field(default_factory=dict)

    @property
    def event_time(self) -> datetime | None:
        return self.at if self.kind == "event" else None


def origin_name(topic: str, partition: int) -> str:
    return f"{topic}/{partition}"


def parse_origin(origin: str) -> TopicPartitionKey:
    topic, _, partition = origin.rpartition("/")
    return topic, int(partition)


def broker_log_ends(settings: Settings) -> Callable[[list[str]], dict[str, int]]:
    """`log_ends` for an `EventTimeBuffer`: the end offsets of origins, from the broker.

    An origin the broker does not answer for (three tries) counts as grown: an idle mark counts only once checked."""
    from kafka import TopicPartition

    from pipelines.platform.stream import log_ends, make_consumer

    consumer: list[Any] = []  # one connection, opened at the first call

    def ends_of(origins: list[str]) -> dict[str, int]:
        partitions = {TopicPartition(*parse_origin(o)): o for o in origins}
        ends: dict[Any, int] = {}
        for _attempt in range(3):
            with contextlib.suppress(Exception):  # the broker is away: held back, asked again at the next batch
                if not consumer:
                    consumer.append(make_consumer(settings, [], group_id=None))  # type: ignore[arg-type]
                ends = log_ends(consumer[0], partitions)
            if len(ends) == len(partitions):
                break
            time.sleep(0.1)
        return {origin: ends.get(tp, GROWN) for tp, origin in partitions.items()}

    return ends_of


def partition_for(key: str, partitions: int) -> int:
    """The partition the producer's default partitioner (Kafka's murmur2) sends `key` to."""
    from kafka.partitioner.default import murmur2

    return int((murmur2(key.encode()) & 0x7FFFFFFF) % partitions)


class Forwarder:
    """The first stage's side: events re-keyed to the repartition topic, and the watermark of each origin it reads."""

    def __init__(self, producer: KafkaProducer, topic: str, partitions: int, idle_ms: int) -> None:
        self.producer, self.topic, self.partitions, self.idle_ms = producer, topic, partitions, idle_ms
        self.newest: dict[str, datetime] = {}  # origin → newest event time forwarded (part of the checkpoint)
        self._sent: dict[str, tuple[datetime | None, bool, int | None]] = {}  # origin → the last watermark sent
        # origin → since when (monotonic) every poll found it read to its end. Only polls count: while the loop
        # is busy elsewhere nobody looks, so a gap longer than half of `idle_ms` between polls starts over.
        self._caught_up_since: dict[str, float] = {}
        self._read_to: dict[str, int] = {}  # origin → the offset the last poll that found it caught up saw
        self._last_look = float("-inf")

    def forward(self, key: str, origin: str, at: datetime, order: int, event_id: str, payload: dict[str, Any]) -> None:
        record = Forwarded(kind="event", origin=origin, at=at, id=event_id, order=order, payload=payload)
        self.producer.send(self.topic, encode(record), key=key.encode())
        if origin not in self.newest or at > self.newest[origin]:
            self.newest[origin] = at
        self._caught_up_since.pop(origin, None)

    def watermarks(self, owned: set[str], caught_up: dict[str, int] | None = None) -> int:
        """Send each owned origin's watermark to every repartition partition when it changed; returns how many.

        `caught_up`: the origins the last poll found read to their end, with that offset (None: no poll since the
        last call)."""
        sent = 0
        now = time.monotonic()
        if caught_up is not None:
            if now - self._last_look > self.idle_ms / 2000:
                self._caught_up_since.clear()
            self._last_look = now
            for origin in owned:
                if origin in caught_up:
                    self._caught_up_since.setdefault(origin, now)
                    self._read_to[origin] = caught_up[origin]
                else:
                    self._caught_up_since.pop(origin, None)
        for origin in sorted(owned):
            idle = now - self._caught_up_since.get(origin, now) > self.idle_ms / 1000
            mark = (self.newest.get(origin), idle, self._read_to.get(origin) if idle else None)
            if self._sent.get(origin) == mark:
                continue
            record = encode(Forwarded(kind="watermark", origin=origin, at=mark[0], idle=idle, through=mark[2]))
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
            self._read_to.pop(origin, None)


@dataclass(frozen=True)
class Mark:
    """An origin's watermark as one repartition partition read it."""

    at: datetime | None  # every event of the origin before this time is in the partition before the mark
    idle: bool = False  # the origin was read to its end (`through`) and quiet
    through: int | None = None

    def encode(self) -> list[Any]:
        return [self.at.isoformat() if self.at else None, self.idle, self.through]

    @classmethod
    def decode(cls, value: list[Any]) -> Mark:
        at, idle, *rest = value
        return cls(datetime.fromisoformat(at) if at else None, bool(idle), rest[0] if rest else None)


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

    marks: dict[str, Mark] = field(default_factory=dict)  # origin → its last watermark here
    held: list[_Held] = field(default_factory=list)
    seen: RecentIds = field(default_factory=RecentIds)  # released ids (part of the checkpoint)
    released: datetime | None = None  # the newest time released so far
    last_fingerprint: str = ""  # of the last record read

    def mark(self, origin: str, at: datetime | None, idle: bool, through: int | None = None) -> None:
        previous = self.marks[origin].at if origin in self.marks else None
        if previous is not None and (at is None or at < previous):
            at = previous  # a restarted first stage may send an older watermark: never go back
        self.marks[origin] = Mark(at, idle, through if idle else None)


class EventTimeBuffer:
    """The second stage's side: events held until every origin passed them, released in event-time order."""

    def __init__(
        self, topic: str, origins: list[str], log_ends: Callable[[list[str]], dict[str, int]] | None = None
    ) -> None:
        """`log_ends(origins)`: the current end offset of each origin's log (the broker's), to check idle marks."""
        self.topic = topic
        self.origins = list(origins)
        self.log_ends = log_ends
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
            channel.mark(record.origin, record.at, record.idle, record.through)
            return
        if record.id in channel.seen:
            self.duplicates += 1
            return
        assert record.at is not None
        heapq.heappush(channel.held, _Held(record.at, record.order, record.id, envelope.offset, before, record))

    def watermark(self, partition: int, ends: dict[str, int] | None = None) -> datetime | None:
        """The time every origin has passed in `partition`: the lowest watermark of the origins not idle.

        `ends`: each idle origin's log end now; an origin whose log grew past its idle mark holds again."""
        marks = self.channel(partition).marks
        lowest = FAR_FUTURE
        for origin in self.origins:
            mark = marks.get(origin, Mark(None))
            if mark.idle and not self._grew(origin, mark, ends):
                continue
            if mark.at is None:
                return None
            lowest = min(lowest, mark.at)
        return lowest

    @staticmethod
    def _grew(origin: str, mark: Mark, ends: dict[str, int] | None) -> bool:
        end = (ends or {}).get(origin)
        # `end > through` also holds on the embedded broker, whose end offset is the last batch's first offset + 1
        return end is not None and mark.through is not None and end > mark.through

    def _idle_ends(self) -> dict[str, int] | None:
        """The log ends of the origins some partition holds an idle mark of (one request for all)."""
        idle = sorted({o for c in self.channels.values() if c.held for o, m in c.marks.items() if m.idle})
        return self.log_ends(idle) if idle and self.log_ends is not None else None

    def release(self) -> list[tuple[int, Forwarded]]:
        """(partition, event) strictly before its partition's watermark, in order within each partition (ties wait:
        an origin may still send one at that very time; once every origin is idle, everything goes)."""
        out: list[tuple[int, Forwarded]] = []
        ends = self._idle_ends()
        for partition, channel in sorted(self.channels.items()):
            limit = self.watermark(partition, ends)
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
