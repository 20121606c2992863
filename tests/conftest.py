"""Shared fixtures: a real embedded Kafka broker per session, per-test Settings, small simulated data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

# Each test builds its own Settings: no MLSD_* variable from the shell and no `.env` reaches this process or the
# processes the tests start. Set before Settings is imported, which reads MLSD_ENV_FILE once.
for name in [name for name in os.environ if name.startswith("MLSD_")]:
    del os.environ[name]
os.environ["MLSD_ENV_FILE"] = ""
# A slow store read on a busy test machine must not turn an answer into a degraded one; the tests of the budget
# and the outage drills set their own.
os.environ["MLSD_SERVING_STORE_BUDGET_MS"] = "1000"
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pipelines.settings import Settings  # noqa: E402


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


@pytest.fixture(scope="session")
def production_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """docker-compose.yml's configuration on this machine: Feast on the local Redis with its registry in a
    throw-away PostgreSQL database, an MLflow server over HTTP on that database, stream state in it, and a broker
    of its own. `token` goes into every entity id a test writes to the shared Redis; those keys are deleted after."""
    import uuid

    from pipelines.designs import all_topics
    from pipelines.platform.infra import free_port, start_broker, start_mlflow, stop_process
    from tests.local_services import compose_settings, delete_redis_keys, throwaway_database

    token = uuid.uuid4().hex[:10]
    home = tmp_path_factory.mktemp("production")
    with throwaway_database("mlsd_test_production") as database:
        kafka = free_port()
        settings = compose_settings(
            home,
            database,
            kafka_port=kafka,
            kafka_bootstrap=f"127.0.0.1:{kafka}",
            mlflow_port=free_port(),
            mlflow_tracking_uri="",  # the server started below, over HTTP
        )
        start_broker(settings, all_topics())
        try:
            start_mlflow(settings)
            yield SimpleNamespace(settings=settings, database=database, token=token, home=home)
        finally:
            stop_process(settings, "mlflow")
            stop_process(settings, "kafka")
            delete_redis_keys(token)


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


@pytest.fixture(scope="module")
def fraud_registry(tmp_path_factory: pytest.TempPathFactory, broker: str) -> SimpleNamespace:
    """One MLflow database and Feast repo for this module: v1 and v3 work, v2 cannot score a request.

    Each test points the aliases where it needs them first, so the order of the tests does not matter.
    """
    from pipelines.designs import feature_definitions
    from pipelines.platform.features import apply_feature_definitions
    from tests.fraud.registered_models import experiment, register_fraud_model

    home = tmp_path_factory.mktemp("deployment")
    settings = Settings(home=home, mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}", kafka_bootstrap=broker)
    apply_feature_definitions(settings, feature_definitions())
    exp = experiment(settings)
    versions = (
        register_fraud_model(settings, exp, "champion", seed=1, threshold=0.3),
        # Trained on fewer columns than the service sends: it cannot score a request.
        register_fraud_model(settings, exp, None, seed=2, n_features=3),
        register_fraud_model(settings, exp, None, seed=2, threshold=0.2),
    )
    assert versions == ("1", "2", "3")
    return SimpleNamespace(settings=settings, experiment=exp)


@pytest.fixture(scope="module")
def registry_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A migrated MLflow database holding one small logged XGBoost model, copied for each test (cheap isolation)."""
    import mlflow
    import mlflow.xgboost
    import numpy as np
    import xgboost

    from pipelines.platform.registry import connect_mlflow

    home = tmp_path_factory.mktemp("registry-template")
    connect_mlflow(Settings(home=home, mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}"))
    rng = np.random.default_rng(3)
    features = rng.normal(size=(200, 3)).astype(np.float32)
    model = xgboost.XGBClassifier(n_estimators=5, max_depth=2).fit(features, (features[:, 0] > 0).astype(int))
    experiment = mlflow.create_experiment("tiny", (home / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.xgboost.log_model(model, name="model", model_format="ubj", pip_requirements=["xgboost"])
    return home / "mlflow.db", info.model_uri


@pytest.fixture
def model_uri(settings: Settings, registry_template: tuple[Path, str]) -> str:
    """This test's own registry (a copy of the template database); every test registers versions of one model."""
    import shutil

    from pipelines.platform.registry import connect_mlflow

    database, uri = registry_template
    shutil.copyfile(database, settings.home / "mlflow.db")
    connect_mlflow(settings)
    return uri
