"""Fault drills on a design's stream processors: real processes killed, joined, fed poison, cut off from the broker.

`mlsd drill --scenario NAME` runs one on a broker and stores of its own and reports what was sent, processed and
dead-lettered, what was lost (`events_lost`), what differs from the batch backfill (`rows_differing`), and how long
recovery took. The design supplies its data, its commands and how to compare its rows (`DrillSpec`); the harness
here starts, kills and restarts the processes:

- `stream-crash`: SIGKILL a processor `kills` times during the replay, restart it with the same command each time;
- `rebalance`: processors join and leave the consumer group during the replay;
- `poison-events`: a catalogue of bad events interleaved with good ones;
- `broker-restart`: the embedded broker (in memory) restarted between two halves of the replay: topics come back
  empty and every committed offset is gone.

Every scenario ends when the processors have read everything (the group checkpointed nothing for `idle_s`, longer
than a rebalance takes; then each is stopped with SIGTERM and writes its summary) and then compares every online
and offline row with the backfill of the same events.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.platform.service_drills import ServiceDrillSpec
from pipelines.settings import Settings

SCENARIOS = ("stream-crash", "rebalance", "poison-events", "broker-restart")
MLSD = [sys.executable, "-m", "pipelines"]


@dataclass
class DrillData:
    """What a design prepared for a drill: its files, how many events the replay sends, what the backfill says."""

    history: Path
    live: Path
    live_events: int
    expected: Any  # the design's backfill rows, for `compare`
    second_half: Path | None = None  # broker-restart: the replay's second half, sent after the restart
    first_half: Path | None = None


@dataclass(frozen=True)
class DrillSpec:
    # (settings, size, seed, folder, halves) → files and the expected rows
    prepare: Callable[[Settings, int, int, Path, bool], DrillData]
    processor: Callable[[DrillData, str, Path], list[str]]  # (data, group, json path) → `mlsd <design> stream ...`
    replay: Callable[[Path, float], list[str]]  # (file, rate) → `mlsd <design> replay ...`
    compare: Callable[[Settings, DrillData], dict[str, Any]]  # events_lost, rows_differing and details
    poison: Callable[[Settings, DrillData], dict[str, Any]]  # sends bad events among good ones; what was sent
    check_poison: Callable[[Settings, dict[str, Any]], dict[str, Any]]  # which bad events were dead-lettered, why
    topics: Callable[[Settings], dict[str, int]]  # the design's topics and their partition counts
    source_topic: str  # where the replay sends the events counted as sent
    service: ServiceDrillSpec | None = None  # the drills on the design's service (pipelines/platform/service_drills.py)


@dataclass
class DrillResult:
    scenario: str
    design: str
    processors: int
    sent: int = 0
    seconds: float = 0.0
    kills: list[dict[str, Any]] = field(default_factory=list)
    recovery_s: list[float] = field(default_factory=list)
    crashes: int = 0  # processors that exited with an error on their own
    processed: dict[str, Any] = field(default_factory=dict)
    dead_lettered: int = 0
    comparison: dict[str, Any] = field(default_factory=dict)
    poison: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Any] = field(default_factory=dict)  # what the drill was run with, to run it again

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return {**asdict(self), **{k: self.comparison.get(k) for k in ("events_lost", "rows_differing")}}


class Fleet:
    """The drill's processor processes: started, killed and restarted by name, each with its own JSON summary."""

    def __init__(self, settings: Settings, spec: DrillSpec, data: DrillData, group: str, env: dict[str, str]) -> None:
        self.settings, self.spec, self.data, self.group, self.env = settings, spec, data, group, env
        self.started: dict[str, int] = {}
        self.runs = 0

    def start(self, name: str) -> Any:
        from pipelines.platform.infra import start_process

        self.runs += 1
        summary = self.settings.home / "summaries" / f"{name}-{self.runs}.json"
        summary.parent.mkdir(parents=True, exist_ok=True)
        process = start_process(
            self.settings, name, [*MLSD, *self.spec.processor(self.data, self.group, summary)], self.env
        )
        self.started[name] = process.pid
        return process

    def kill(self, name: str) -> bool:
        """SIGKILL `name`'s process group; False if it had already exited."""
        try:
            os.killpg(self.started[name], signal.SIGKILL)
        except ProcessLookupError:
            return False
        return True

    def stop(self, name: str) -> None:
        from pipelines.platform.infra import stop_process

        stop_process(self.settings, name)

    def wait_quiet(self, quiet_s: float, timeout_s: float) -> None:
        """Wait until the group has checkpointed nothing for `quiet_s`: everything sent so far is read."""
        from pipelines.platform.infra import running

        deadline = time.monotonic() + timeout_s
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline and any(running(self.settings, name) for name in self.started):
            commit = _latest_commit(self.settings, self.group)
            if commit != last:
                last, since = commit, time.monotonic()
            elif time.monotonic() - since > quiet_s:
                return
            time.sleep(0.5)

    def drain(self, quiet_s: float, timeout_s: float) -> int:
        """`wait_quiet`, then stop every processor (SIGTERM: each writes its summary); returns how many exited
        with an error on their own."""
        self.wait_quiet(quiet_s, timeout_s)
        for name in list(self.started):
            self.stop(name)
        errors = 0
        for name in self.started:
            log = self.settings.run_dir / f"{name}.log"
            if log.exists() and "Traceback" in log.read_text(errors="replace"):
                errors += 1
        return errors

    def summaries(self) -> list[dict[str, Any]]:
        folder = self.settings.home / "summaries"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def drill_settings(settings: Settings, scenario: str) -> Settings:
    """A home, a broker port and stores of the drill's own (SQLite online store unless Redis is configured)."""
    from pipelines.platform.infra import free_port

    home = settings.home.resolve() / "drills" / scenario
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    port = free_port()
    return settings.model_copy(
        update={
            "home": home,
            "kafka_port": port,
            "kafka_bootstrap": f"127.0.0.1:{port}",
            "kafka_embedded": True,
            "feast_registry": "",
            "feast_offline_dir": "",
            "stream_state_url": "",
            "mlflow_tracking_uri": f"sqlite:///{home / 'mlflow.db'}",
        }
    )


def start_replay(settings: Settings, spec: DrillSpec, path: Path, rate: float, env: dict[str, str]) -> Any:
    from pipelines.platform.infra import start_process

    return start_process(settings, "replay", [*MLSD, *spec.replay(path, rate)], env)


def wait_replay(settings: Settings, timeout_s: float = 600) -> None:
    from pipelines.platform.infra import running

    deadline = time.monotonic() + timeout_s
    while running(settings, "replay") and time.monotonic() < deadline:
        time.sleep(0.2)


def _latest_commit(settings: Settings, group: str) -> int:
    from pipelines.platform.state import StateStore, state_url

    store = StateStore(state_url(settings), group)
    try:
        return store.latest_commit()
    finally:
        store.close()


def _recovered(settings: Settings, group: str, before: int, since: float, timeout_s: float) -> float | None:
    """Seconds from `since` (the kill) until the group checkpoints a batch again (None: not within the timeout)."""
    while time.monotonic() - since < timeout_s:
        if _latest_commit(settings, group) > before:
            return round(time.monotonic() - since, 2)
        time.sleep(0.1)
    return None


def run_drill(
    settings: Settings,
    spec: DrillSpec,
    design: str,
    scenario: str,
    size: int = 20_000,
    processors: int = 1,
    kills: int = 3,
    rate: float = 1_000.0,
    seed: int = 7,
    idle_s: float = 15.0,
    say: Callable[[str], None] | None = None,
) -> DrillResult:
    """One drill end to end (see the module docstring); the result is also written as JSON under the drill's home."""
    from pipelines.platform.infra import stack_env, start_broker, stop_process, wait_for_log
    from pipelines.platform.stream import ensure_topics

    if scenario not in SCENARIOS:
        from pipelines.platform.errors import InvalidInput

        raise InvalidInput(f"Unknown drill '{scenario}'; choose one of {', '.join(SCENARIOS)}.")
    say = say or (lambda _m: None)
    s = drill_settings(settings, scenario)
    rng = random.Random(seed)
    result = DrillResult(scenario, design, processors)
    result.parameters = {
        "size": size,
        "kills": kills,
        "rate": rate,
        "seed": seed,
        "idle_s": idle_s,
        "partitions": s.stream_partitions,
        "online_store": s.feast_online_store,
        "cpus": os.cpu_count(),
    }
    start_broker(s, [])
    topics = spec.topics(s)
    ensure_topics(s, list(topics), topics)
    env = stack_env(s, stream_state_url="", feast_online_store=s.feast_online_store)
    try:
        say(f"preparing {size:,} events")
        data = spec.prepare(s, size, seed, s.home, scenario == "broker-restart")
        group = f"drill-{scenario}"
        fleet = Fleet(s, spec, data, group, {**env, "MLSD_STREAM_PARTITIONS": str(s.stream_partitions)})
        names = [f"processor-{i}" for i in range(processors)]
        started = time.monotonic()
        for name in names:
            wait_for_log(fleet.start(name), "consuming", 180)
        if scenario == "poison-events":
            result.poison = spec.poison(s, data)
        first = data.first_half if scenario == "broker-restart" and data.first_half else data.live
        start_replay(s, spec, first, rate, env)
        if scenario == "stream-crash":
            _crash(s, fleet, names, kills, rng, result, say)
        elif scenario == "rebalance":
            _rebalance(fleet, names, rng, say, result)
        wait_replay(s)
        if scenario == "broker-restart":
            _broker_restart(s, spec, fleet, data, rate, env, result, say, topics)
        say("waiting for the processors to read everything")
        result.crashes = fleet.drain(quiet_s=idle_s, timeout_s=900)
        result.seconds = round(time.monotonic() - started, 1)
        result.sent = data.live_events
        result.processed = _merge(fleet.summaries())
        result.dead_lettered = _dead_letters(s, topics)
        say("comparing every online and offline row with the backfill")
        result.comparison = spec.compare(s, data)
        if scenario == "poison-events":
            result.poison = spec.check_poison(s, result.poison)
    finally:
        stop_process(s, "kafka")
    out = s.home / "drill.json"
    out.write_text(json.dumps(result.to_dict(), indent=2, default=str))
    return result


def _crash(
    settings: Settings,
    fleet: Fleet,
    names: Sequence[str],
    kills: int,
    rng: random.Random,
    result: DrillResult,
    say: Callable[[str], None],
) -> None:
    from pipelines.platform.infra import running, wait_for_log

    for k in range(kills):
        time.sleep(rng.uniform(1.0, 3.0))
        if not running(settings, "replay"):
            say(f"the replay ended before kill {k + 1}")
            break
        name = rng.choice(list(names))
        if not fleet.kill(name):
            say(f"{name} had already exited")
        killed_at = time.monotonic()
        before = _latest_commit(settings, fleet.group)  # after the kill: no commit of the dead process counts
        say(f"kill {k + 1}: SIGKILL {name}")
        wait_for_log(fleet.start(name), "consuming", 180)
        restarted = round(time.monotonic() - killed_at, 2)
        # Recovered: the group checkpoints again (the restarted processor, or another that took its partitions).
        recovered = _recovered(settings, fleet.group, before, killed_at, 120)
        result.kills.append({"processor": name, "restart_s": restarted, "recovered_s": recovered})
        if recovered is not None:
            result.recovery_s.append(recovered)


def _rebalance(
    fleet: Fleet, names: list[str], rng: random.Random, say: Callable[[str], None], result: DrillResult
) -> None:
    from pipelines.platform.infra import wait_for_log

    time.sleep(rng.uniform(1.0, 2.0))
    joiner = f"processor-{len(names)}"
    say(f"{joiner} joins")
    wait_for_log(fleet.start(joiner), "consuming", 180)
    names.append(joiner)
    time.sleep(rng.uniform(1.0, 2.0))
    leaver = names[0]
    say(f"{leaver} leaves (SIGTERM)")
    fleet.stop(leaver)
    result.kills.append({"processor": leaver, "signal": "SIGTERM"})
    time.sleep(rng.uniform(1.0, 2.0))
    crashed = names[-1]
    say(f"{crashed} dies (SIGKILL)")
    fleet.kill(crashed)
    result.kills.append({"processor": crashed, "signal": "SIGKILL"})
    wait_for_log(fleet.start(crashed), "consuming", 180)


def _broker_restart(
    settings: Settings,
    spec: DrillSpec,
    fleet: Fleet,
    data: DrillData,
    rate: float,
    env: dict[str, str],
    result: DrillResult,
    say: Callable[[str], None],
    topics: dict[str, int],
) -> None:
    """Restart the in-memory broker between the halves: topics and committed offsets are gone afterwards."""
    from pipelines.platform.infra import start_broker, stop_process
    from pipelines.platform.stream import ensure_topics

    fleet.wait_quiet(quiet_s=10, timeout_s=300)  # the first half is read and checkpointed (idle origins: 5 s)
    say("restarting the broker (its topics and offsets are lost)")
    before = _latest_commit(settings, fleet.group)
    stop_process(settings, "kafka")
    restarted = time.monotonic()
    start_broker(settings, [])
    ensure_topics(settings, list(topics), topics)
    sending = round(time.monotonic() - restarted, 2)
    if data.second_half is not None:
        start_replay(settings, spec, data.second_half, rate, env)
    # Recovered: the processors rejoined, found their checkpoints no longer match the log, and checkpoint again.
    recovered = _recovered(settings, fleet.group, before, restarted, 300)
    wait_replay(settings)
    result.kills.append({"broker_restart": True, "seconds_to_send_again": sending, "recovered_s": recovered})
    if recovered is not None:
        result.recovery_s.append(recovered)


def _merge(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The processors' summaries added up (a killed run writes none: the figures count completed runs)."""
    out: dict[str, Any] = {"runs": len(summaries)}
    for summary in summaries:
        for key, value in summary.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                out[key] = out.get(key, 0) + value
            elif key == "log_resets":
                out.setdefault(key, []).extend(value)
    return out


def _dead_letters(settings: Settings, topics: dict[str, int]) -> int:
    from pipelines.platform.stream import DLQ_SUFFIX, read_dead_letters

    return sum(len(read_dead_letters(settings, t)) for t in topics if not t.endswith(DLQ_SUFFIX))
