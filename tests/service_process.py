"""Run an `mlsd ... serve` command as a real process for end-to-end tests, and stop it afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
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
