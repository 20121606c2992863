"""Feast access shared by every design: the store built from Settings, online writes, offline appends, reads."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pipelines.settings import Settings

if TYPE_CHECKING:
    from feast import FeatureStore

PROJECT = "mlsd"


def repo_config(settings: Settings) -> Any:
    """The Feast configuration: SQLite or Redis online store, Parquet offline store, file or SQL registry."""
    from feast import RepoConfig

    feast_dir = (settings.home / "feast").resolve()
    feast_dir.mkdir(parents=True, exist_ok=True)
    if settings.feast_online_store == "redis":
        online: dict[str, Any] = {"type": "redis", "connection_string": settings.feast_redis_url}
    else:
        online = {"type": "sqlite", "path": str(feast_dir / "online.db")}
    # Registry refreshes happen on a background thread, never inside a scoring request.
    refresh = {"cache_ttl_seconds": 60, "cache_mode": "thread"}
    if settings.feast_registry.startswith(("postgresql", "sqlite", "mysql")):
        registry: Any = {"registry_type": "sql", "path": settings.feast_registry, **refresh}
    else:
        registry = {"path": settings.feast_registry or str(feast_dir / "registry.db"), **refresh}
    return RepoConfig(
        project=PROJECT,
        provider="local",
        registry=registry,
        online_store=online,
        offline_store={"type": "pipelines.platform.feast_offline.AsofDuckDBOfflineStore"},
        entity_key_serialization_version=3,
        repo_path=str(Path(__file__).resolve().parents[2] / "feature_repo"),
    )


def open_feature_store(settings: Settings) -> FeatureStore:
    from feast import FeatureStore

    return FeatureStore(config=repo_config(settings))


def apply_feature_definitions(settings: Settings) -> FeatureStore:
    """Register every design's Feast objects (idempotent, like `feast apply`)."""
    from feature_repo.fraud import fraud_feature_objects
    from feature_repo.recsys import recsys_feature_objects

    store = open_feature_store(settings)
    settings.offline_dir.mkdir(parents=True, exist_ok=True)
    store.apply([*fraud_feature_objects(settings.offline_dir), *recsys_feature_objects(settings.offline_dir)])
    store.refresh_registry()  # the background-refreshed cache would otherwise lag behind this apply
    return store


def scratch_feature_settings(settings: Settings, folder: Path) -> Settings:
    """The same settings with a throw-away Feast repo (SQLite, local registry and offline files) in `folder`.

    For jobs that backfill features only to build a training or holdout set (the gate, the retraining loop): the
    live online store, which the stream processor keeps current, stays untouched. MLflow is pinned to the live
    registry, whatever `home` it derived from.
    """
    return settings.model_copy(
        update={
            "home": Path(folder),
            "feast_online_store": "sqlite",
            "feast_registry": "",
            "feast_offline_dir": "",
            "mlflow_tracking_uri": settings.tracking_uri,
        }
    )


def to_feast_timestamps(frame: pd.DataFrame, column: str = "event_timestamp") -> pd.DataFrame:
    """Feast stores microseconds in UTC; nanosecond timestamps fail its Arrow conversion."""
    frame = frame.copy()
    frame[column] = pd.to_datetime(frame[column], utc=True).dt.floor("us").astype("datetime64[us, UTC]")
    return frame


def epoch_seconds(timestamps: pd.Series) -> Any:
    """Epoch seconds (NumPy array) at microsecond precision, as events carry them through Kafka (JSON → datetime)."""
    micros = pd.to_datetime(timestamps, utc=True).dt.floor("us").astype("int64").to_numpy() // 1000
    return micros / 1e6


def push_online(store: FeatureStore, push_source: str, rows: pd.DataFrame) -> None:
    """Write rows to the online store through Feast's push API (the general path, used by backfills)."""
    from feast.data_source import PushMode

    if rows.empty:
        return
    store.push(push_source, to_feast_timestamps(rows), to=PushMode.ONLINE)


def _value_makers() -> dict[str, Any]:
    """Feast type name → function building its protobuf value from a Python value."""
    from feast.protos.feast.types.Value_pb2 import DoubleList, Int64List, StringList, Value

    return {
        "Int64": lambda v: Value(int64_val=int(v)),
        "Int32": lambda v: Value(int32_val=int(v)),
        "Float64": lambda v: Value(double_val=float(v)),
        "Float32": lambda v: Value(float_val=float(v)),
        "String": lambda v: Value(string_val=str(v)),
        "Bool": lambda v: Value(bool_val=bool(v)),
        "Array(String)": lambda v: Value(string_list_val=StringList(val=[str(x) for x in v])),
        "Array(Float64)": lambda v: Value(double_list_val=DoubleList(val=[float(x) for x in v])),
        "Array(Int64)": lambda v: Value(int64_list_val=Int64List(val=[int(x) for x in v])),
    }


def write_online_fast(store: FeatureStore, view_name: str, join_key: str, rows: pd.DataFrame) -> None:
    """Write rows straight into the online store through Feast's provider.

    `push` converts a DataFrame to Arrow and then value by value to protobuf, about 85 µs per row here; a stream
    processor writing thousands of rows a second builds the protobuf values itself (a few µs per row) and hands
    them to the same `online_write_batch` the push ends in, so every store (SQLite, Redis) behaves as with push.
    """
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    if rows.empty:
        return
    view = store.get_feature_view(view_name)
    makers = _value_makers()
    kinds = [(f.name, makers[str(f.dtype)]) for f in view.features]
    columns = [rows[name].tolist() for name, _ in kinds]
    nanos = pd.to_datetime(rows["event_timestamp"], utc=True).astype("int64").tolist()
    times = [datetime.fromtimestamp(ns / 1e9, UTC) for ns in nanos]
    data: list[tuple[Any, dict[str, Any], datetime, datetime | None]] = []
    for i, entity in enumerate(rows[join_key].astype(str).tolist()):
        key = EntityKey(join_keys=[join_key], entity_values=[Value(string_val=entity)])
        values = {name: make(column[i]) for (name, make), column in zip(kinds, columns, strict=True)}
        data.append((key, values, times[i], None))
    # Feast's provider is the layer `push` itself writes through; there is no public batch call below `push`.
    store._get_provider().online_write_batch(store.config, view, data, progress=None)


def latest_per_entity(rows: pd.DataFrame, key: str) -> pd.DataFrame:
    """The newest row per entity: what the online store holds after these rows."""
    return rows.sort_values("event_timestamp", kind="stable").drop_duplicates(key, keep="last")


def write_feature_rows(
    settings: Settings, store: FeatureStore, views: list[tuple[str, str, pd.DataFrame]]
) -> tuple[int, int]:
    """A stream sink's write: the newest row per entity online, then every row offline, for each (view, key, rows).

    Returns (online rows, offline rows). Online first, so a row is servable as early as possible; both writes are
    idempotent (overwrite by entity; offline duplicates of a replayed batch share their timestamps).
    """
    online = offline = 0
    newest = [(view, key, latest_per_entity(rows, key)) for view, key, rows in views]
    for view, key, rows in newest:
        write_online_fast(store, view, key, rows)
        online += len(rows)
    for view, _key, rows in views:
        append_offline(settings, view, rows)
        offline += len(rows)
    return online, offline


def append_offline(settings: Settings, view_name: str, rows: pd.DataFrame, part_name: str | None = None) -> Path:
    """Append rows to a feature view's offline Parquet folder as one new part file (atomic rename)."""
    folder = settings.offline_dir / view_name
    folder.mkdir(parents=True, exist_ok=True)
    name = part_name or f"part-{pd.Timestamp.now('UTC').strftime('%Y%m%dT%H%M%S%f')}-{uuid.uuid4().hex[:8]}"
    target = folder / f"{name}.parquet"
    tmp = folder / f".{name}.tmp"
    to_feast_timestamps(rows).to_parquet(tmp, index=False)
    tmp.rename(target)
    return target


def reset_offline(settings: Settings, view_name: str) -> None:
    """Remove a view's offline rows, before a backfill rewrites them."""
    folder = settings.offline_dir / view_name
    if folder.exists():
        for part in folder.glob("*.parquet"):
            part.unlink()


def read_offline(settings: Settings, view_name: str) -> pd.DataFrame:
    folder = settings.offline_dir / view_name
    parts = sorted(folder.glob("*.parquet"))
    if not parts:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)


def read_online(store: FeatureStore, feature_service: str, entity_rows: list[dict[str, Any]]) -> pd.DataFrame:
    service = store.get_feature_service(feature_service)
    return store.get_online_features(features=service, entity_rows=entity_rows).to_df()


def historical_features(store: FeatureStore, feature_service: str, entity_df: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time correct features for each entity row (`event_timestamp` plus join keys)."""
    service = store.get_feature_service(feature_service)
    return store.get_historical_features(entity_df=entity_df, features=service).to_df()
