"""The interaction and item contracts: what users' files must hold, and how weights and categories are filled."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.platform.dataio import DataFileError, write_table
from pipelines.recsys.data import (
    INTERACTION_REQUIRED,
    ITEM_REQUIRED,
    read_interactions,
    read_items,
    unknown_items,
)
from pipelines.recsys.simulate import InteractionConfig, simulate_interactions

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def simulated() -> tuple[pd.DataFrame, pd.DataFrame]:
    return simulate_interactions(InteractionConfig(n_users=300, n_items=200, n_categories=8, days=7, seed=2))


def interactions_file(tmp_path: Path, name: str = "interactions.csv", **changes: list) -> Path:
    frame = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u1"],
            "item_id": ["i1", "i1", "i2"],
            "timestamp": ["2026-01-01T10:00:00Z", "2026-01-01T09:00:00Z", "2026-01-02T09:30:00Z"],
        }
    )
    for column, values in changes.items():
        frame[column] = values
    return write_table(frame, tmp_path / name)


def items_file(tmp_path: Path, name: str = "items.csv", **changes: list) -> Path:
    frame = pd.DataFrame({"item_id": ["i1", "i2", "i3"], "category": ["shoes", "books", "shoes"]})
    for column, values in changes.items():
        frame[column] = values
    return write_table(frame, tmp_path / name)


def expect_error(read: Callable[[Path], pd.DataFrame], path: Path, column: str, *words: str) -> DataFileError:
    with pytest.raises(DataFileError) as caught:
        read(path)
    message = str(caught.value)
    assert "\n" not in message
    for word in (str(path), f"'{column}'", *words):
        assert word in message, f"{word!r} missing from: {message}"
    assert caught.value.column == column
    return caught.value


def test_contract_columns() -> None:
    assert INTERACTION_REQUIRED == {"user_id": "string", "item_id": "string", "timestamp": "datetime"}
    assert ITEM_REQUIRED == {"item_id": "string"}


@pytest.mark.parametrize("suffix", ["csv", "csv.gz", "parquet"])
def test_simulated_data_round_trips(tmp_path: Path, simulated: tuple[pd.DataFrame, pd.DataFrame], suffix: str) -> None:
    interactions, items = simulated
    loaded = read_interactions(write_table(interactions, tmp_path / f"interactions.{suffix}"))
    pd.testing.assert_frame_equal(loaded, interactions)
    assert isinstance(loaded.index, pd.RangeIndex)
    loaded_items = read_items(write_table(items, tmp_path / f"items.{suffix}"))
    pd.testing.assert_frame_equal(loaded_items, items)
    assert len(unknown_items(loaded, loaded_items)) == 0


def test_rows_are_sorted_by_time_and_weight_defaults_to_one(tmp_path: Path) -> None:
    loaded = read_interactions(interactions_file(tmp_path))
    assert loaded["user_id"].tolist() == ["u2", "u1", "u1"]
    assert loaded.index.tolist() == [0, 1, 2]
    assert loaded["weight"].tolist() == [1.0, 1.0, 1.0]
    assert loaded["weight"].dtype == np.float64


def test_weight_comes_from_weight_then_rating(tmp_path: Path) -> None:
    from_rating = read_interactions(interactions_file(tmp_path, rating=[4, 5, 1]))
    assert from_rating["weight"].tolist() == [5.0, 4.0, 1.0]
    both = read_interactions(interactions_file(tmp_path, "both.parquet", rating=[4, 5, 1], weight=[0.5, 2.0, 0.0]))
    assert both["weight"].tolist() == [2.0, 0.5, 0.0]
    assert both["rating"].tolist() == [5.0, 4.0, 1.0]


def test_extra_columns_and_event_type_are_kept(tmp_path: Path) -> None:
    loaded = read_interactions(interactions_file(tmp_path, event_type=["view", "click", None], device=["a", "b", "c"]))
    assert loaded["event_type"].tolist() == ["click", "view", None]
    assert loaded["device"].tolist() == ["b", "a", "c"]


@pytest.mark.parametrize("name", ["interactions.csv", "interactions.parquet"])
def test_negative_weight(tmp_path: Path, name: str) -> None:
    path = interactions_file(tmp_path, name, weight=[1.0, -2.0, 1.0])
    error = expect_error(read_interactions, path, "weight", "row 2", "-2.0")
    assert error.row == 2


@pytest.mark.parametrize("name", ["interactions.csv", "interactions.parquet"])
def test_infinite_or_empty_rating(tmp_path: Path, name: str) -> None:
    expect_error(read_interactions, interactions_file(tmp_path, name, rating=[1.0, 2.0, np.inf]), "rating", "row 3")
    expect_error(read_interactions, interactions_file(tmp_path, name, rating=[1.0, None, 3.0]), "rating", "empty")


def test_bad_weight_type(tmp_path: Path) -> None:
    expect_error(read_interactions, interactions_file(tmp_path, weight=["1", "lots", "2"]), "weight", "row 2")


def test_missing_interaction_column(tmp_path: Path) -> None:
    frame = pd.read_csv(interactions_file(tmp_path)).drop(columns=["item_id"])
    path = write_table(frame, tmp_path / "no_item.parquet")
    expect_error(read_interactions, path, "item_id", "missing")


def test_bad_timestamp_and_empty_user(tmp_path: Path) -> None:
    path = interactions_file(tmp_path, timestamp=["2026-01-01", "soon", "2026-01-02"])
    expect_error(read_interactions, path, "timestamp", "row 2")
    expect_error(read_interactions, interactions_file(tmp_path, user_id=["u1", None, "u3"]), "user_id", "empty")


def test_items_fill_missing_categories(tmp_path: Path) -> None:
    loaded = read_items(items_file(tmp_path, category=["shoes", None, ""], price=[10.0, 5.5, 3.0]))
    assert loaded["category"].tolist() == ["shoes", "unknown", "unknown"]
    assert loaded["price"].tolist() == [10.0, 5.5, 3.0]
    no_category = pd.DataFrame({"item_id": ["a", "b"], "brand": ["x", "y"]})
    loaded = read_items(write_table(no_category, tmp_path / "bare.parquet"))
    assert loaded["category"].tolist() == ["unknown", "unknown"]


def test_duplicate_item_id(tmp_path: Path) -> None:
    path = items_file(tmp_path, item_id=["i1", "i2", "i1"])
    expect_error(read_items, path, "item_id", "unique", "row 3", "row 1")


def test_missing_item_column(tmp_path: Path) -> None:
    path = write_table(pd.DataFrame({"sku": ["a"], "category": ["c"]}), tmp_path / "items.csv")
    expect_error(read_items, path, "item_id", "missing")


def test_unknown_items_are_counted_not_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    interactions = read_interactions(interactions_file(tmp_path, item_id=["i1", "i9", "i8"]))
    items = read_items(items_file(tmp_path))
    with caplog.at_level(logging.WARNING, logger="pipelines.recsys.data"):
        missing = unknown_items(interactions, items)
    assert missing.tolist() == ["i8", "i9"]
    assert "2 of 3 item ids" in caplog.text


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="interactions file .*nowhere.csv does not exist"):
        read_interactions(tmp_path / "nowhere.csv")
    with pytest.raises(DataFileError, match="items file .*nowhere.parquet does not exist"):
        read_items(tmp_path / "nowhere.parquet")
