"""A dependency on the request path (an online store, ...) called within a time budget, never on the event loop.

A service must answer even when a store it reads is slow or gone: it then answers in a degraded way and says so.
`GuardedDependency` makes that decision cheap and bounded:

- every call runs on a small thread pool of its own and is waited for at most `budget_s`; the event loop (or the
  calling thread) never waits longer, whatever the store does;
- `failures_to_open` failures or overruns in a row open the breaker: for `cooldown_s` no call is made at all, so a
  dead store costs a request nothing; then one call at a time probes, and a success closes the breaker again —
  recovery needs nobody;
- a call left running past its budget keeps its thread; when every thread is taken (a store that hangs), new calls
  are refused at once instead of piling up.

`attempt` / `attempt_blocking` return `(value, None)` or `(None, reason)`: the reason is one sentence for the
response and the logs, and `describe()` holds the counts a /model page shows.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from pipelines.platform.errors import one_line
from pipelines.settings import Settings

log = logging.getLogger("mlsd.deployment")

T = TypeVar("T")


class GuardedDependency:
    def __init__(
        self,
        name: str,
        budget_s: float = 0.02,
        cooldown_s: float = 1.0,
        failures_to_open: int = 3,
        threads: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.budget_s = budget_s
        self.cooldown_s = cooldown_s
        self.failures_to_open = failures_to_open
        self.threads = threads
        self.clock = clock
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix=f"guard-{name}")
        self._lock = threading.Lock()
        self._in_flight = 0
        self._failures_in_row = 0
        self._open_until: float | None = None  # breaker open until this clock time
        self._probing = False
        self.counts = {"ok": 0, "failed": 0, "over_budget": 0, "skipped": 0}
        self.last_problem = ""

    @classmethod
    def online_store(cls, settings: Settings, warm_up: Callable[[], Any]) -> GuardedDependency:
        """The services' online-store guard, from Settings, after one read outside the budget (`warm_up`): the
        first read opens the store's connection (~100 ms). A store that is down now is the guard's business on the
        first request."""
        with contextlib.suppress(Exception):
            warm_up()
        return cls("online store", settings.serving_store_budget_ms / 1000, settings.serving_store_cooldown_seconds)

    # ------------------------------------------------------------------ the call

    async def attempt(self, call: Callable[[], T]) -> tuple[T | None, str | None]:
        """Run `call` off the event loop within the budget."""
        future = self._submit(call)
        if isinstance(future, str):
            return None, future
        try:
            value = await asyncio.wait_for(asyncio.wrap_future(future), self.budget_s)
        except TimeoutError as exc:  # the budget ran out, or the call itself raised a TimeoutError
            return None, self._failed(exc) if future.done() else self._over_budget()
        except Exception as exc:
            return None, self._failed(exc)
        except BaseException:  # the request was cancelled (a server timeout): a probe it carried must not stay open
            self._abandoned()
            raise
        self._ok()
        return value, None

    def attempt_blocking(self, call: Callable[[], T]) -> tuple[T | None, str | None]:
        """The same for code without an event loop (benchmarks, tests, batch callers): waits at most the budget."""
        future = self._submit(call)
        if isinstance(future, str):
            return None, future
        try:
            value = future.result(self.budget_s)
        except TimeoutError as exc:
            return None, self._failed(exc) if future.done() else self._over_budget()
        except Exception as exc:
            return None, self._failed(exc)
        except BaseException:
            self._abandoned()
            raise
        self._ok()
        return value, None

    def _submit(self, call: Callable[[], T]) -> concurrent.futures.Future[T] | str:
        """A running call, or the reason no call was made."""
        with self._lock:
            if self._in_flight >= self.threads:
                self.counts["skipped"] += 1
                return f"{self.name} busy: {self._in_flight} earlier calls have not returned"
            if self._open_until is not None:
                if self.clock() < self._open_until or self._probing:
                    self.counts["skipped"] += 1
                    return f"{self.name} skipped after repeated failures ({self.last_problem})"
                self._probing = True  # cool-down over: this call probes, the others still skip
            self._in_flight += 1
        try:
            future = self._pool.submit(call)
        except RuntimeError:  # closed: the service is stopping
            with self._lock:
                self._in_flight -= 1
                self._probing = False
            return f"{self.name} not used: the service is stopping"
        future.add_done_callback(self._done)
        return future

    def _done(self, _future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._in_flight -= 1

    # ------------------------------------------------------------------ the breaker

    def _ok(self) -> None:
        with self._lock:
            self.counts["ok"] += 1
            self._failures_in_row = 0
            self._probing = False
            if self._open_until is not None:
                self._open_until = None
                log.warning("%s answers again: full answers resumed", self.name)

    def _abandoned(self) -> None:
        """A caller gave up without an answer: count it as an overrun, so a probe it carried is settled."""
        self._over_budget()

    def _over_budget(self) -> str:
        return self._problem("over_budget", f"{self.name} took longer than {self.budget_s * 1000:.0f} ms")

    def _failed(self, exc: BaseException) -> str:
        return self._problem("failed", f"{self.name} failed: {one_line(exc)}")

    def _problem(self, kind: str, reason: str) -> str:
        with self._lock:
            self.counts[kind] += 1
            self._failures_in_row += 1
            self.last_problem = reason
            was_open = self._open_until is not None
            if self._probing or self._failures_in_row >= self.failures_to_open:
                self._open_until = self.clock() + self.cooldown_s
                self._probing = False
                if not was_open:
                    log.warning("%s; answering degraded, retrying every %.1f s", reason, self.cooldown_s)
        return reason

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def describe(self) -> dict[str, Any]:
        return {
            "budget_ms": round(self.budget_s * 1000, 1),
            "breaker_open": self.is_open,
            "in_flight": self._in_flight,
            **self.counts,
            "last_problem": self.last_problem,
        }

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
