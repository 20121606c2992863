"""Shared fixtures: a real embedded Kafka broker per session, per-test Settings, small simulated data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from pipelines.settings import Settings

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Tansu broker on a free port with every design's topics; yields its bootstrap address."""
    from pipelines.designs import all_topics
    from pipelines.platform.infra import free_port, start_broker, stop_process

    port = free_port()
    settings = Settings(home=tmp_path_factory.mktemp("broker"), kafka_port=port, kafka_bootstrap=f"127.0.0.1:{port}")
    start_broker(settings, all_topics())
    yield settings.kafka_bootstrap
    stop_process(settings, "kafka")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Everything under tmp_path; MLflow straight on a SQLite file (no server needed)."""
    return Settings(home=tmp_path, mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


@pytest.fixture
def kafka_settings(settings: Settings, broker: str) -> Settings:
    return settings.model_copy(update={"kafka_bootstrap": broker})


@pytest.fixture(scope="session")
def small_transactions() -> pd.DataFrame:
    """About 40k transactions over 40 days: enough fraud of each pattern to train on, fast to process."""
    from pipelines.fraud.simulate import config_for_size, simulate_transactions

    return simulate_transactions(config_for_size(40_000, days=40, seed=11))


def unique(prefix: str) -> str:
    import uuid

    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def group_at_end(settings: Settings, topics: list[str], prefix: str) -> str:
    """A new consumer group committed at the topics' ends: it reads only what is produced after this call.

    The session's broker is shared, so a test's processor would otherwise also read every earlier test's events.
    The group drains the topics instead of seeking to their ends: the embedded broker's ListOffsets answer can fall
    short of the end right after a produce.
    """
    import time

    from pipelines.platform.stream import make_consumer

    group = unique(prefix)
    consumer = make_consumer(settings, topics, group)
    deadline = time.monotonic() + 60
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(timeout_ms=200)
    while time.monotonic() < deadline and any(consumer.poll(timeout_ms=1000).values()):
        pass
    consumer.commit()
    consumer.close()
    return group
