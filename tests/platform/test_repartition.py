"""Event-time order after a repartition (pipelines/platform/repartition.py), pure: no broker."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from pipelines.platform.repartition import EventTimeBuffer, Forwarded, Forwarder, partition_for
from pipelines.platform.state import Position, fingerprint
from pipelines.platform.stream import Envelope, encode

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 1, tzinfo=UTC)
ORIGINS = ["in/0", "in/1"]


class Feed:
    """Records of one repartition partition, with consecutive offsets, as the loop hands them to a sink."""

    def __init__(self, buffer: EventTimeBuffer, partition: int = 0) -> None:
        self.buffer, self.partition, self.offset = buffer, partition, 0

    def send(self, record: Forwarded) -> None:
        value = encode(record)
        self.buffer.add(Envelope("by-key", record, 0, self.partition, self.offset, None, value))
        self.offset += 1

    def event(self, origin: str, minutes: float, event_id: str, order: int = 1) -> None:
        self.send(Forwarded(kind="event", origin=origin, at=T0 + timedelta(minutes=minutes), id=event_id, order=order))

    def mark(self, origin: str, minutes: float | None, idle: bool = False, through: int | None = None) -> None:
        at = None if minutes is None else T0 + timedelta(minutes=minutes)
        self.send(Forwarded(kind="watermark", origin=origin, at=at, idle=idle, through=through))


def ids(released: list[tuple[int, Forwarded]]) -> list[str]:
    return [record.id for _, record in released]


def test_events_wait_until_every_origin_has_passed_them_then_come_in_event_time_order() -> None:
    buffer = EventTimeBuffer("by-key", ORIGINS)
    feed = Feed(buffer)
    feed.event("in/0", 5, "a5")
    feed.event("in/0", 1, "a1")  # out of order across a batch boundary
    feed.mark("in/0", 5)
    assert ids(buffer.release()) == []  # in/1 has not said where it is
    feed.event("in/1", 3, "b3")
    feed.mark("in/1", 3)
    assert ids(buffer.release()) == ["a1"]  # strictly before 3: b3 waits, in/1 may still send another at 3
    feed.event("in/1", 3, "b3-label", order=0)
    feed.mark("in/1", 9)
    assert ids(buffer.release()) == ["b3-label", "b3"]  # at equal times the lower order first; a5 ties in/0
    feed.mark("in/0", 6)
    assert ids(buffer.release()) == ["a5"]
    assert buffer.late == 0


def test_an_idle_origin_stops_holding_the_others_and_a_late_event_is_counted() -> None:
    buffer = EventTimeBuffer("by-key", ORIGINS)
    feed = Feed(buffer)
    feed.event("in/0", 5, "a5")
    feed.mark("in/0", 5)
    feed.mark("in/1", None, idle=True)  # read to its end and quiet: no event of it is on its way
    assert ids(buffer.release()) == []  # a5 ties with in/0's own watermark
    feed.mark("in/0", 6, idle=True)
    assert ids(buffer.release()) == ["a5"]  # every origin idle: everything goes
    feed.event("in/1", 2, "b2")  # woke up behind what was released
    feed.mark("in/1", 2)
    feed.mark("in/0", 6, idle=True)
    assert ids(buffer.release()) == [] and buffer.watermark(0) == T0 + timedelta(minutes=2)
    feed.mark("in/1", 3, idle=True)
    assert ids(buffer.release()) == ["b2"] and buffer.late == 1


def test_an_idle_origin_whose_log_grew_holds_the_others_again_until_its_events_are_forwarded() -> None:
    ends = {"in/1": 7}  # the broker's end offset of in/1's log
    buffer = EventTimeBuffer("by-key", ORIGINS, log_ends=lambda origins: {o: ends[o] for o in origins})
    feed = Feed(buffer)
    feed.mark("in/1", 3, idle=True, through=7)  # read to offset 7 and quiet
    feed.event("in/0", 5, "a5")
    feed.mark("in/0", 6)
    assert ids(buffer.release()) == ["a5"]  # in/1's log still ends at 7: idle, as it said
    ends["in/1"] = 8  # an event was appended to in/1, and its reader (crashed, say) has not forwarded it
    feed.event("in/0", 7, "a7")
    feed.mark("in/0", 8)
    assert ids(buffer.release()) == [] and buffer.watermark(0, ends) == T0 + timedelta(minutes=3)
    feed.event("in/1", 6, "b6")  # the reader (restarted) forwards it
    feed.mark("in/1", 6)
    assert ids(buffer.release()) == []  # in/1 has not passed 6 yet
    feed.mark("in/1", 6, idle=True, through=8)
    assert ids(buffer.release()) == ["b6", "a7"] and buffer.late == 0


def test_released_ids_are_not_released_again_and_a_watermark_never_goes_back() -> None:
    buffer = EventTimeBuffer("by-key", ORIGINS)
    feed = Feed(buffer)
    for origin in ORIGINS:
        feed.mark(origin, 10)
    feed.event("in/0", 1, "x")
    assert ids(buffer.release()) == ["x"]
    feed.event("in/0", 1, "x")  # the first stage forwarded it again after a crash
    assert ids(buffer.release()) == [] and buffer.duplicates == 1
    feed.mark("in/0", 4)  # a restarted first stage reports an older watermark
    assert buffer.channel(0).marks["in/0"].at == T0 + timedelta(minutes=10)


def test_a_checkpoint_never_passes_an_event_still_held() -> None:
    buffer = EventTimeBuffer("by-key", ORIGINS)
    feed = Feed(buffer, partition=3)
    feed.mark("in/0", 1)  # offset 0
    feed.event("in/0", 2, "held")  # offset 1: held, in/1 is unknown
    feed.mark("in/0", 4)  # offset 2
    consumed = {("by-key", 3): Position(3, "whatever")}
    before_held = fingerprint(None, encode(Forwarded(kind="watermark", origin="in/0", at=T0 + timedelta(minutes=1))))
    assert buffer.hold_back(consumed) == {("by-key", 3): Position(1, before_held)}
    feed.mark("in/1", 5)
    assert ids(buffer.release()) == ["held"]
    assert buffer.hold_back(consumed) == consumed


def test_a_watermark_vouches_only_for_the_partition_it_was_read_from() -> None:
    buffer = EventTimeBuffer("by-key", ORIGINS)
    zero, one = Feed(buffer, partition=0), Feed(buffer, partition=1)
    zero.event("in/0", 2, "a2")
    for origin in ORIGINS:
        one.mark(origin, 10)  # partition 1 is read further: in/0's events for partition 0 may still be unread
    assert ids(buffer.release()) == []
    zero.event("in/0", 1, "a1")  # written before the watermark on partition 0 too, but read after partition 1's
    for origin in ORIGINS:
        zero.mark(origin, 10)
    assert ids(buffer.release()) == ["a1", "a2"] and buffer.late == 0


def test_keys_are_spread_over_every_partition_and_always_to_the_same_one() -> None:
    spread = [partition_for(f"C{i:05d}", 4) for i in range(1000)]
    assert set(spread) == {0, 1, 2, 3} and min(spread.count(p) for p in range(4)) > 150
    assert spread == [partition_for(f"C{i:05d}", 4) for i in range(1000)]


class _Sent:
    """Records what a Forwarder sends (the producer's side of it is Kafka's; here only the watermarks matter)."""

    def __init__(self) -> None:
        self.records: list[Forwarded] = []

    def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int | None = None) -> None:
        self.records.append(Forwarded.model_validate_json(value))


def test_an_origin_is_idle_only_after_polls_found_it_read_to_its_end_for_idle_ms() -> None:
    sent = _Sent()
    forwarder = Forwarder(sent, "by-x", partitions=1, idle_ms=200)  # type: ignore[arg-type]
    at = datetime(2026, 1, 1, tzinfo=UTC)
    forwarder.forward("k", "in/0", at, 0, "a", {})

    def idle_after_polls(seconds: float, every: float) -> bool:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            forwarder.watermarks({"in/0"}, {"in/0": 1})
            time.sleep(every)
        forwarder.watermarks({"in/0"}, {"in/0": 1})
        return sent.records[-1].idle

    assert not idle_after_polls(0.1, 0.02)  # read to its end, but not for long enough yet
    assert idle_after_polls(0.2, 0.02)
    forwarder.forward("k", "in/0", at, 0, "b", {})  # an event: busy again
    forwarder.watermarks({"in/0"})
    assert not sent.records[-1].idle
    forwarder.watermarks({"in/0"}, {"in/0": 1})
    time.sleep(0.3)  # the loop was busy elsewhere: nobody watched the origin meanwhile
    forwarder.watermarks({"in/0"}, {"in/0": 1})
    assert not sent.records[-1].idle
