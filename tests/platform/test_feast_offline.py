"""mlsd's ASOF offline store answers every point-in-time query exactly as Feast's own DuckDB offline store.

A differential test: one Feast repo of real Parquet files, two FeatureStores on the same registry (one per offline
store), random cases from fixed seeds, frames compared value by value. The definitions cover what differed before:
string and int join keys, a created-timestamp tie-break, a source timestamp column not called `event_timestamp`, a
`field_mapping`, naive Parquet timestamps (read on machines in other time zones), a projection with an alias and a
`join_key_map`, and one feature name in two views under full feature names.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines.platform.errors import InvalidInput
from pipelines.platform.feast_offline import point_in_time_join

T0 = pd.Timestamp("2024-03-10 00:00", tz="UTC")  # a US daylight-saving day, for the entity rows' time zones
CUSTOMER_TTL = pd.Timedelta(hours=2)
TERMINAL_TTL = pd.Timedelta(minutes=90)
US = pd.Timedelta(microseconds=1)
CUSTOMERS = ["c0", "c1", "c10", "alice", "ß"]
TERMINALS = [0, 1, 7, -3, 2**40]
ENTITY_ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", None]  # None: naive
MACHINE_ZONES = ["UTC", "America/New_York", "Asia/Kolkata"]
REFS = {
    "customer_stats": ["spend", "visits", "tier", "score"],
    "terminal_stats": ["risk", "score", "txns"],
    "customer_profile": ["age", "segment"],
}
ASOF_STORE = "pipelines.platform.feast_offline.AsofDuckDBOfflineStore"


@dataclass
class FeastRepo:
    root: Path
    feast: Any  # Feast's DuckDB offline store
    asof: Any  # mlsd's
    everything: Any  # a feature service with all views and the aliased, key-mapped terminal view

    def write(self, view: str, rows: pd.DataFrame) -> None:
        folder = self.root / view
        for old in folder.glob("*.parquet"):
            old.unlink()
        rows.to_parquet(folder / "part-0.parquet", index=False)


def _definitions(root: Path) -> list[Any]:
    from feast import Entity, FeatureService, FeatureView, Field, FileSource
    from feast.data_format import ParquetFormat
    from feast.types import Float64, Int64, String
    from feast.value_type import ValueType

    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
    terminal = Entity(name="terminal", join_keys=["terminal_id"], value_type=ValueType.INT64)
    customer_source = FileSource(
        name="customer_stats_source",
        path=str(root / "customer_stats"),
        timestamp_field="event_timestamp",
        created_timestamp_column="created",  # several rows per key and timestamp: the newest created one wins
        file_format=ParquetFormat(),
    )
    terminal_source = FileSource(
        name="terminal_stats_source",
        path=str(root / "terminal_stats"),
        timestamp_field="observed_at",
        field_mapping={"risk_raw": "risk"},
        file_format=ParquetFormat(),
    )
    profile_source = FileSource(
        name="customer_profile_source",
        path=str(root / "customer_profile"),  # naive timestamps
        timestamp_field="event_timestamp",
        file_format=ParquetFormat(),
    )
    customer_stats = FeatureView(
        name="customer_stats",
        entities=[customer],
        ttl=CUSTOMER_TTL.to_pytimedelta(),
        schema=[
            Field(name="spend", dtype=Float64),
            Field(name="visits", dtype=Int64),
            Field(name="tier", dtype=String),
            Field(name="score", dtype=Float64),
        ],
        source=customer_source,
    )
    terminal_stats = FeatureView(
        name="terminal_stats",
        entities=[terminal],
        ttl=TERMINAL_TTL.to_pytimedelta(),
        schema=[Field(name="risk", dtype=Float64), Field(name="score", dtype=Float64), Field(name="txns", dtype=Int64)],
        source=terminal_source,
    )
    customer_profile = FeatureView(
        name="customer_profile",
        entities=[customer],
        ttl=timedelta(0),  # no TTL
        schema=[Field(name="age", dtype=Int64), Field(name="segment", dtype=String)],
        source=profile_source,
    )
    destination = terminal_stats.with_name("dest_terminal").with_join_key_map({"terminal_id": "dest_terminal_id"})
    # Feast sorts a service's projections to compare them, and fails on a None alias next to a set one (0.67).
    same_terminal = terminal_stats.with_name("terminal_stats")
    everything = FeatureService(
        name="everything", features=[customer_stats, same_terminal, customer_profile, destination]
    )
    sources = [customer_source, terminal_source, profile_source]
    return [customer, terminal, *sources, customer_stats, terminal_stats, customer_profile, everything]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> FeastRepo:
    from feast import FeatureStore, RepoConfig

    root = tmp_path_factory.mktemp("feast_repo")

    def store(offline_store: str) -> Any:
        config = RepoConfig(
            project="pit",
            provider="local",
            registry=str(root / "registry.db"),
            online_store={"type": "sqlite", "path": str(root / "online.db")},
            offline_store={"type": offline_store},
            entity_key_serialization_version=3,
            repo_path=str(root),
        )
        return FeatureStore(config=config)

    for view in REFS:
        (root / view).mkdir()
    feast = store("duckdb")
    objects = _definitions(root)
    feast.apply(objects)
    asof = store(ASOF_STORE)
    return FeastRepo(root, feast, asof, asof.get_feature_service("everything"))


@contextmanager
def machine_time_zone(zone: str) -> Iterator[None]:
    """Run as on a machine whose local time zone is `zone` (DuckDB reads TZ for each new connection)."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


# ----------------------------------------------------------------------------------------------------------
# Random cases


def _minutes(values: Any) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(T0 + pd.to_timedelta(np.asarray(values), unit="min"), dtype="datetime64[us, UTC]")


def _maybe_missing(rng: np.random.Generator, values: list[Any], share: float = 0.15) -> list[Any]:
    return [None if rng.random() < share else value for value in values]


def customer_stats_rows(rng: np.random.Generator) -> pd.DataFrame:
    """0–6 rows per customer on a coarse grid, so rows often share a timestamp; created timestamps all differ."""
    keys = [key for key in CUSTOMERS[:-1] for _ in range(rng.integers(0, 7))]
    times = _minutes(rng.integers(0, 16, len(keys)) * 15)
    created = times + pd.to_timedelta(rng.permutation(len(keys)) + 1, unit="s")
    return pd.DataFrame(
        {
            "customer_id": keys,
            "event_timestamp": times,
            "created": created,
            "spend": _maybe_missing(rng, list(np.round(rng.gamma(2.0, 30.0, len(keys)), 2))),
            "visits": pd.array(_maybe_missing(rng, [int(v) for v in rng.integers(0, 50, len(keys))]), dtype="Int64"),
            "tier": _maybe_missing(rng, list(rng.choice(["gold", "silver", ""], len(keys)))),
            "score": rng.random(len(keys)),
        }
    )


def _unique_times_per_key(rng: np.random.Generator, keys: list[Any], most: int) -> tuple[list[Any], list[int]]:
    """Keys and minutes with no two rows of one key at one timestamp (without a created column, a tie is arbitrary)."""
    out_keys: list[Any] = []
    minutes: list[int] = []
    for key in keys:
        count = int(rng.integers(0, most + 1))
        out_keys += [key] * count
        minutes += [int(m) * 5 for m in rng.choice(60, count, replace=False)]
    return out_keys, minutes


def terminal_stats_rows(rng: np.random.Generator) -> pd.DataFrame:
    keys, minutes = _unique_times_per_key(rng, TERMINALS[:-1], 6)
    return pd.DataFrame(
        {
            "terminal_id": np.asarray(keys, dtype="int64"),
            "observed_at": _minutes(minutes),
            "risk_raw": _maybe_missing(rng, list(np.round(rng.random(len(keys)), 3))),
            "score": rng.random(len(keys)),
            "txns": rng.integers(0, 1000, len(keys)),
        }
    )


def customer_profile_rows(rng: np.random.Generator) -> pd.DataFrame:
    """Naive timestamps: Feast reads them as UTC, whatever the machine's time zone."""
    keys, minutes = _unique_times_per_key(rng, CUSTOMERS, 3)
    return pd.DataFrame(
        {
            "customer_id": keys,
            "event_timestamp": _minutes(minutes).tz_localize(None),
            "age": rng.integers(18, 90, len(keys)),
            "segment": _maybe_missing(rng, list(rng.choice(["new", "regular", "vip"], len(keys)))),
        }
    )


def entity_time(rng: np.random.Generator, anchors: pd.DataFrame, time_col: str, ttl: pd.Timedelta) -> pd.Timestamp:
    """A request time that probes an edge: at a feature row, at its TTL (exactly, 1 µs inside or outside)."""
    kind = rng.choice(["random", "before_any", "at_row", "at_ttl", "inside_ttl", "outside_ttl"])
    if kind == "random" or anchors.empty:
        return T0 + pd.Timedelta(minutes=int(rng.integers(-60, 420)))
    if kind == "before_any":
        return anchors[time_col].min() - pd.Timedelta(minutes=int(rng.integers(0, 30))) - US
    at = pd.Timestamp(anchors[time_col].iloc[int(rng.integers(len(anchors)))]).tz_convert("UTC")
    shift = {"at_row": pd.Timedelta(0), "at_ttl": ttl, "inside_ttl": ttl - US, "outside_ttl": ttl + US}[str(kind)]
    return at + shift


def entity_rows(
    rng: np.random.Generator, customers: pd.DataFrame, terminals: pd.DataFrame, time_col: str, zone: str | None
) -> pd.DataFrame:
    rows = []
    for position in range(int(rng.integers(8, 26))):
        customer = rng.choice([*CUSTOMERS, "nobody"])
        terminal = int(rng.choice([*TERMINALS, 99]))
        destination = int(rng.choice([*TERMINALS, 99]))
        probe = rng.choice(["customer", "terminal", "destination"])
        if probe == "customer":
            at = entity_time(rng, customers[customers.customer_id == customer], "event_timestamp", CUSTOMER_TTL)
        else:
            key = terminal if probe == "terminal" else destination
            at = entity_time(rng, terminals[terminals.terminal_id == key], "observed_at", TERMINAL_TTL)
        rows.append({"customer_id": customer, "terminal_id": terminal, "dest_terminal_id": destination, time_col: at})
        rows[-1]["row"] = position
    frame = pd.DataFrame(rows)
    if rng.random() < 0.3:  # an entity row twice
        frame = pd.concat([frame, frame.iloc[[0]]], ignore_index=True)
    times = pd.to_datetime(frame[time_col], utc=True)
    frame[time_col] = times.dt.tz_localize(None) if zone is None else times.dt.tz_convert(zone)
    return frame


@dataclass
class Case:
    seed: int
    entity_df: pd.DataFrame
    features: Any  # a list of feature references or the feature service
    full_feature_names: bool
    filter_by_created_timestamp: bool
    machine_zone: str

    def __str__(self) -> str:
        features = self.features if isinstance(self.features, list) else f"service {self.features.name}"
        return (
            f"seed {self.seed}: {features}, full_feature_names={self.full_feature_names}, "
            f"filter_by_created_timestamp={self.filter_by_created_timestamp}, machine TZ {self.machine_zone}, "
            f"entity time zone {self.entity_df[self.time_col].dt.tz}, entity timestamp column {self.time_col!r}"
        )

    @property
    def time_col(self) -> str:
        return next(c for c in self.entity_df.columns if pd.api.types.is_datetime64_any_dtype(self.entity_df[c]))


def make_case(seed: int, repo: FeastRepo) -> Case:
    """Writes the case's feature rows to the repo's Parquet folders and returns its request."""
    rng = np.random.default_rng(seed)
    customers, terminals = customer_stats_rows(rng), terminal_stats_rows(rng)
    repo.write("customer_stats", customers)
    repo.write("terminal_stats", terminals)
    repo.write("customer_profile", customer_profile_rows(rng))
    time_col = str(rng.choice(["event_timestamp", "requested_at"]))
    zone = ENTITY_ZONES[int(rng.integers(len(ENTITY_ZONES)))]
    entity_df = entity_rows(rng, customers, terminals, time_col, zone)
    machine_zone = str(rng.choice(MACHINE_ZONES))
    if rng.random() < 0.25:
        return Case(seed, entity_df, repo.everything, True, False, machine_zone)
    full = bool(rng.random() < 0.5)
    refs: list[str] = []
    taken: set[str] = set()
    for view, names in REFS.items():
        if rng.random() < 0.3:
            continue
        for name in names:
            if rng.random() < 0.7 and (full or name not in taken):  # one name twice needs full feature names
                refs.append(f"{view}:{name}")
                taken.add(name)
    if not refs:
        refs = ["customer_profile:age"]
    # Views without a created-timestamp column ignore the filter, in Feast as here.
    filter_created = not any(ref.startswith("customer_stats:") for ref in refs) and bool(rng.random() < 0.5)
    return Case(seed, entity_df, refs, full, filter_created, machine_zone)


def comparable(frame: pd.DataFrame, time_col: str) -> pd.DataFrame:
    """Values as plain float / UTC nanosecond / object columns (NaN and None alike), rows in one order."""
    out: dict[Any, pd.Series] = {}
    for name, column in frame.items():
        if pd.api.types.is_datetime64_any_dtype(column):
            out[name] = pd.to_datetime(column, utc=True).astype("datetime64[ns, UTC]")
        elif pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column):
            out[name] = pd.to_numeric(column).astype("float64")
        else:
            out[name] = column.astype(object).where(column.notna(), None)
    order = [time_col, "customer_id", "terminal_id", "dest_terminal_id", "row"]
    return pd.DataFrame(out).sort_values(order, kind="stable").reset_index(drop=True)


def retrieve(store: Any, case: Case) -> pd.DataFrame:
    job = store.get_historical_features(
        entity_df=case.entity_df.copy(),
        features=case.features,
        full_feature_names=case.full_feature_names,
        filter_by_created_timestamp=case.filter_by_created_timestamp,
    )
    return job.to_df()


# ----------------------------------------------------------------------------------------------------------
# The differential test


@pytest.mark.integration
@pytest.mark.parametrize("seed", range(16))
def test_asof_store_answers_as_feasts_duckdb_store(repo: FeastRepo, seed: int) -> None:
    case = make_case(1000 + seed, repo)
    with machine_time_zone(case.machine_zone):
        expected = retrieve(repo.feast, case)
        got = retrieve(repo.asof, case)
    assert list(got.columns) == list(expected.columns), str(case)
    assert len(got) == len(case.entity_df), str(case)
    pd.testing.assert_frame_equal(
        comparable(got, case.time_col), comparable(expected, case.time_col), obj=f"features ({case})"
    )


@pytest.mark.integration
def test_cases_probe_every_edge(repo: FeastRepo) -> None:
    """The random cases reach what they are meant to: a test that never meets an edge cannot fail on it."""
    seen: set[str] = set()
    for seed in range(16):
        case = make_case(1000 + seed, repo)
        frame = case.entity_df
        seen.add(case.time_col)
        seen.add(str(frame[case.time_col].dt.tz))
        seen.add(case.machine_zone)
        seen.add("service" if not isinstance(case.features, list) else f"full={case.full_feature_names}")
        if isinstance(case.features, list) and {"customer_stats:score", "terminal_stats:score"} <= set(case.features):
            seen.add("one name in two views")
        customers = pd.read_parquet(repo.root / "customer_stats")
        if customers.duplicated(["customer_id", "event_timestamp"]).any():
            seen.add("timestamp tie")
        terminals = pd.read_parquet(repo.root / "terminal_stats")
        at = pd.to_datetime(frame[case.time_col], utc=True)
        for _, row in terminals.iterrows():
            gap = at[frame.terminal_id == row.terminal_id] - row.observed_at
            seen.update({"at row" for g in gap if g == pd.Timedelta(0)})
            seen.update({"at ttl" for g in gap if g == TERMINAL_TTL})
            seen.update({"inside ttl" for g in gap if g == TERMINAL_TTL - US})
            seen.update({"outside ttl" for g in gap if g == TERMINAL_TTL + US})
    wanted = {
        "event_timestamp",
        "requested_at",
        "UTC",
        "Europe/Berlin",
        "America/New_York",
        "Asia/Kolkata",
        "None",
        "service",
        "full=True",
        "full=False",
        "one name in two views",
        "timestamp tie",
        "at row",
        "at ttl",
        "inside ttl",
        "outside ttl",
    }
    assert wanted <= seen, f"no random case reaches {sorted(wanted - seen)}"


# ----------------------------------------------------------------------------------------------------------
# What the store refuses, in one sentence


@pytest.mark.integration
def test_filter_by_created_timestamp_is_refused(repo: FeastRepo) -> None:
    make_case(1, repo)
    entity_df = pd.DataFrame({"customer_id": ["c0"], "event_timestamp": [T0 + pd.Timedelta(hours=1)]})
    with pytest.raises(InvalidInput) as refused:
        repo.asof.get_historical_features(
            entity_df=entity_df, features=["customer_stats:spend"], filter_by_created_timestamp=True
        )
    assert str(refused.value) == (
        "mlsd's offline store cannot filter feature view 'customer_stats' by its created timestamp; "
        "leave filter_by_created_timestamp off or use Feast's 'duckdb' offline store for this query."
    )


@pytest.mark.integration
def test_a_sql_entity_query_is_refused(repo: FeastRepo) -> None:
    with pytest.raises(InvalidInput) as refused:
        repo.asof.get_historical_features(entity_df="SELECT 1", features=["customer_stats:spend"])
    assert str(refused.value) == (
        "mlsd's offline store takes the entity rows as a pandas DataFrame, not a SQL query; "
        "read the rows into a DataFrame first."
    )


# ----------------------------------------------------------------------------------------------------------
# The pure join, as the backtest calls it


@pytest.mark.unit
def test_point_in_time_join_keeps_entity_order_and_takes_plain_tuples(tmp_path: Path) -> None:
    pd.DataFrame(
        {
            "customer_id": ["a", "a", "b"],
            "event_timestamp": _minutes([0, 60, 0]),
            "amount": [1.0, 2.0, 3.0],
        }
    ).to_parquet(tmp_path / "part-0.parquet")
    entity = pd.DataFrame(
        {"customer_id": ["b", "a", "a", "a"], "event_timestamp": _minutes([30, 59, 60, 200]), "label": [0, 1, 2, 3]}
    )
    joined = point_in_time_join(entity, [(str(tmp_path), ["customer_id"], ["amount"], pd.Timedelta(minutes=120))])
    assert joined["label"].tolist() == [0, 1, 2, 3]
    assert joined["amount"].tolist()[:3] == [3.0, 1.0, 2.0]
    assert pd.isna(joined["amount"].iloc[3])  # 140 minutes after its newest row: older than the TTL
