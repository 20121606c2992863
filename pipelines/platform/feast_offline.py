"""A Feast offline store that answers point-in-time queries with a DuckDB ASOF JOIN.

Feast's bundled DuckDB store joins every entity row with every feature row of the same key inside the TTL and then
keeps the newest one; with a few hundred feature rows per key that fan-out took 87 s for one million entity rows
on our 2-core machines. An ASOF JOIN gives the same answer (the newest feature row at or before the entity
timestamp, no older than the TTL) in about a second. Everything else — registry, sources, materialisation,
pushes — is Feast's own DuckDB store, which this class extends.

It answers as Feast's store does (tests/platform/test_feast_offline.py compares the two on random cases): a tie on
the event timestamp goes to the newest created timestamp, naive timestamps are UTC, the entity timestamp column
is found as Feast finds it, and a source's `timestamp_field` and `field_mapping` and a projection's alias and
`join_key_map` apply. It refuses what an ASOF JOIN cannot do: `filter_by_created_timestamp`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import duckdb
import pandas as pd
import pyarrow
from feast import FeatureView
from feast.infra.offline_stores.duckdb import DuckDBOfflineStore
from feast.infra.offline_stores.offline_store import RetrievalJob, RetrievalMetadata
from feast.infra.offline_stores.offline_utils import infer_event_timestamp_from_entity_df
from feast.infra.registry.base_registry import BaseRegistry
from feast.on_demand_feature_view import OnDemandFeatureView
from feast.repo_config import FeastConfigBaseModel, RepoConfig
from pydantic import StrictStr

from pipelines.platform.errors import InvalidInput

ROW_ID = "__mlsd_row"
NO_NAMES: Mapping[str, str] = MappingProxyType({})


class AsofDuckDBOfflineStoreConfig(FeastConfigBaseModel):
    type: StrictStr = "pipelines.platform.feast_offline.AsofDuckDBOfflineStore"
    staging_location: str | None = None
    staging_location_endpoint_override: str | None = None


class JoinSource(NamedTuple):
    """One feature table of a point-in-time join.

    Join keys are named as in the entity rows and features by their feature names; `columns` maps any of them to
    a differently named Parquet column, `output` a feature to its column in the answer (full feature names).
    """

    path: str  # a Parquet file, glob or folder
    keys: list[str]
    features: list[str]
    ttl: pd.Timedelta | None
    timestamp_field: str = "event_timestamp"  # Parquet columns
    created_field: str | None = None
    columns: Mapping[str, str] = NO_NAMES
    output: Mapping[str, str] = NO_NAMES


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _parquet_glob(path: str) -> str:
    return str(Path(path) / "*.parquet") if Path(path).is_dir() else str(path)


def _feature_rows_sql(source: JoinSource) -> str:
    """The source's rows with the columns the join needs, under the join's names; one row per key and timestamp."""
    picked = [f"{_quote(source.columns.get(n, n))} AS {_quote(n)}" for n in [*source.keys, *source.features]]
    event_time = _quote(source.timestamp_field)
    picked.append(f"CAST({event_time} AS TIMESTAMPTZ) AS __ts")
    sql = f"SELECT {', '.join(picked)} FROM read_parquet('{_parquet_glob(source.path)}')"
    if source.created_field:
        # Feast breaks a tie on the event timestamp with the newest created timestamp; an ASOF JOIN takes any row.
        partition = ", ".join([*(_quote(source.columns.get(k, k)) for k in source.keys), event_time])
        newest = f"{_quote(source.created_field)} DESC NULLS LAST"
        sql += f" QUALIFY row_number() OVER (PARTITION BY {partition} ORDER BY {newest}) = 1"
    return sql


def _asof_sql(source: JoinSource, timestamp_col: str) -> str:
    key_match = " AND ".join(f"e.{_quote(k)} = f.{_quote(k)}" for k in source.keys)
    cols = "".join(f"f.{_quote(c)} AS {_quote(source.output.get(c, c))}, " for c in source.features)
    return f"""
        WITH f AS ({_feature_rows_sql(source)})
        SELECT e.{ROW_ID}, {cols}f.__ts AS __ts, e.{_quote(timestamp_col)} AS __ets FROM entity e ASOF LEFT JOIN f
          ON {key_match} AND e.{_quote(timestamp_col)} >= f.__ts
    """


def point_in_time_join(
    entity_df: pd.DataFrame,
    sources: Iterable[JoinSource | tuple[Any, ...]],
    timestamp_col: str = "event_timestamp",
) -> pd.DataFrame:
    """Left-join each feature table onto the entity rows: newest row with timestamp <= the entity timestamp.

    A source is a `JoinSource` or a plain (parquet glob or folder, join keys, feature columns, ttl) tuple. Rows
    keep the entity order.
    """
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")  # a naive timestamp is UTC, as in Feast, whatever the machine's zone
    entity = entity_df.copy()
    entity[ROW_ID] = range(len(entity))
    entity[timestamp_col] = pd.to_datetime(entity[timestamp_col], utc=True)
    con.register("entity", entity)
    result = entity
    for position, given in enumerate(sources):
        source = JoinSource(*given)
        joined = con.execute(_asof_sql(source, timestamp_col)).df()
        if source.ttl is not None:  # a feature row older than the view's TTL counts as missing, as online
            stale = pd.to_datetime(joined["__ts"], utc=True) < pd.to_datetime(joined["__ets"], utc=True) - source.ttl
            joined.loc[stale.to_numpy(), [source.output.get(c, c) for c in source.features]] = None
        joined = joined.drop(columns=["__ts", "__ets"]).set_index(ROW_ID)
        result = result.join(joined, on=ROW_ID, rsuffix=f"_{position}")
    con.close()
    return result.sort_values(ROW_ID).drop(columns=ROW_ID).reset_index(drop=True)


class DataFrameRetrievalJob(RetrievalJob):
    """A retrieval whose answer is already computed."""

    def __init__(self, frame: pd.DataFrame, full_feature_names: bool, metadata: RetrievalMetadata) -> None:
        super().__init__()
        self._frame = frame
        self._full_feature_names = full_feature_names
        self._metadata = metadata

    def _to_df_internal(self, timeout: int | None = None) -> pd.DataFrame:
        return self._frame

    def _to_arrow_internal(self, timeout: int | None = None) -> pyarrow.Table:
        return pyarrow.Table.from_pandas(self._frame, preserve_index=False)

    @property
    def full_feature_names(self) -> bool:
        return self._full_feature_names

    @property
    def on_demand_feature_views(self) -> list[OnDemandFeatureView]:
        return []

    @property
    def metadata(self) -> RetrievalMetadata | None:
        return self._metadata

    def persist(self, storage: Any, allow_overwrite: bool = False, timeout: int | None = None) -> None:
        raise NotImplementedError("saving a retrieval as a Feast dataset is not used by mlsd")


def _source_path(view: FeatureView, repo_path: str) -> Path:
    path = Path(getattr(view.batch_source, "path", "") or "")
    if not path.is_absolute():
        path = Path(repo_path) / path
    if not path.exists() or (path.is_dir() and not any(path.glob("*.parquet"))):
        raise FileNotFoundError(
            f"The offline store has no rows for feature view '{view.name}' at {path}; "
            "run the feature backfill or the stream processor first."
        )
    return path


def _parquet_columns(path: Path) -> set[str]:
    with duckdb.connect() as con:
        described = con.execute(f"DESCRIBE SELECT * FROM read_parquet('{_parquet_glob(str(path))}')").fetchall()
    return {row[0] for row in described}


def _join_source(view: FeatureView, feature_refs: list[str], repo_path: str, full_feature_names: bool) -> JoinSource:
    """How to join one view: its Parquet columns by the names the entity rows and the feature refs use."""
    source = view.batch_source
    if source is None:
        raise InvalidInput(f"Feature view '{view.name}' has no batch source; give it a FileSource of Parquet files.")
    prefix = view.projection.name_to_use()
    wanted = [ref.split(":", 1)[1] for ref in feature_refs if ref.startswith(f"{prefix}:")]
    path = _source_path(view, repo_path)
    # field_mapping renames Parquet columns (Parquet name → view name); Feast skips a column the files lack.
    mapping = dict(source.field_mapping) if source.field_mapping else {}
    present = _parquet_columns(path) if mapping else set()
    in_file = {name: column for column, name in mapping.items() if column in present}
    # join_key_map matches a view's join key with a differently named entity column (view key → entity column).
    key_map = view.projection.join_key_map or {column.name: column.name for column in view.entity_columns}
    columns = {entity_col: in_file.get(key, key) for key, entity_col in key_map.items()}
    columns.update({name: in_file.get(name, name) for name in wanted})
    base = view.projection.name_alias or view.name  # Feast's full names leave out a version tag
    created = source.created_timestamp_column
    return JoinSource(
        path=str(path),
        keys=list(key_map.values()),
        features=wanted,
        ttl=pd.Timedelta(view.ttl) if view.ttl else None,
        timestamp_field=in_file.get(source.timestamp_field, source.timestamp_field),
        created_field=in_file.get(created, created) if created else None,
        columns=columns,
        output={name: f"{base}__{name}" for name in wanted} if full_feature_names else NO_NAMES,
    )


class AsofDuckDBOfflineStore(DuckDBOfflineStore):
    @staticmethod
    def get_historical_features(  # type: ignore[override]
        config: RepoConfig,
        feature_views: list[FeatureView],
        feature_refs: list[str],
        entity_df: pd.DataFrame | str,
        registry: BaseRegistry,
        project: str,
        full_feature_names: bool = False,
        filter_by_created_timestamp: bool = False,
    ) -> RetrievalJob:
        if not isinstance(entity_df, pd.DataFrame):
            raise InvalidInput(
                "mlsd's offline store takes the entity rows as a pandas DataFrame, not a SQL query; "
                "read the rows into a DataFrame first."
            )
        for view in feature_views:
            # Which rows were known at each entity time varies by row: not one ASOF JOIN (views without the
            # column ignore the filter, as in Feast).
            if filter_by_created_timestamp and getattr(view.batch_source, "created_timestamp_column", None):
                raise InvalidInput(
                    f"mlsd's offline store cannot filter feature view '{view.name}' by its created timestamp; "
                    "leave filter_by_created_timestamp off or use Feast's 'duckdb' offline store for this query."
                )
        timestamp_col = infer_event_timestamp_from_entity_df(
            dict(zip(entity_df.columns, entity_df.dtypes, strict=True))
        )
        repo_path = str(config.repo_path)
        sources = [_join_source(view, feature_refs, repo_path, full_feature_names) for view in feature_views]
        frame = point_in_time_join(entity_df, sources, timestamp_col)
        times = pd.to_datetime(entity_df[timestamp_col], utc=True)
        metadata = RetrievalMetadata(
            features=feature_refs,
            keys=[c for c in entity_df.columns if c != timestamp_col],
            min_event_timestamp=times.min().to_pydatetime(),
            max_event_timestamp=times.max().to_pydatetime(),
        )
        return DataFrameRetrievalJob(frame, full_feature_names, metadata)
