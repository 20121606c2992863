"""Open-loop HTTP load generator.

Request ``i`` of a run is scheduled at ``t0 + i / rps`` regardless of how earlier
requests fared: the generator never waits for a response before sending the next
request. Latency is measured from the *scheduled* send time, so any queueing --
in the client, on the network or in the server -- shows up in the percentiles
instead of silently lowering the offered load (no coordinated omission).

The send loop sleeps until the next request is due but never less than one tick
(``TICK_S``), then launches every request that has become due in one batch. At high
rates this batches many sends per wake-up, which keeps the scheduler cheap enough for
one Python process to offer well over 1,000 req/s; the price is up to about a tick of
send lag, which is included in the measured latencies.

Nothing here has a default target: callers always pass the URL explicitly.
"""

from __future__ import annotations

import asyncio
import errno
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from pipelines.platform.errors import InvalidInput

__all__ = [
    "LATE_SEND_MS",
    "TICK_S",
    "LoadTestResult",
    "find_max_rate",
    "run_load_test",
    "run_open_loop",
    "save_latency_histogram",
    "write_json",
]

TICK_S = 0.001
"""Granularity of the send loop: it sleeps at least this long between batches of sends."""

LATE_SEND_MS = 10.0
"""A request that starts more than this many ms after its scheduled time counts as a late send."""

PROGRESS_EVERY_S = 0.5
"""How often the optional progress callback is invoked while sending."""

DROPPED_KIND = "dropped (max_in_flight)"
# A degraded answer says so in its body (`"degraded": true`, the services' convention).
DEGRADED = re.compile(rb'"degraded":\s*true')


@dataclass
class LoadTestResult:
    """Outcome of one open-loop run.

    ``sent`` counts every scheduled request, including ones dropped because
    ``max_in_flight`` was reached (those are also errors), so ``ok + errors == sent``.
    Latencies are in milliseconds, measured from the scheduled send time, over
    successful (2xx) responses only; they are ``None`` when nothing succeeded.
    ``late_sends`` counts requests that started more than ``LATE_SEND_MS`` after their
    scheduled time -- a non-zero value means the generator itself was saturated.
    """

    url: str
    target_rps: float
    duration_s: float
    sent: int = 0
    ok: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    achieved_rps: float = 0.0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None
    late_sends: int = 0
    max_send_lag_ms: float = 0.0
    elapsed_s: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    degraded: int = 0  # 2xx answers that say `"degraded": true` (a dependency was down; counted in `ok` too)
    # (seconds after the first send, outcome: "ok" | "degraded" | an error kind, latency ms or None) per request
    timeline: list[tuple[float, str, float | None]] = field(default_factory=list, repr=False)

    @property
    def error_rate(self) -> float:
        """Fraction of sent requests that did not get a 2xx response (1.0 if nothing was sent)."""
        return self.errors / self.sent if self.sent else 1.0

    def to_dict(self, include_latencies: bool = False) -> dict[str, Any]:
        data = asdict(self)
        if not include_latencies:
            data.pop("latencies_ms")
            data.pop("timeline")
        data["error_rate"] = self.error_rate
        return data

    def summary_rows(self) -> list[tuple[str, str]]:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"

        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(self.error_kinds.items(), key=lambda kv: -kv[1]))
        return [
            ("url", self.url),
            ("target rps", f"{self.target_rps:g}"),
            ("duration s", f"{self.duration_s:g}"),
            ("sent", str(self.sent)),
            ("ok", str(self.ok)),
            ("of which degraded", str(self.degraded)),
            ("errors", f"{self.errors} ({self.error_rate:.2%})" if self.sent else str(self.errors)),
            ("error kinds", kinds or "-"),
            ("achieved rps", f"{self.achieved_rps:.1f}"),
            ("p50 ms", ms(self.p50_ms)),
            ("p95 ms", ms(self.p95_ms)),
            ("p99 ms", ms(self.p99_ms)),
            ("max ms", ms(self.max_ms)),
            ("mean ms", ms(self.mean_ms)),
            ("late sends", f"{self.late_sends} (max lag {self.max_send_lag_ms:.1f} ms)"),
        ]


def _classify(exc: BaseException) -> str:
    """Map a client-side exception to a short, stable error kind."""
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        err = exc.os_error
        if isinstance(err, ConnectionRefusedError) or getattr(err, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
        return "connection error"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
        return "bad response"
    if isinstance(exc, aiohttp.ClientOSError | OSError):
        return "connection error"
    return type(exc).__name__


class _Recorder:
    """Mutable counters shared by all in-flight requests of one run."""

    __slots__ = (
        "latencies",
        "ok",
        "degraded",
        "error_kinds",
        "late_sends",
        "max_lag",
        "last_done",
        "finished",
        "t0",
        "timeline",
    )

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.ok = 0
        self.degraded = 0
        self.t0 = 0.0
        self.timeline: list[tuple[float, str, float | None]] = []
        self.error_kinds: dict[str, int] = {}
        self.late_sends = 0
        self.max_lag = 0.0
        self.last_done = 0.0
        self.finished = 0  # requests that actually went out and recorded an outcome

    def error(self, kind: str, n: int = 1, scheduled: float | None = None) -> None:
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + n
        if scheduled is not None:
            self.timeline.append((round(scheduled - self.t0, 4), kind, None))


async def _one_request(
    session: aiohttp.ClientSession,
    url: str,
    payload: dict[str, Any],
    scheduled: float,
    rec: _Recorder,
    loop: asyncio.AbstractEventLoop,
) -> None:
    started = loop.time()
    lag = started - scheduled
    if lag > rec.max_lag:
        rec.max_lag = lag
    if lag * 1000.0 > LATE_SEND_MS:
        rec.late_sends += 1
    try:
        async with session.post(url, json=payload) as resp:
            body = await resp.read()
            status = resp.status
    except Exception as exc:  # every failure is data for the report, never fatal
        rec.error(_classify(exc), scheduled=scheduled)
        rec.finished += 1
        rec.last_done = loop.time()
        return
    done = loop.time()
    rec.last_done = done
    rec.finished += 1
    if 200 <= status < 300:
        rec.ok += 1
        latency = (done - scheduled) * 1000.0
        rec.latencies.append(latency)
        degraded = DEGRADED.search(body) is not None
        rec.degraded += degraded
        rec.timeline.append((round(scheduled - rec.t0, 4), "degraded" if degraded else "ok", round(latency, 3)))
    else:
        rec.error(f"http {status}", scheduled=scheduled)


async def run_open_loop(
    url: str,
    make_payload: Callable[[int], dict[str, Any]],
    rps: float,
    duration_s: float,
    timeout_s: float = 5.0,
    max_in_flight: int = 2000,
    progress: Callable[[int, int], None] | None = None,
    *,
    connection_limit: int | None = None,
) -> LoadTestResult:
    """POST ``make_payload(i)`` as JSON to ``url`` at a fixed open-loop rate.

    Sends ``ceil(rps * duration_s)`` requests, request ``i`` scheduled at ``t0 + i / rps``.
    Stops sending at ``duration_s``, then waits at most ``timeout_s`` for in-flight
    requests; anything still outstanding is cancelled and counted as ``timeout``.
    When ``max_in_flight`` requests are outstanding, further due requests are not
    sent and are counted as errors of kind ``"dropped (max_in_flight)"``.
    ``progress(sent, total)`` is called about every half second and once at the end.
    """
    # One function on purpose: the sender, the in-flight bound and the recorder share the event loop's local state;
    # split up, every part would pass the same six values around and the timing path would be harder to audit.
    if rps <= 0:
        raise InvalidInput("rps must be > 0")
    if duration_s <= 0:
        raise InvalidInput("duration_s must be > 0")
    if timeout_s <= 0:
        raise InvalidInput("timeout_s must be > 0")
    if max_in_flight < 1:
        raise InvalidInput("max_in_flight must be >= 1")

    total = max(1, math.ceil(rps * duration_s - 1e-9))
    interval = 1.0 / rps
    limit = connection_limit if connection_limit is not None else min(max_in_flight, 512)
    rec = _Recorder()
    loop = asyncio.get_running_loop()
    in_flight: set[asyncio.Task[None]] = set()
    sent = 0
    launched = 0

    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=30.0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        t0 = loop.time() + 0.01
        rec.t0 = t0
        send_end = t0 + duration_s
        next_progress = t0 + PROGRESS_EVERY_S
        i = 0
        try:
            await asyncio.sleep(max(0.0, t0 - loop.time()))
            while i < total:
                now = loop.time()
                # Launch everything that has become due since the previous tick.
                while i < total:
                    scheduled = t0 + i * interval
                    if scheduled > now:
                        break
                    if len(in_flight) >= max_in_flight:
                        rec.error(DROPPED_KIND)
                    else:
                        task = loop.create_task(_one_request(session, url, make_payload(i), scheduled, rec, loop))
                        in_flight.add(task)
                        launched += 1
                        task.add_done_callback(in_flight.discard)
                    sent += 1
                    i += 1
                if progress is not None and now >= next_progress:
                    progress(sent, total)
                    next_progress = now + PROGRESS_EVERY_S
                if i >= total:
                    break
                next_due = t0 + i * interval
                await asyncio.sleep(max(TICK_S, next_due - loop.time()))

            if in_flight:
                _, pending = await asyncio.wait(set(in_flight), timeout=timeout_s)
                for task in pending:
                    task.cancel()
                if pending:
                    await asyncio.gather(*pending, return_exceptions=True)
        finally:
            for task in list(in_flight):
                task.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
        # Requests cancelled after the final wait never recorded an outcome: they timed out.
        unfinished = launched - rec.finished
        if unfinished > 0:
            rec.error("timeout", unfinished)
            rec.last_done = loop.time()
        if progress is not None:
            progress(sent, total)

    elapsed = max(rec.last_done, send_end) - t0
    return _build_result(url, rps, duration_s, sent, rec, elapsed)


def _build_result(url: str, rps: float, duration_s: float, sent: int, rec: _Recorder, elapsed: float) -> LoadTestResult:
    errors = sum(rec.error_kinds.values())
    result = LoadTestResult(
        url=url,
        target_rps=float(rps),
        duration_s=float(duration_s),
        sent=sent,
        ok=rec.ok,
        errors=errors,
        error_kinds=dict(sorted(rec.error_kinds.items())),
        achieved_rps=round(rec.ok / elapsed, 3) if elapsed > 0 else 0.0,
        late_sends=rec.late_sends,
        max_send_lag_ms=round(rec.max_lag * 1000.0, 3),
        elapsed_s=round(elapsed, 4),
        latencies_ms=rec.latencies,
        degraded=rec.degraded,
        timeline=sorted(rec.timeline),
    )
    if rec.latencies:
        arr = np.asarray(rec.latencies, dtype=float)
        p50, p95, p99 = np.percentile(arr, [50, 95, 99])
        result.p50_ms = round(float(p50), 3)
        result.p95_ms = round(float(p95), 3)
        result.p99_ms = round(float(p99), 3)
        result.max_ms = round(float(arr.max()), 3)
        result.mean_ms = round(float(arr.mean()), 3)
    return result


def run_load_test(
    url: str,
    make_payload: Callable[[int], dict[str, Any]],
    rps: float,
    duration_s: float,
    timeout_s: float = 5.0,
    max_in_flight: int = 2000,
    progress: Callable[[int, int], None] | None = None,
    *,
    connection_limit: int | None = None,
) -> LoadTestResult:
    """Synchronous wrapper around :func:`run_open_loop` (must not be called from a running loop)."""
    return asyncio.run(
        run_open_loop(
            url,
            make_payload,
            rps,
            duration_s,
            timeout_s=timeout_s,
            max_in_flight=max_in_flight,
            progress=progress,
            connection_limit=connection_limit,
        )
    )


def _step_passes(result: LoadTestResult, p99_budget_ms: float, error_budget: float) -> bool:
    if result.sent == 0 or result.p99_ms is None:
        return False
    return result.p99_ms <= p99_budget_ms and result.error_rate <= error_budget


def find_max_rate(
    url: str,
    make_payload: Callable[[int], dict[str, Any]],
    rates: list[float],
    duration_s: float,
    p99_budget_ms: float,
    error_budget: float = 0.001,
    *,
    timeout_s: float = 5.0,
    max_in_flight: int = 2000,
    cooldown_s: float = 0.0,
    on_step: Callable[[LoadTestResult], None] | None = None,
) -> tuple[float | None, list[LoadTestResult]]:
    """Step up through ``rates`` (ascending) and return the highest sustainable one.

    A step passes when its p99 latency is within ``p99_budget_ms`` and its error rate
    is within ``error_budget``. Stepping stops at the first failing rate. Returns
    ``(best_rate_or_None, results_of_all_steps_run)``.
    """
    best: float | None = None
    results: list[LoadTestResult] = []
    for n, rate in enumerate(sorted(rates)):
        if n and cooldown_s > 0:
            time.sleep(cooldown_s)
        result = run_load_test(url, make_payload, rate, duration_s, timeout_s=timeout_s, max_in_flight=max_in_flight)
        results.append(result)
        if on_step is not None:
            on_step(result)
        if not _step_passes(result, p99_budget_ms, error_budget):
            break
        best = rate
    return best, results


def save_latency_histogram(result: LoadTestResult, path: Path, title: str) -> Path:
    """Write a PNG histogram of successful-response latencies on a log axis with p50/p95/p99 lines."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(8, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    lat = np.asarray([v for v in result.latencies_ms if v > 0], dtype=float)
    if lat.size:
        lo, hi = float(lat.min()), float(lat.max())
        if hi <= lo:
            lo, hi = lo / 1.5, hi * 1.5
        bins = [float(b) for b in np.logspace(np.log10(lo), np.log10(hi), 60)]
        ax.hist(lat, bins=bins, color="#4c72b0", alpha=0.85)
        ax.set_xscale("log")
        for label, value, color in (
            ("p50", result.p50_ms, "#2ca02c"),
            ("p95", result.p95_ms, "#ff7f0e"),
            ("p99", result.p99_ms, "#d62728"),
        ):
            if value is not None and value > 0:
                ax.axvline(value, color=color, linestyle="--", linewidth=1.5, label=f"{label} {value:.1f} ms")
        ax.legend(loc="upper right")
    else:
        ax.text(0.5, 0.5, "no successful responses", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("latency from scheduled send (ms, log scale)")
    ax.set_ylabel("requests")
    ax.set_title(
        f"{title}\n{result.target_rps:g} rps target, {result.achieved_rps:.1f} ok/s, "
        f"{result.errors} errors of {result.sent}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, LoadTestResult):
        return obj.to_dict()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_json(results: dict[str, Any] | list[Any] | LoadTestResult, path: Path) -> Path:
    """Write results (LoadTestResult objects are converted with ``to_dict()``) as indented JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=_jsonable, allow_nan=False) + "\n")
    return path


def drive_service(
    design: str, target: str, start_hint: str, payloads: list[dict], rps: float, duration: float, out_dir: Path
) -> LoadTestResult:
    """`mlsd loadtest`: wait for the service, run the open-loop load, print the summary, write JSON and a histogram."""
    from rich.progress import Progress

    from pipelines.platform.console import console, print_facts
    from pipelines.platform.infra import wait_for_http

    wait_for_http(target.rsplit("/", 1)[0] + "/readyz", 90, f"The {design} service (start it with {start_hint})")
    with Progress(console=console) as progress:
        task = progress.add_task(f"{rps:.0f} req/s for {duration:.0f} s", total=int(rps * duration))
        result = run_load_test(
            target,
            lambda i: payloads[i % len(payloads)],
            rps,
            duration,
            progress=lambda done, total: progress.update(task, completed=done),
        )
    print_facts(result.summary_rows(), f"load test {target}")
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{design}_{int(rps)}rps"
    write_json(result, out_dir / f"{name}.json")
    plot = save_latency_histogram(result, out_dir / f"{name}.png", f"{design} {target} at {rps:.0f} req/s")
    console.print(f"wrote {out_dir / f'{name}.json'} and {plot}")
    return result
