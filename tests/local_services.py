"""The local servers the suite needs (PostgreSQL and Redis), and the docker-compose settings pointed at them.

A test that needs one fails when it is down, with the address and the fix: a skip would leave CI green with the
production configuration untested. `.ci/run` checks both before the suite starts.

`compose_settings` takes docker-compose.yml's x-common-env block (the settings every project container gets) and
swaps the container host names for the local servers and a throw-away database, so a test runs the production
configuration: Feast on Redis with its registry in PostgreSQL, MLflow on PostgreSQL, stream state in PostgreSQL.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from pipelines.settings import Settings

POSTGRES = ("127.0.0.1", 5432)
REDIS = ("127.0.0.1", 6379)
POSTGRES_ADMIN = {"host": POSTGRES[0], "port": POSTGRES[1], "user": "postgres", "dbname": "postgres"}


def reachable(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=2):
            return True
    except OSError:
        return False


def require(address: tuple[str, int], what: str) -> None:
    if not reachable(address):
        pytest.fail(f"{what} is not reachable at {address[0]}:{address[1]}; start it (the suite needs it) and rerun")


@contextmanager
def throwaway_database(prefix: str = "mlsd_test") -> Iterator[str]:
    """A new PostgreSQL database, dropped afterwards (with whatever sessions still hold it)."""
    require(POSTGRES, "PostgreSQL")
    import psycopg2
    from psycopg2 import sql

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(**POSTGRES_ADMIN)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with admin.cursor() as cursor:  # FORCE: Feast's and MLflow's connection pools may still hold sessions
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.close()


def query(database: str, statement: str, *parameters: Any) -> list[tuple[Any, ...]]:
    import psycopg2

    connection = psycopg2.connect(**{**POSTGRES_ADMIN, "dbname": database})
    try:
        with connection.cursor() as cursor:
            cursor.execute(statement, parameters)
            return list(cursor.fetchall())
    finally:
        connection.close()


def delete_redis_keys(token: str) -> int:
    """Delete exactly the Redis keys that contain `token` (a test's entity ids carry it); returns how many."""
    import redis

    client = redis.Redis(host=REDIS[0], port=REDIS[1])
    try:
        keys = list(client.scan_iter(match=f"*{token}*", count=1000))
        return int(client.delete(*keys)) if keys else 0
    finally:
        client.close()


def redis_keys(token: str) -> int:
    import redis

    client = redis.Redis(host=REDIS[0], port=REDIS[1])
    try:
        return len(list(client.scan_iter(match=f"*{token}*", count=1000)))
    finally:
        client.close()


def local_postgres(url: str, database: str) -> str:
    """The compose URL (driver and all) pointed at the local server and the test database."""
    parts = urlsplit(url)
    assert parts.hostname == "postgres", f"compose URL {url} does not name the postgres service"
    return urlunsplit((parts.scheme, f"postgres@{POSTGRES[0]}:{POSTGRES[1]}", f"/{database}", parts.query, ""))


def local_redis(connection: str) -> str:
    """Feast's `host:port[,option=value...]` form, with the host and port swapped for the local Redis."""
    address, *options = connection.split(",")
    assert address == "redis:6379", f"compose Redis address {address} does not name the redis service"
    return ",".join([f"{REDIS[0]}:{REDIS[1]}", *options])


def compose_settings(home: Path, database: str, **overrides: Any) -> Settings:
    """docker-compose.yml's settings with the local PostgreSQL (database `database`) and Redis; `overrides` last."""
    from tests.test_compose import common_settings_env, settings_fields

    require(REDIS, "Redis")
    fields: dict[str, Any] = settings_fields(common_settings_env())
    fields.update(
        home=str(home),
        feast_offline_dir=str(home / "feast" / "offline"),
        mlflow_artifacts_destination=str(home / "mlflow" / "artifacts"),
        feast_redis_url=local_redis(fields["feast_redis_url"]),
        feast_registry=local_postgres(fields["feast_registry"], database),
        mlflow_backend_store_uri=local_postgres(fields["mlflow_backend_store_uri"], database),
        stream_state_url=local_postgres(fields["stream_state_url"], database),
    )
    fields.update(overrides)
    return Settings(_env_file=None, **fields)  # type: ignore[call-arg]
