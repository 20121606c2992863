"""Starting a design's BentoML service: the command line, and the process replaced by it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

# The folder that holds `services/` and `pipelines/`: BentoML imports the service module from it.
PROJECT_ROOT = Path(__file__).resolve().parents[2]


def service_command(target: str, host: str, port: int, workers: int) -> list[str]:
    """`bentoml serve` of `target` (`services.<design>.service:<Class>`) on host:port with `workers` API workers."""
    return [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        target,
        "--host",
        host,
        "--port",
        str(port),
        "--working-dir",
        str(PROJECT_ROOT),
        "--api-workers",
        str(workers),
    ]


def exec_service(target: str, host: str, port: int, workers: int = 1) -> None:
    """Replace this process with the service, so signals and the exit code are the service's own."""
    command = service_command(target, host, port, workers)
    # A request scores one row or a few hundred: idle OpenMP threads spin-wait and steal the CPU that serves them.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # MLflow's client retries a failed request for minutes by default; the model watcher has its own rounds.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    os.execvp(command[0], command)
