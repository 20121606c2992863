"""The settings the docker-compose stack runs with, exercised against the real local Redis and PostgreSQL.

docker-compose.yml points Feast at Redis (online store) and at PostgreSQL (SQL registry), and MLflow at the same
PostgreSQL database (backend store), all through its x-common-env block. These tests take that block from the
file, swap the container host names for the local servers and a throw-away database, and run the real code paths:
`apply_feature_definitions`, `push_online`, `read_online`, `register_version` and the registry's loading helpers.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_repo.fraud import (
    CUSTOMER_FEATURES,
    CUSTOMER_PUSH,
    FEATURE_SERVICE,
    TERMINAL_FEATURES,
    TERMINAL_PUSH,
)
from pipelines.settings import Settings
from tests.local_services import (
    POSTGRES_ADMIN,
    REDIS,
    compose_settings,
    delete_redis_keys,
    require,
    throwaway_database,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    """A throw-away PostgreSQL database, shared by Feast's registry and MLflow's store as in docker-compose.yml."""
    with throwaway_database("mlsd_test_compose") as name:
        yield name


# ---------------------------------------------------------------- Feast: Redis online store, PostgreSQL registry


def customer_rows(customer_id: str, *rows: tuple[pd.Timestamp, int]) -> pd.DataFrame:
    """One row per (event time, count); every customer feature is derived from `count` so a read shows which won."""
    return pd.DataFrame(
        [
            {"customer_id": customer_id, "event_timestamp": at}
            | {name: (count if "_count_" in name else float(count) * 10) for name in CUSTOMER_FEATURES}
            for at, count in rows
        ]
    )


def terminal_rows(terminal_id: str, at: pd.Timestamp, count: int) -> pd.DataFrame:
    row = {name: (count if "_count_" in name else count / 100) for name in TERMINAL_FEATURES}
    return pd.DataFrame([{"terminal_id": terminal_id, "event_timestamp": at} | row])


@pytest.fixture
def redis_token() -> Iterator[str]:
    """A unique id for this test's entities; afterwards exactly the Redis keys that contain it are deleted."""
    require(REDIS, "Redis")
    token = uuid.uuid4().hex
    yield token
    delete_redis_keys(token)


def test_feast_pushes_to_redis_and_keeps_its_registry_in_postgres(
    tmp_path: Path, database: str, redis_token: str
) -> None:
    import redis

    from pipelines.designs import feature_definitions
    from pipelines.platform.features import apply_feature_definitions, open_feature_store, push_online, read_online

    settings = compose_settings(tmp_path, database)
    assert settings.feast_online_store == "redis"
    store = apply_feature_definitions(settings, feature_definitions())

    # The registry lives in PostgreSQL: a second store (another container) sees the definitions, and no registry
    # file was written under MLSD_HOME.
    other = open_feature_store(settings)
    assert {view.name for view in other.list_feature_views()} >= {"fraud_customer_features", "fraud_terminal_features"}
    assert other.get_feature_service(FEATURE_SERVICE).name == FEATURE_SERVICE
    assert not list((tmp_path / "feast").glob("registry*"))

    customer, terminal = f"C-{redis_token}", f"T-{redis_token}"
    entity = [{"customer_id": customer, "terminal_id": terminal}]
    # Recent event times: rows older than the feature views' TTL would read back as missing.
    now = pd.Timestamp.now(tz="UTC").floor("s")

    def stored_count() -> int:
        return int(read_online(store, FEATURE_SERVICE, entity)["customer_tx_count_1d"].iloc[0])

    push_online(store, CUSTOMER_PUSH, customer_rows(customer, (now - pd.Timedelta(hours=2), 5)))
    push_online(store, TERMINAL_PUSH, terminal_rows(terminal, now - pd.Timedelta(hours=2), 3))
    row = read_online(store, FEATURE_SERVICE, entity).iloc[0]
    assert row["customer_tx_count_1d"] == 5
    assert row["customer_avg_amount_7d"] == pytest.approx(50.0)
    assert row["terminal_tx_count_1d"] == 3
    assert row["terminal_risk_30d"] == pytest.approx(0.03)

    # Feast's Redis store stores each entity's event timestamp next to its features and skips a write whose
    # timestamp is not strictly newer (compared to the nanosecond). So a replayed or late row never overwrites a
    # newer one: older is skipped, the same instant is skipped too, newer wins. (The SQLite store used without
    # Docker overwrites unconditionally.)
    push_online(store, CUSTOMER_PUSH, customer_rows(customer, (now - pd.Timedelta(hours=3), 99)))
    assert stored_count() == 5, "an older row replaced a newer one"
    push_online(store, CUSTOMER_PUSH, customer_rows(customer, (now - pd.Timedelta(hours=2), 77)))
    assert stored_count() == 5, "a row with the same event time replaced the stored one"
    push_online(store, CUSTOMER_PUSH, customer_rows(customer, (now - pd.Timedelta(hours=1), 6)))
    assert stored_count() == 6
    # Within one push the newest row per entity wins, whatever the row order.
    push_online(
        store,
        CUSTOMER_PUSH,
        customer_rows(customer, (now - pd.Timedelta(minutes=30), 8), (now - pd.Timedelta(minutes=50), 7)),
    )
    assert stored_count() == 8

    # The features really are in this Redis (one hash per entity), not in a local file.
    client = redis.Redis(host=REDIS[0], port=REDIS[1])
    try:
        assert len(list(client.scan_iter(match=f"*{redis_token}*"))) == 2
    finally:
        client.close()
    assert not (tmp_path / "feast" / "online.db").exists()


# ---------------------------------------------------------------- MLflow: PostgreSQL backend store, aliases


@pytest.fixture
def mlflow_on_postgres(tmp_path: Path, database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings whose tracking URI is the compose backend store itself (the MLflow server in compose sits on it)."""
    import mlflow

    settings = compose_settings(tmp_path, database)
    uri = settings.backend_store_uri
    # MLflow mirrors its URIs into these variables; monkeypatch puts back whatever was there before.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    yield settings.model_copy(update={"mlflow_tracking_uri": uri})
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]
    mlflow.set_registry_uri(None)  # type: ignore[arg-type]


def test_mlflow_registers_and_loads_the_champion_from_postgres(
    mlflow_on_postgres: Settings, tmp_path: Path, database: str
) -> None:
    import mlflow
    import mlflow.xgboost
    import psycopg2
    import xgboost

    from pipelines.platform.registry import (
        CHAMPION,
        connect_mlflow,
        download_version,
        register_version,
        require_alias,
        version_tags,
    )

    settings = mlflow_on_postgres
    assert settings.backend_store_uri.startswith("postgresql+psycopg2://")
    assert connect_mlflow(settings) == settings.backend_store_uri
    assert mlflow.get_tracking_uri() == settings.backend_store_uri

    rng = np.random.default_rng(7)
    features = rng.normal(size=(300, 4)).astype(np.float32)
    labels = (features[:, 0] + 0.5 * features[:, 1] > 0).astype(int)
    model = xgboost.XGBClassifier(n_estimators=10, max_depth=2, random_state=7).fit(features, labels)

    # Artifacts go under tmp_path; without a location MLflow would use ./mlruns in the working directory.
    experiment = mlflow.create_experiment(f"mlsd-test-{uuid.uuid4().hex[:8]}", (tmp_path / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.xgboost.log_model(model, name="model", model_format="ubj", pip_requirements=["xgboost"])

    name = f"fraud-xgboost-test-{uuid.uuid4().hex[:8]}"
    first = register_version(info.model_uri, name, CHAMPION, tags={"threshold": "0.42"})
    assert require_alias(name, CHAMPION, "a test") == first
    assert version_tags(name, first)["threshold"] == "0.42"
    booster = xgboost.Booster()
    booster.load_model(str(next(download_version(name, first).glob("model.*"))))  # XGBoost's file, no pickle
    np.testing.assert_allclose(booster.inplace_predict(features), model.predict_proba(features)[:, 1], rtol=1e-6)

    # Registering again moves the alias: the champion is whatever version it points at now.
    second = register_version(info.model_uri, name, CHAMPION)
    assert (first, second) == ("1", "2")
    assert require_alias(name, CHAMPION, "a test") == second

    # The registry is the PostgreSQL database of the compose settings.
    with psycopg2.connect(**{**POSTGRES_ADMIN, "dbname": database}) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s", (name,))
        assert cursor.fetchall() == [(CHAMPION, 2)]
    connection.close()
    assert list((tmp_path / "artifacts").rglob("MLmodel"))
