"""A design running live, as processes: stream processor → service → warm-up → replay → load → stop.

The demo's sections and the serving benchmarks run this sequence; each supplies its own `mlsd` commands (a
`LivePlan`) and what happens between the steps. Every process it starts is stopped when the `with` block ends,
whatever happened inside.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from pipelines.platform.infra import (
    ManagedProcess,
    require_free_port,
    running,
    start_process,
    stop_process,
    wait_for_http,
    wait_for_log,
)
from pipelines.platform.loadtest import LoadTestResult, run_load_test
from pipelines.settings import Settings

MLSD = [sys.executable, "-m", "pipelines"]


@dataclass(frozen=True)
class LivePlan:
    """What a design's live run starts, as `mlsd` arguments, and where its service answers."""

    design: str
    stream_args: Sequence[str]  # `mlsd <design> stream ...`
    serve_args: Sequence[str]  # `mlsd <design> serve ...`
    replay_args: Sequence[str]  # `mlsd <design> replay ...` without --rate
    port: int
    endpoint: str  # the route load is sent to, e.g. "/score"
    # The service reads what the processor seeds into the online store at start-up: start it only after.
    service_after_stream: bool = False
    stream_ready_s: float = 180.0
    service_ready_s: float = 180.0
    env: dict[str, str] = field(default_factory=dict)  # MLSD_* variables for the processes

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return self.base_url + self.endpoint


class LiveRun:
    """The processes of one live run; use as a context manager so that they stop."""

    def __init__(self, settings: Settings, plan: LivePlan, say: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.plan = plan
        self.say = say or (lambda _m: None)
        self.names: list[str] = []
        self.stream: ManagedProcess | None = None
        self.service: ManagedProcess | None = None

    def __enter__(self) -> LiveRun:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        for name in reversed(self.names):
            stop_process(self.settings, name, timeout_s=20)
        self.names.clear()

    def _start(self, role: str, args: Sequence[str]) -> ManagedProcess:
        name = f"{self.plan.design}-{role}"
        process = start_process(self.settings, name, [*MLSD, *args], self.plan.env)
        self.names.append(name)
        return process

    def start(self) -> None:
        """Stream processor and service, each ready: the processor consuming, the service answering /readyz."""
        require_free_port(self.plan.port, f"the {self.plan.design} service", "its MLSD_*_SERVICE_PORT")
        self.stream = self._start("stream", self.plan.stream_args)
        if not self.plan.service_after_stream:
            self.service = self._start("service", self.plan.serve_args)
        self.say(f"{self.plan.design} stream processor: rebuilding its state from the history")
        wait_for_log(self.stream, "consuming", self.plan.stream_ready_s)
        if self.service is None:
            self.service = self._start("service", self.plan.serve_args)
        self.say(f"waiting for the {self.plan.design} service to load the champion")
        wait_for_http(
            f"{self.plan.base_url}/readyz",
            self.plan.service_ready_s,
            f"The {self.plan.design} service",
            self.service.log,
        )

    def load(
        self,
        payloads: Sequence[dict[str, Any]],
        rps: float,
        seconds: float,
        progress: Callable[[int, int], None] | None = None,
        offset: int = 0,
    ) -> LoadTestResult:
        """Open-loop load on the service's endpoint, cycling through `payloads` from `offset`."""
        return run_load_test(
            self.plan.url, lambda i: payloads[(offset + i) % len(payloads)], rps, seconds, progress=progress
        )

    def start_replay(self, rate: float) -> None:
        """The live events go to Kafka from their own process, as the upstream system would send them."""
        self._start("replay", [*self.plan.replay_args, "--rate", f"{rate:g}"])

    def replay_running(self) -> bool:
        return running(self.settings, f"{self.plan.design}-replay")

    def drain(self, replay_timeout_s: float = 120.0) -> None:
        """Wait for the replay to finish, give the processor its last micro-batch, then stop the processor."""
        deadline = time.monotonic() + replay_timeout_s
        while self.replay_running() and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)
        name = f"{self.plan.design}-stream"
        stop_process(self.settings, name, timeout_s=20)
        if name in self.names:
            self.names.remove(name)
