from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from pipelines.platform.infra import free_port
from pipelines.platform.loadtest import (
    LoadTestResult,
    find_max_rate,
    run_load_test,
    save_latency_histogram,
    write_json,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


class _Server:
    """Tiny aiohttp app on 127.0.0.1 running in a background thread.

    Payload flags: ``bad`` -> 400, ``sleep_ms`` -> concurrent sleep,
    ``serial_ms`` -> sleep while holding a lock (a single-worker server that queues).
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.hits = 0
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._lock: asyncio.Lock | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        body: dict[str, Any] = await request.json()
        if body.get("bad"):
            return web.json_response({"error": "bad payload"}, status=400)
        if body.get("sleep_ms"):
            await asyncio.sleep(body["sleep_ms"] / 1000.0)
        if body.get("serial_ms"):
            assert self._lock is not None
            async with self._lock:
                await asyncio.sleep(body["serial_ms"] / 1000.0)
        return web.json_response({"ok": True, "i": body.get("i")})

    async def _start(self) -> None:
        self._lock = asyncio.Lock()
        app = web.Application()
        app.router.add_post("/predict", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._start())
        self._ready.set()
        self.loop.run_forever()
        assert self._runner is not None
        for task in asyncio.all_tasks(self.loop):  # answers still sleeping (a test's 60 s ones) end now
            task.cancel()
        self.loop.run_until_complete(self._runner.cleanup())
        self.loop.close()

    def start(self) -> _Server:
        self._thread.start()
        assert self._ready.wait(10), "test server did not start"
        return self

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/predict"


@pytest.fixture(scope="module")
def server() -> Iterator[_Server]:
    srv = _Server().start()
    yield srv
    srv.stop()


def test_counts_kinds_and_percentiles(server: _Server) -> None:
    calls: list[tuple[int, int]] = []

    def payload(i: int) -> dict[str, Any]:
        return {"i": i, "bad": i % 10 == 0}

    rps, duration = 300.0, 1.0
    before = server.hits
    res = run_load_test(server.url, payload, rps=rps, duration_s=duration, progress=lambda a, b: calls.append((a, b)))

    assert res.sent == 300
    assert server.hits - before == 300
    assert res.errors == 30
    assert res.error_kinds == {"http 400": 30}
    assert res.ok == 270
    assert res.ok + res.errors == res.sent
    assert len(res.latencies_ms) == res.ok
    assert res.p50_ms is not None and res.p95_ms is not None and res.p99_ms is not None
    assert res.max_ms is not None and res.mean_ms is not None
    assert 0 < res.p50_ms <= res.p95_ms <= res.p99_ms <= res.max_ms
    assert 0 < res.achieved_rps <= 300  # never more than was offered; how close it comes is benchmarks/ work
    assert calls and calls[-1] == (300, 300)

    d = res.to_dict()
    assert "latencies_ms" not in d
    assert d["error_kinds"] == {"http 400": 30}
    json.dumps(d)
    assert len(res.to_dict(include_latencies=True)["latencies_ms"]) == res.ok
    rows = dict(res.summary_rows())
    assert rows["sent"] == "300" and "http 400: 30" in rows["error kinds"]


def test_an_open_loop_generator_sees_the_queue_of_a_slow_server(server: _Server) -> None:
    # A single-worker server with 20 ms per request serves at most 50 req/s. Offered 100 req/s for 1 s, request i
    # is sent at ~i * 10 ms and cannot finish before (i + 1) * 20 ms, so it waits at least ~i * 10 ms: the median
    # request at least ~500 ms. These are lower bounds set by the server's sleeps, which a slower machine only
    # raises; a generator that waited for answers before sending (closed loop) would report ~20 ms.
    res = run_load_test(server.url, lambda i: {"i": i, "serial_ms": 20}, rps=100, duration_s=1.0, timeout_s=10.0)
    assert res.sent == 100
    assert res.errors == 0, res.error_kinds
    assert res.p50_ms is not None and res.p99_ms is not None
    assert res.p50_ms > 250
    assert res.p99_ms > 600
    assert res.achieved_rps <= 50


@pytest.mark.timeout(20)  # waiting for the 60 s answers instead of timing out would overrun this
def test_timeouts_are_counted_and_the_run_does_not_wait_for_late_answers(server: _Server) -> None:
    res = run_load_test(server.url, lambda i: {"sleep_ms": 60_000}, rps=20, duration_s=0.5, timeout_s=0.3)
    assert res.sent == 10
    assert res.ok == 0
    assert res.error_kinds == {"timeout": 10}
    assert res.p99_ms is None
    assert dict(res.summary_rows())["p99 ms"] == "-"


def test_closed_port_reports_connection_refused() -> None:
    url = f"http://127.0.0.1:{free_port()}/predict"
    res = run_load_test(url, lambda i: {"i": i}, rps=50, duration_s=0.4, timeout_s=1.0)
    assert res.sent == 20
    assert res.ok == 0
    assert res.errors == 20
    assert res.error_kinds == {"connection refused": 20}
    assert res.achieved_rps == 0


def test_max_in_flight_drops_are_reported(server: _Server) -> None:
    res = run_load_test(
        server.url, lambda i: {"sleep_ms": 300}, rps=100, duration_s=0.3, timeout_s=2.0, max_in_flight=5
    )
    assert res.sent == 30
    drops = res.error_kinds.get("dropped (max_in_flight)", 0)
    assert drops >= 20
    assert res.ok + drops == 30
    assert set(res.error_kinds) == {"dropped (max_in_flight)"}


def test_histogram_and_json_written(server: _Server, tmp_path: Path) -> None:
    res = run_load_test(server.url, lambda i: {"i": i, "sleep_ms": i % 7}, rps=200, duration_s=0.5)
    png = save_latency_histogram(res, tmp_path / "plots" / "lat.png", "test histogram")
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 5_000

    empty = LoadTestResult(url="http://127.0.0.1:1/x", target_rps=1, duration_s=1, sent=1, errors=1)
    assert save_latency_histogram(empty, tmp_path / "empty.png", "no data").exists()

    out = write_json({"steps": [res], "best": 200.0}, tmp_path / "out" / "r.json")
    loaded = json.loads(out.read_text())
    assert loaded["steps"][0]["sent"] == res.sent
    assert "latencies_ms" not in loaded["steps"][0]


def test_find_max_rate_stops_at_the_first_rate_over_the_latency_budget(server: _Server) -> None:
    # The rates run in order (20, 50, 300, ...) for 0.5 s each: 10 + 25 quick requests, then every request takes
    # 1.5 s, over the 1 s budget by construction (the server sleeps), so 300 req/s fails whatever the machine.
    sent: list[int] = []

    def payload(i: int) -> dict[str, Any]:
        sent.append(i)
        return {"i": i, "sleep_ms": 1500 if len(sent) > 35 else 0}

    best, steps = find_max_rate(
        server.url, payload, rates=[50, 20, 300, 1000], duration_s=0.5, p99_budget_ms=1000.0, timeout_s=5.0
    )
    assert best == 50
    assert [s.target_rps for s in steps] == [20, 50, 300]
    assert steps[-1].p99_ms is not None and steps[-1].p99_ms >= 1500.0


def test_find_max_rate_error_budget(server: _Server) -> None:
    best, steps = find_max_rate(
        server.url,
        lambda i: {"i": i, "bad": i % 5 == 0},
        rates=[20, 40],
        duration_s=0.5,
        p99_budget_ms=1000.0,
    )
    assert best is None
    assert len(steps) == 1 and steps[0].error_kinds == {"http 400": 2}
