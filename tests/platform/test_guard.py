"""A dependency on the request path within a budget (pipelines/platform/guard.py): the breaker opens, skips, probes
and closes by itself; a hung dependency can neither hold a caller past the budget nor pile up threads."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from pipelines.platform.guard import GuardedDependency


class Store:
    """A dependency that answers, raises or hangs (until released) on command."""

    def __init__(self) -> None:
        self.mode = "up"
        self.release = threading.Event()
        self.calls = 0

    def read(self) -> str:
        self.calls += 1
        if self.mode == "down":
            raise ConnectionError("connection refused")
        if self.mode == "hung":
            self.release.wait(10)
        return "row"


def settle(dependency: GuardedDependency) -> None:
    """Wait until the calls left running past their budget have returned."""
    deadline = time.monotonic() + 5
    while dependency.describe()["in_flight"] and time.monotonic() < deadline:
        time.sleep(0.01)


def guard(clock: list[float], threads: int = 4) -> GuardedDependency:
    return GuardedDependency(
        "store", budget_s=0.05, cooldown_s=1.0, failures_to_open=3, threads=threads, clock=lambda: clock[0]
    )


@pytest.mark.unit
def test_the_breaker_opens_after_repeated_failures_skips_then_probes_and_closes_by_itself() -> None:
    clock, store = [0.0], Store()
    dependency = guard(clock)
    assert dependency.attempt_blocking(store.read) == ("row", None)

    store.mode = "down"
    reasons = [dependency.attempt_blocking(store.read)[1] for _ in range(3)]
    assert reasons == ["store failed: ConnectionError: connection refused"] * 3
    assert dependency.is_open and store.calls == 4

    value, reason = dependency.attempt_blocking(store.read)  # open: no call at all
    assert value is None and reason is not None and reason.startswith("store skipped after repeated failures")
    assert store.calls == 4

    clock[0] = 1.5  # cool-down over: one probe, which fails and opens the breaker again
    assert dependency.attempt_blocking(store.read)[1] == "store failed: ConnectionError: connection refused"
    assert dependency.is_open and store.calls == 5
    assert dependency.attempt_blocking(store.read)[1].startswith("store skipped")  # type: ignore[union-attr]

    store.mode = "up"
    clock[0] = 3.0
    assert dependency.attempt_blocking(store.read) == ("row", None)  # the probe succeeds: closed again
    assert not dependency.is_open
    assert dependency.counts == {"ok": 2, "failed": 4, "over_budget": 0, "skipped": 2}


@pytest.mark.unit
def test_a_hung_dependency_holds_no_caller_past_the_budget_and_no_more_threads_than_the_pool() -> None:
    clock, store = [0.0], Store()
    dependency = guard(clock, threads=2)
    store.mode = "hung"
    waits = []
    for _ in range(2):
        started = time.perf_counter()
        value, reason = dependency.attempt_blocking(store.read)
        waits.append(time.perf_counter() - started)
        assert value is None and reason == "store took longer than 50 ms"
    assert max(waits) < 5.0  # the budget (50 ms) and some scheduling, never the 10 s the call hangs
    # Both threads still hang: the next call is refused at once, without a thread.
    assert dependency.attempt_blocking(store.read)[1] == "store busy: 2 earlier calls have not returned"
    assert store.calls == 2

    store.release.set()  # the hung calls return: the pool has room again and the dependency is used
    store.mode = "up"
    settle(dependency)
    assert dependency.attempt_blocking(store.read) == ("row", None)
    dependency.close()


@pytest.mark.unit
def test_a_probe_due_while_every_thread_hangs_does_not_wedge_the_breaker() -> None:
    clock, store = [0.0], Store()
    dependency = guard(clock, threads=3)
    store.mode = "hung"
    for _ in range(3):
        dependency.attempt_blocking(store.read)  # three overruns: open, and all three threads hang
    assert dependency.is_open
    clock[0] = 2.0  # the cool-down is over while the pool is still full: refused as busy, not left probing
    assert dependency.attempt_blocking(store.read)[1] == "store busy: 3 earlier calls have not returned"
    store.release.set()
    store.mode = "up"
    settle(dependency)
    assert dependency.attempt_blocking(store.read) == ("row", None)
    assert not dependency.is_open
    dependency.close()


@pytest.mark.unit
def test_on_an_event_loop_the_call_runs_in_a_thread_and_the_loop_keeps_turning() -> None:
    clock, store = [0.0], Store()
    dependency = guard(clock)
    store.mode = "hung"

    async def request() -> tuple[tuple[object, str | None], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        answer = await dependency.attempt(store.read)
        task.cancel()
        return answer, ticks

    (value, reason), ticks = asyncio.run(request())
    assert value is None and reason == "store took longer than 50 ms"
    assert ticks > 5  # the loop served other work while the call hung
    store.release.set()
    dependency.close()


@pytest.mark.unit
def test_a_probe_whose_request_is_cancelled_does_not_leave_the_breaker_open_for_good() -> None:
    clock, store = [0.0], Store()
    dependency = guard(clock)
    store.mode = "down"
    for _ in range(3):
        dependency.attempt_blocking(store.read)
    clock[0] = 2.0  # cool-down over; the probing request is cancelled (a server's request timeout) while it waits
    store.mode = "hung"

    async def cancelled_probe() -> None:
        task = asyncio.create_task(dependency.attempt(store.read))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled_probe())
    store.release.set()
    store.mode = "up"
    clock[0] = 4.0  # the next cool-down is over: a new probe is made, and it closes the breaker
    settle(dependency)
    assert dependency.attempt_blocking(store.read) == ("row", None)
    assert not dependency.is_open
    dependency.close()


@pytest.mark.unit
def test_a_call_that_raises_a_timeout_itself_is_a_failure_not_an_overrun() -> None:
    dependency = guard([0.0])

    def read() -> str:
        raise TimeoutError("socket timed out")

    assert dependency.attempt_blocking(read) == (None, "store failed: TimeoutError: socket timed out")
    dependency.close()
    assert dependency.attempt_blocking(read) == (None, "store not used: the service is stopping")
