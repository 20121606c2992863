"""Fault drills on a design's service under steady load: a dependency goes away for a while and comes back.

`mlsd drill --scenario NAME` (the serving scenarios) starts a stack of its own (embedded broker, MLflow server,
Feast with a SQLite or a private Redis online store), lets the design register a model and fill the online store,
starts the real service process and sends open-loop traffic at `rps` for `before_s + outage_s + after_s` seconds.
`before_s` into the run one dependency goes away for `outage_s` seconds:

- `online-store-outage`: SQLite — another process holds an exclusive lock on the online store's file (every read
  waits, as behind a long write); Redis — the server is killed and restarted (its append-only file brings the
  rows back);
- `broker-outage`: the embedded broker is stopped and started again (its topics come back empty);
- `registry-outage`: the MLflow server is stopped and started again.

The outage ends when the dependency is back: for a restarted broker or MLflow server that is when it answers again
(the MLflow server takes ~15 s to start), so the load runs that much longer (`restart_allowance_s`). The result
counts the answers before, during and after the outage — full, degraded (`"degraded": true` in the body) and failed
— with their p50/p99; says how long after the dependency came back the last degraded or failed answer was sent
(`recovery_s`) and when the service's /model first said the dependency was fine (`service_saw_it_back_s`); and
what /model says at the end. Fault times are taken on the drill's clock, the answers' on the load generator's: the
two agree to a few milliseconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.platform.errors import InvalidInput
from pipelines.settings import Settings

SERVICE_SCENARIOS = ("online-store-outage", "broker-outage", "registry-outage")
MLSD = [sys.executable, "-m", "pipelines"]


@dataclass(frozen=True)
class ServiceDrillSpec:
    """What a design supplies for its service drills."""

    # (settings, size, seed) → request bodies; registers a champion and fills the online store on the way
    prepare: Callable[[Settings, int, int], list[dict[str, Any]]]
    serve: Sequence[str]  # the `mlsd` arguments that start the service, e.g. ("fraud", "serve")
    path: str  # the endpoint the load goes to
    port_setting: str  # the Settings field that holds the service's port
    topics: Callable[[], Sequence[str]]  # the topics the stack creates
    feature_objects: Sequence[Callable[[Path], list[Any]]]  # what `feast apply` registers


# ---------------------------------------------------------------------------------------------------- the faults


class Fault:
    """One dependency taken away and given back."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class SqliteLock(Fault):
    """Another process holds an exclusive lock on a SQLite file: readers wait for it, as behind a long write."""

    HOLD = """
import sqlite3, sys
connection = sqlite3.connect(sys.argv[1], isolation_level=None)
connection.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
connection.execute("COMMIT")
"""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", self.HOLD, str(self.path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "locked":
            raise RuntimeError(f"could not lock {self.path}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.communicate("done\n", timeout=30)
            self.process = None


class PrivateRedis(Fault):
    """A redis-server of the drill's own, with an append-only file: killed, then restarted with its rows."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.process: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        from pipelines.platform.infra import wait_for_port

        self.folder.mkdir(parents=True, exist_ok=True)
        command = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)]
        command += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
        try:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except FileNotFoundError:
            raise InvalidInput("The Redis drill needs `redis-server` on PATH; install Redis or use SQLite.") from None
        wait_for_port(self.port, 20, "The drill's Redis server")

    def start(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        self.launch()

    def close(self) -> None:
        self.start()


class StackProcess(Fault):
    """A process of the embedded stack (broker, MLflow server) stopped and started again."""

    def __init__(self, settings: Settings, name: str, restart: Callable[[], Any]) -> None:
        self.settings, self.name, self.restart = settings, name, restart

    def start(self) -> None:
        from pipelines.platform.infra import stop_process

        stop_process(self.settings, self.name)

    def stop(self) -> None:
        self.restart()


# ---------------------------------------------------------------------------------------------------- the run


@contextmanager
def drill_stack(folder: Path, spec: ServiceDrillSpec, online_store: str) -> Iterator[tuple[Settings, Any]]:
    """Settings and a running stack under `folder`; yields (settings, the private Redis or None)."""
    from pipelines.platform.infra import free_port, stack_down, stack_up

    redis = None
    options: dict[str, Any] = {"feast_online_store": online_store}
    if online_store == "redis":
        redis = PrivateRedis(folder / "redis", free_port())
        redis.launch()
        options["feast_redis_url"] = f"127.0.0.1:{redis.port}"
    kafka = free_port()
    settings = Settings(
        home=folder,
        kafka_port=kafka,
        kafka_bootstrap=f"127.0.0.1:{kafka}",
        mlflow_port=free_port(),
        mlflow_tracking_uri="",
        **options,
    )
    try:
        stack_up(settings, list(spec.topics()), spec.feature_objects)
        yield settings, redis
    finally:
        stack_down(settings)
        if redis is not None:
            redis.close()


@contextmanager
def running_service(settings: Settings, spec: ServiceDrillSpec, port: int) -> Iterator[str]:
    """The design's service as a process of the stack (log under `<home>/run/`), ready; stopped afterwards."""
    from pipelines.platform.infra import stack_env, start_process, stop_process, wait_for_http

    name = "drill-service"
    process = start_process(settings, name, [*MLSD, *spec.serve], stack_env(settings, **{spec.port_setting: str(port)}))
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/readyz", 180, "The service", process.log)
        yield base
    finally:
        stop_process(settings, name, timeout_s=30)


def model_page(base: str) -> dict[str, Any]:
    request = urllib.request.Request(f"{base}/model", b"{}", {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


HEALTHY: dict[str, Callable[[dict[str, Any]], bool]] = {
    "online-store-outage": lambda page: not page["online_store"]["breaker_open"],
    "broker-outage": lambda page: page["prediction_log"]["broker_reachable"] and not page["prediction_log"]["waiting"],
    "registry-outage": lambda page: page["reload"]["registry_reachable"],
}


def wait_until_healthy(base: str, scenario: str, deadline: float) -> float | None:
    """Poll /model until the scenario's dependency looks fine to the service; the monotonic time it did, or None."""
    while time.monotonic() < deadline:
        try:
            if HEALTHY[scenario](model_page(base)):
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.25)
    return None


def phase(timeline: Sequence[tuple[float, str, float | None]], start: float, end: float) -> dict[str, Any]:
    """Counts and latency of the answers to requests sent in [start, end)."""
    import numpy as np

    rows = [(outcome, latency) for at, outcome, latency in timeline if start <= at < end]
    latencies = np.asarray([latency for _, latency in rows if latency is not None], dtype=float)
    counts = {"sent": len(rows), "ok": 0, "degraded": 0, "failed": 0}
    for outcome, _ in rows:
        counts[outcome if outcome in ("ok", "degraded") else "failed"] += 1
    return {
        **counts,
        "p50_ms": round(float(np.percentile(latencies, 50)), 2) if len(latencies) else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 2) if len(latencies) else None,
        "max_ms": round(float(latencies.max()), 2) if len(latencies) else None,
    }


def run_service_drill(
    spec: ServiceDrillSpec,
    design: str,
    scenario: str,
    rps: float = 100.0,
    before_s: float = 20.0,
    outage_s: float = 20.0,
    after_s: float = 20.0,
    online_store: str = "sqlite",
    size: int = 20_000,
    seed: int = 7,
    say: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    from pipelines.platform.infra import free_port, start_broker, start_mlflow
    from pipelines.platform.loadtest import run_load_test

    if scenario not in SERVICE_SCENARIOS:
        raise InvalidInput(f"Unknown service drill '{scenario}'; choose one of {', '.join(SERVICE_SCENARIOS)}.")
    say = say or (lambda _m: None)
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="mlsd-service-drill-") as tmp,
        drill_stack(Path(tmp), spec, online_store) as (settings, redis),
    ):
        say("registering a model and filling the online store")
        payloads = spec.prepare(settings, size, seed)
        fault: Fault
        allowance = 0.0  # extra load time: a restarted stack process takes a while before it is back
        if scenario == "online-store-outage":
            fault = redis if redis is not None else SqliteLock(settings.home / "feast" / "online.db")
        elif scenario == "broker-outage":
            fault = StackProcess(settings, "kafka", lambda: start_broker(settings, list(spec.topics())))
            allowance = 10.0
        else:
            fault = StackProcess(settings, "mlflow", lambda: start_mlflow(settings))
            allowance = 30.0
        say("starting the service")
        with running_service(settings, spec, free_port()) as base:
            url = base + spec.path
            run_load_test(url, lambda i: payloads[i % len(payloads)], rps, 3.0)  # warm-up, not reported
            total = before_s + outage_s + after_s + allowance
            box: dict[str, Any] = {}
            load_started = time.monotonic()
            sender = threading.Thread(
                target=lambda: box.update(result=run_load_test(url, lambda i: payloads[i % len(payloads)], rps, total))
            )
            sender.start()
            time.sleep(max(0.0, load_started + before_s - time.monotonic()))
            say(f"{scenario}: dependency away for {outage_s:.0f} s")
            fault_start = time.monotonic() - load_started
            fault.start()
            time.sleep(max(0.0, load_started + before_s + outage_s - time.monotonic()))
            fault.stop()
            fault_end = time.monotonic() - load_started
            say("dependency back; measuring recovery")
            healthy_after = wait_until_healthy(base, scenario, load_started + total)
            sender.join()
            after = model_page(base)
        result = box["result"]
        timeline = result.timeline
        later = [at for at, outcome, _ in timeline if at >= fault_end and outcome != "ok"]
        phases = {
            "before": phase(timeline, 0.0, fault_start),
            "during": phase(timeline, fault_start, fault_end),
            "after": phase(timeline, fault_end, total + 1),
        }
        return {
            "scenario": scenario,
            "design": design,
            "parameters": {
                "rps": rps,
                "before_s": before_s,
                "outage_s": outage_s,
                "after_s": after_s,
                "restart_allowance_s": allowance,
                "online_store": online_store,
                "size": size,
                "seed": seed,
                "store_budget_ms": settings.serving_store_budget_ms,
            },
            "requests": {
                "sent": result.sent,
                "ok": result.ok - result.degraded,
                "degraded": result.degraded,
                "failed": result.errors,
            },
            "error_kinds": result.error_kinds,
            "outage": {"start_s": round(fault_start, 3), "end_s": round(fault_end, 3)},
            "phases": phases,
            # The last request answered degraded or failed after the dependency was back, seconds after it was.
            "recovery_s": round(max(later) - fault_end, 3) if later else 0.0,
            # When /model first said the dependency was fine again (breaker closed; broker reachable with nothing
            # waiting; registry reachable), seconds after it was back; None if not before the load ended.
            "service_saw_it_back_s": None
            if healthy_after is None
            else round(healthy_after - load_started - fault_end, 3),
            "service_after": {key: after.get(key) for key in ("online_store", "prediction_log", "reload")},
            "seconds": round(time.perf_counter() - started, 1),
        }
