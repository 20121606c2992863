"""The bookkeeping every checkpointed sink keeps beside its entity states (pipelines/platform/microbatch.py).

- **home**: the source partition each entity's state belongs to, so a rebalance hands exactly that state over;
- **seen**: the event ids counted per partition, so a redelivered event is not counted twice (bounded: the oldest
  are forgotten in memory after `DEDUPE_MEMORY` ids, and in the checkpoint after `DEDUPE_COMMITS` batches);
- **parts**: the number of the next offline file per (partition, view): a batch read again after a crash rewrites
  the same file instead of adding a second copy of its rows;
- **dirty**: the entries changed since the last checkpoint, so a checkpoint writes only those.

A design's sink keeps its entity states (window state) and says how each kind is encoded (`changes(encode)`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from pipelines.platform.state import Checkpoint, EntryKey, TopicPartitionKey

DEDUPE_MEMORY = 500_000
DEDUPE_COMMITS = 20_000  # batches: hours at a high rate
FORGET_EVERY = 1_000  # checkpoints between two sweeps of the old ids (a sweep scans a partition's ids)
SEEN, PARTS = "seen", "parts"


class RecentIds:
    """A bounded set of ids, oldest forgotten first."""

    def __init__(self, capacity: int = DEDUPE_MEMORY) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, key: str) -> bool:
        """Remember `key`; False if it was already known."""
        if key in self._ids:
            return False
        self._ids[key] = None
        if len(self._ids) > self.capacity:
            self._ids.popitem(last=False)
        return True


@dataclass
class SinkBookkeeping:
    """Homes, seen ids, offline part numbers and changed entries of the partitions one processor reads."""

    owned: set[TopicPartitionKey] = field(default_factory=set)
    home: dict[tuple[str, str], TopicPartitionKey] = field(default_factory=dict)  # (kind, entity) → partition
    seen: dict[TopicPartitionKey, RecentIds] = field(default_factory=dict)
    parts: dict[tuple[str, int, str], int] = field(default_factory=dict)  # (topic, partition, view) → next number
    dirty: set[EntryKey] = field(default_factory=set)
    commit_seq: int = 0  # checkpoints taken, to age the remembered ids

    def first_time(self, partition: TopicPartitionKey, event_id: str) -> bool:
        """Remember that `event_id` was counted on `partition`; False if it already was (a redelivery)."""
        if not self.seen.setdefault(partition, RecentIds()).add(event_id):
            return False
        self.dirty.add((*partition, SEEN, event_id))
        return True

    def place(self, partition: TopicPartitionKey, kind: str, entity: str) -> None:
        """`entity`'s state (of `kind`) changed and lives in `partition`'s checkpoint."""
        self.home[(kind, entity)] = partition
        self.dirty.add((*partition, kind, entity))

    def touch(self, partition: TopicPartitionKey, kind: str, key: str) -> None:
        self.dirty.add((*partition, kind, key))

    def part_name(self, topic: str, partition: int, view: str) -> str:
        """The offline file name for the next batch of `view` rows from this partition."""
        number = self.parts.get((topic, partition, view), 0)
        self.parts[(topic, partition, view)] = number + 1
        self.dirty.add((topic, partition, PARTS, view))
        return f"{topic}-p{partition}-{number:010d}"

    def restore(self, checkpoint: Checkpoint, partitions: Iterable[TopicPartitionKey]) -> None:
        """Seen ids and part numbers of newly read partitions (the sink restores its entity states itself)."""
        keys = set(partitions)
        self.dirty = {d for d in self.dirty if (d[0], d[1]) not in keys}
        for topic, partition in keys:
            self.owned.add((topic, partition))
            seen = self.seen[(topic, partition)] = RecentIds()
            for event_id in checkpoint.of(topic, partition, SEEN):
                seen.add(event_id)
            for view, number in checkpoint.of(topic, partition, PARTS).items():
                self.parts[(topic, partition, view)] = int(number.decode())

    def release(self, partitions: Iterable[TopicPartitionKey]) -> list[tuple[str, str]]:
        """Forget partitions another processor reads now; returns the (kind, entity) states the sink must drop."""
        gone = set(partitions)
        self.owned -= gone
        for key in gone:
            self.seen.pop(key, None)
        self.parts = {k: v for k, v in self.parts.items() if (k[0], k[1]) not in gone}
        self.dirty = {d for d in self.dirty if (d[0], d[1]) not in gone}
        dropped = [entity for entity, home in self.home.items() if home in gone]
        for entity in dropped:
            del self.home[entity]
        return dropped

    def changes(
        self, encode: Callable[[str, str], bytes | None]
    ) -> tuple[dict[EntryKey, bytes | None], dict[tuple[str, int, str], int]]:
        """The changed entries (`encode(kind, key)` gives an entity state's bytes, None to delete it) and, now and
        then, how many commits the seen ids are kept for; clears the changed set (a checkpoint is being taken)."""
        out: dict[EntryKey, bytes | None] = {}
        for topic, partition, kind, key in self.dirty:
            if kind == SEEN:
                value: bytes | None = b""
            elif kind == PARTS:
                value = str(self.parts.get((topic, partition, key), 0)).encode()
            else:
                value = encode(kind, key)
            out[(topic, partition, kind, key)] = value
        self.dirty = set()
        self.commit_seq += 1
        keep = {}
        if self.commit_seq % FORGET_EVERY == 0:
            keep = {(t, p, SEEN): DEDUPE_COMMITS for t, p in self.owned}
        return out, keep
