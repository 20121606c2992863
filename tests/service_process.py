"""Run an `mlsd ... serve` command as a real process for end-to-end tests, and stop it afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@contextmanager
def serving(args: list[str], env: dict[str, str], port: int, ready_s: float = 120) -> Iterator[str]:
    """Start `mlsd <args>` with `env` added, wait for /readyz, yield the base URL, stop the process group."""
    mlsd = Path(sys.executable).parent / "mlsd"
    process = subprocess.Popen(
        [str(mlsd), *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_s
    try:
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
            if process.poll() is not None:
                pytest.fail(f"service exited: {process.stdout.read().decode()[-3000:]}")  # type: ignore[union-attr]
        else:
            pytest.fail(f"service did not become ready in {ready_s:.0f} s")
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def traffic_across(
    call: Callable[[int], tuple[int, str]], change: Callable[[], None], clients: int = 3
) -> tuple[list[tuple[int, str]], int]:
    """`clients` threads send requests (`call(i)` → status, model version) for a second before `change()`, during
    it and a second after. Returns every result in arrival order and how many had arrived when `change` returned."""
    results: list[tuple[int, str]] = []
    stop = threading.Event()

    def client(worker: int) -> None:
        i = worker
        while not stop.is_set():
            results.append(call(i))
            i += clients

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.0)
        change()
        changed_at = len(results)
        time.sleep(1.0)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    return results, changed_at


def scrape_until(base: str, series: str, poke: Callable[[], object] | None = None, timeout_s: float = 30) -> str:
    """The service's /metrics once it shows `series` (or at the deadline), poking it with a request meanwhile:
    shadow predictions run after their responses, so their counters may trail them."""
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        if series in metrics or time.monotonic() > deadline:
            return metrics
        if poke is not None:
            poke()
        time.sleep(0.5)
