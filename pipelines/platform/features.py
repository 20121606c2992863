"""Feast access shared by every design: the store built from Settings, online writes, offline appends, reads."""

from __future__ import annotations

import functools
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
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


def apply_feature_definitions(settings: Settings, definitions: Iterable[Callable[[Path], list[Any]]]) -> FeatureStore:
    """Register the Feast objects each of `definitions` builds (idempotent, like `feast apply`).

    A definition is a design's `feature_objects`: offline folder → entities, sources, views, feature services.
    """
    store = open_feature_store(settings)
    settings.offline_dir.mkdir(parents=True, exist_ok=True)
    store.apply([obj for build in definitions for obj in build(settings.offline_dir)])
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


def write_online_fast(
    store: FeatureStore, view_name: str, join_key: str, rows: pd.DataFrame, written_at: datetime | None = None
) -> None:
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
    # The write time (now unless given) as the rows' created timestamp: the SQLite store keeps it, and
    # `OnlineRows.written_since` finds the rows written since a moment with it (a cache re-reads only those).
    written = written_at or datetime.now(UTC)
    data: list[tuple[Any, dict[str, Any], datetime, datetime | None]] = []
    for i, entity in enumerate(rows[join_key].astype(str).tolist()):
        key = EntityKey(join_keys=[join_key], entity_values=[Value(string_val=entity)])
        values = {name: make(column[i]) for (name, make), column in zip(kinds, columns, strict=True)}
        data.append((key, values, times[i], written))
    # Feast's provider is the layer `push` itself writes through; there is no public batch call below `push`.
    store._get_provider().online_write_batch(store.config, view, data, progress=None)


NUMERIC_FEAST_TYPES = frozenset({"Int32", "Int64", "Float32", "Float64", "Bool"})
SQLITE_KEYS_PER_QUERY = 5_000  # entity keys per `IN (...)`, well under SQLite's limit on bound parameters
KEY_CACHE_SIZE = 200_000  # entity keys kept serialised per reader
WRITER_CLOCK_SLACK_S = 2  # how far a writer's clock may lag: rows stamped this recently are read again


def _plain_value(value: Any) -> Any:
    """A Feast protobuf value as Python: a scalar as it is, a list value as a list, an unset value as None."""
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    found = getattr(value, kind)
    return list(found.val) if kind.endswith("_list_val") else found


class OnlineRows:
    """Reads one feature view's online rows for many entities, without Feast's per-value Python conversions.

    `get_online_features` builds a response object, converts every value through Feast's type map and checks the
    entity keys: about 110 µs per 6-feature row, so re-reading a catalogue of 15k items cost 1.6–2.6 s of CPU
    with the GIL held. This reads the same stored rows, on SQLite with one SQL query per 5,000 entities, on
    other stores through the provider's `online_read` (the layer `get_online_features` ends in), and parses the
    protobuf values directly: about 10x less CPU. Like `get_online_features`, it applies no TTL.

    On SQLite it can also say which rows were written since a mark (`written_since`), from the created timestamp
    `write_online_fast` stores with each row, so a cache can re-read only those. Other stores answer None: they
    do not keep a write time (Redis holds the event time only), and a cache reads them in full.
    """

    def __init__(self, store: FeatureStore, view_name: str, join_key: str, features: list[str] | None = None) -> None:
        self.config = store.config
        self.view = store.get_feature_view(view_name)
        self.join_key = join_key
        types = {f.name: str(f.dtype) for f in self.view.features}
        self.features = list(features) if features is not None else list(types)
        unknown = [name for name in self.features if name not in types]
        if unknown:
            raise ValueError(f"The feature view '{view_name}' has no feature {', '.join(unknown)}; check the names.")
        self.numeric = [name for name in self.features if types[name] in NUMERIC_FEAST_TYPES]
        # Feast's provider is the layer `get_online_features` itself reads through (as `push` writes through it).
        self._provider = store._get_provider()
        self._sqlite = self._sqlite_table()
        self._local = threading.local()
        # Serialising a key costs ~10 µs: a cache that re-reads a catalogue keeps its keys (bounded for users).
        self._serialized = functools.lru_cache(maxsize=KEY_CACHE_SIZE)(self._serialize)
        self._entity = functools.lru_cache(maxsize=KEY_CACHE_SIZE)(self._deserialize)

    def _sqlite_table(self) -> tuple[Path, str] | None:
        online = self.config.online_store
        if getattr(online, "type", None) != "sqlite":
            return None
        from feast.infra.online_stores.sqlite import _table_id

        path = Path(online.path)
        if not path.is_absolute():
            path = Path(self.config.repo_path or ".") / path
        versioning = getattr(self.config.registry, "enable_online_feature_view_versioning", False)
        return path, _table_id(self.config.project, self.view, versioning)

    def _connection(self) -> sqlite3.Connection:
        """One read-only connection per thread (request threads and a refresh thread read side by side). Never one
        shared connection: a thread waiting on a locked file holds that connection's mutex, and another thread
        touching the connection would then wait with the GIL held, stopping the whole process."""
        assert self._sqlite is not None
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(f"file:{self._sqlite[0]}?mode=ro", uri=True, timeout=10)
            self._local.connection = connection
        return connection

    def _entity_key(self, entity: str) -> Any:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        return EntityKey(join_keys=[self.join_key], entity_values=[Value(string_val=entity)])

    def _serialize(self, entity: str) -> bytes:
        from feast.infra.key_encoding_utils import serialize_entity_key

        return serialize_entity_key(self._entity_key(entity), self.config.entity_key_serialization_version)

    def _deserialize(self, serialized: bytes) -> str:
        from feast.infra.key_encoding_utils import deserialize_entity_key

        value = deserialize_entity_key(serialized, self.config.entity_key_serialization_version).entity_values[0]
        return str(_plain_value(value))

    def _frame(self, ids: list[str], values: dict[str, dict[int, Any]]) -> pd.DataFrame:
        """Columns in `self.features` order, one row per id: numbers as float (NaN when absent), others as objects."""
        n = len(ids)
        columns: dict[str, Any] = {}
        for name in self.features:
            found = values.get(name, {})
            if name in self.numeric:
                column = np.full(n, np.nan)
                if found:
                    positions = np.fromiter(found.keys(), dtype=np.int64, count=len(found))
                    column[positions] = np.fromiter(
                        (np.nan if v is None else float(v) for v in found.values()), dtype=np.float64, count=len(found)
                    )
            else:
                column = np.full(n, None, dtype=object)
                for position, value in found.items():
                    column[position] = value
            columns[name] = column
        return pd.DataFrame(columns, index=pd.Index(ids, name=self.join_key, dtype=object))

    def read(self, ids: list[str]) -> pd.DataFrame:
        """The rows of these entities, once each (index `join_key`, a column per feature); NaN/None where absent."""
        ids = list(dict.fromkeys(str(entity) for entity in ids))
        return self._frame(ids, self._values(ids))

    def read_one(self, entity: str) -> dict[str, Any]:
        """One entity's row as {feature: value}, None where absent: a request's read, without building a frame."""
        values = self._values([str(entity)])
        return {name: values[name].get(0) for name in self.features}

    def _values(self, ids: list[str]) -> dict[str, dict[int, Any]]:
        """{feature: {position in `ids`: value}} for the rows found."""
        wanted = set(self.features)
        values: dict[str, dict[int, Any]] = {name: {} for name in self.features}
        if self._sqlite is not None:
            from feast.protos.feast.types.Value_pb2 import Value

            parse = Value.FromString
            positions = {self._serialized(entity): i for i, entity in enumerate(ids)}
            keys = list(positions)
            connection = self._connection()
            for start in range(0, len(keys), SQLITE_KEYS_PER_QUERY):
                chunk = keys[start : start + SQLITE_KEYS_PER_QUERY]
                query = (
                    f'SELECT entity_key, feature_name, value FROM "{self._sqlite[1]}" '
                    f"WHERE entity_key IN ({','.join('?' * len(chunk))})"
                )
                for key, name, blob in connection.execute(query, chunk):
                    if name in wanted:
                        values[name][positions[key]] = _plain_value(parse(blob))
        else:
            # A copy of the names: the Redis store appends its timestamp field to the list it is given.
            entity_keys = [self._entity_key(entity) for entity in ids]
            found = self._provider.online_read(self.config, self.view, entity_keys, list(self.features))
            for i, (_, row) in enumerate(found):
                for name, value in (row or {}).items():
                    if name in wanted:
                        values[name][i] = _plain_value(value)
        return values

    def _store_now(self) -> int:
        """Now as the store keeps times: Feast's SQLite adapter stores a naive UTC datetime as `int(dt.timestamp())`."""
        return int(datetime.now(UTC).replace(tzinfo=None).timestamp())

    @staticmethod
    def _next_mark(newest: int | None, now: int) -> int:
        """Where the next `written_since` starts: after the newest row seen, but never later than `now` minus the
        slack, because a writer whose clock is a second or two behind may still add rows stamped that recently."""
        limit = now - WRITER_CLOCK_SLACK_S
        return limit if newest is None else min(newest + 1, limit)

    def mark(self) -> int | None:
        """A mark for `written_since` covering every row in the view now; None if the store keeps no write time."""
        if self._sqlite is None:
            return None
        now = self._store_now()
        newest = self._connection().execute(f'SELECT max(created_ts) FROM "{self._sqlite[1]}"').fetchone()[0]
        return self._next_mark(int(newest) if isinstance(newest, int | float) else None, now)

    def written_since(self, mark: int) -> tuple[pd.DataFrame, int] | None:
        """The rows created at or after `mark` (from `mark()` or an earlier call), and the mark that follows them.

        Rows without a created timestamp (written through Feast's `push`) are always returned: nothing says they
        did not change. None when the store keeps no write time; read everything then.
        """
        if self._sqlite is None:
            return None
        from feast.protos.feast.types.Value_pb2 import Value

        parse = Value.FromString
        wanted = set(self.features)
        now = self._store_now()  # before the query: a row written while it runs is read next time
        rows = (
            self._connection()
            .execute(
                f'SELECT entity_key, feature_name, value, created_ts FROM "{self._sqlite[1]}" '
                "WHERE created_ts IS NULL OR created_ts >= ?",
                (mark,),
            )
            .fetchall()
        )
        positions: dict[bytes, int] = {}
        values: dict[str, dict[int, Any]] = {name: {} for name in self.features}
        newest = mark - 1
        for key, name, blob, created in rows:
            position = positions.setdefault(key, len(positions))
            if name in wanted:
                values[name][position] = _plain_value(parse(blob))
            if isinstance(created, int | float) and created > newest:
                newest = int(created)
        return self._frame([self._entity(key) for key in positions], values), self._next_mark(newest, now)


def latest_per_entity(rows: pd.DataFrame, key: str) -> pd.DataFrame:
    """The newest row per entity: what the online store holds after these rows."""
    return rows.sort_values("event_timestamp", kind="stable").drop_duplicates(key, keep="last")


def write_feature_rows(
    settings: Settings,
    store: FeatureStore,
    views: list[tuple[str, str, pd.DataFrame]],
    part_names: dict[str, str] | None = None,
) -> tuple[int, int]:
    """A stream sink's write: the newest row per entity online, then every row offline, for each (view, key, rows).

    Returns (online rows, offline rows). Online first, so a row is servable as early as possible. Both writes are
    idempotent: online rows overwrite by entity, and an offline part named in `part_names` (view → name) replaces
    the part a crashed attempt at the same batch left. A store that fails raises `DependencyUnavailable`, so the
    stream loop retries instead of dead-lettering the events.
    """
    from pipelines.platform.errors import DependencyUnavailable

    online = offline = 0
    try:
        newest = [(view, key, latest_per_entity(rows, key)) for view, key, rows in views]
        for view, key, rows in newest:
            write_online_fast(store, view, key, rows)
            online += len(rows)
        for view, _key, rows in views:
            append_offline(settings, view, rows, (part_names or {}).get(view))
            offline += len(rows)
    except (OSError, sqlite3.Error) as exc:
        raise DependencyUnavailable(f"The feature store refused a write ({type(exc).__name__}: {exc})") from exc
    except Exception as exc:
        if type(exc).__module__.startswith("redis"):
            raise DependencyUnavailable(f"The Redis online store refused a write ({exc})") from exc
        raise
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
