"""Helpers for the benchmark scripts: a scratch Settings with the embedded broker, and JSON results."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipelines.settings import Settings

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    import os

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(
        json.dumps(
            {"benchmark": name, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), **result},
            indent=2,
            default=str,
        )
    )
    print(f"wrote {path}")
    return path


@contextmanager
def scratch_stack(home: Path, with_broker: bool = True) -> Iterator[Settings]:
    """Settings under `home` with MLflow on SQLite and, if asked, an embedded broker on a free port."""
    from pipelines.designs import all_topics
    from pipelines.platform.infra import free_port, start_broker, stop_process

    port = free_port()
    settings = Settings(
        home=home,
        mlflow_tracking_uri=f"sqlite:///{home.resolve() / 'mlflow.db'}",
        kafka_port=port,
        kafka_bootstrap=f"127.0.0.1:{port}",
    )
    if with_broker:
        start_broker(settings, all_topics())
    try:
        yield settings
    finally:
        if with_broker:
            stop_process(settings, "kafka")
