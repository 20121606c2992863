"""The transaction contract: what a user's file must hold, and how late labels are filled in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.fraud.data import TRANSACTION_OPTIONAL, TRANSACTION_REQUIRED, read_transactions
from pipelines.fraud.simulate import SimulationConfig, simulate_transactions
from pipelines.platform.dataio import DataFileError, write_table

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def simulated() -> pd.DataFrame:
    return simulate_transactions(SimulationConfig(n_customers=200, n_terminals=400, days=10, fraud_rate=0.02))


def small_file(tmp_path: Path, name: str = "tx.csv", **changes: list) -> Path:
    frame = pd.DataFrame(
        {
            "transaction_id": ["t1", "t2", "t3"],
            "timestamp": ["2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z", "2026-01-02T09:30:00Z"],
            "customer_id": ["c1", "c2", "c1"],
            "terminal_id": ["m1", "m1", "m2"],
            "amount": [12.5, 80.0, 7.25],
            "is_fraud": [0, 1, 0],
        }
    )
    for column, values in changes.items():
        frame[column] = values
    return write_table(frame, tmp_path / name)


def expect_error(path: Path, column: str, *words: str) -> DataFileError:
    with pytest.raises(DataFileError) as caught:
        read_transactions(path)
    message = str(caught.value)
    assert "\n" not in message
    for word in (str(path), f"'{column}'", *words):
        assert word in message, f"{word!r} missing from: {message}"
    return caught.value


def test_contract_columns() -> None:
    assert list(TRANSACTION_REQUIRED) == [
        "transaction_id",
        "timestamp",
        "customer_id",
        "terminal_id",
        "amount",
        "is_fraud",
    ]
    assert TRANSACTION_OPTIONAL == {"label_timestamp": "datetime"}


@pytest.mark.parametrize("name", ["tx.csv", "tx.csv.gz", "tx.parquet"])
def test_simulated_data_round_trips(tmp_path: Path, simulated: pd.DataFrame, name: str) -> None:
    path = write_table(simulated, tmp_path / name)
    loaded = read_transactions(path)
    pd.testing.assert_frame_equal(loaded, simulated)
    assert isinstance(loaded.index, pd.RangeIndex)


def test_missing_label_time_is_timestamp_plus_delay(tmp_path: Path) -> None:
    loaded = read_transactions(small_file(tmp_path), label_delay_days=3)
    delay = loaded["label_timestamp"] - loaded["timestamp"]
    assert (delay == pd.Timedelta(days=3)).all()
    assert str(loaded["label_timestamp"].dtype) == "datetime64[ns, UTC]"


def test_empty_label_times_are_filled_and_given_ones_kept(tmp_path: Path) -> None:
    path = small_file(tmp_path, label_timestamp=["2026-01-03T00:00:00Z", None, ""])
    loaded = read_transactions(path, label_delay_days=7)
    assert loaded["label_timestamp"].tolist() == [
        pd.Timestamp("2026-01-03", tz="UTC"),
        pd.Timestamp("2026-01-08 11:00", tz="UTC"),
        pd.Timestamp("2026-01-09 09:30", tz="UTC"),
    ]


def test_rows_are_sorted_by_time_then_id(tmp_path: Path) -> None:
    path = small_file(
        tmp_path,
        transaction_id=["b", "a", "c"],
        timestamp=["2026-01-02T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-01T00:00:00Z"],
    )
    loaded = read_transactions(path)
    assert loaded["transaction_id"].tolist() == ["c", "a", "b"]
    assert loaded.index.tolist() == [0, 1, 2]


def test_extra_columns_are_kept(tmp_path: Path) -> None:
    loaded = read_transactions(small_file(tmp_path, channel=["web", "pos", "pos"]))
    assert loaded["channel"].tolist() == ["web", "pos", "pos"]


def test_negative_amount(tmp_path: Path) -> None:
    error = expect_error(small_file(tmp_path, amount=[1.0, -5.0, 2.0]), "amount", "row 2", "-5.0")
    assert error.row == 2


@pytest.mark.parametrize("name", ["tx.csv", "tx.parquet"])
def test_infinite_amount(tmp_path: Path, name: str) -> None:
    expect_error(small_file(tmp_path, name, amount=[1.0, 2.0, np.inf]), "amount", "row 3", "finite")


def test_duplicate_transaction_id(tmp_path: Path) -> None:
    path = small_file(tmp_path, transaction_id=["t1", "t2", "t1"])
    expect_error(path, "transaction_id", "unique", "row 3", "row 1")


def test_label_time_before_transaction(tmp_path: Path) -> None:
    path = small_file(tmp_path, label_timestamp=[None, "2026-01-01T10:59:00Z", None])
    expect_error(path, "label_timestamp", "row 2", "earlier")


def test_missing_column(tmp_path: Path) -> None:
    frame = pd.read_csv(small_file(tmp_path)).drop(columns=["is_fraud"])
    path = write_table(frame, tmp_path / "no_label.parquet")
    expect_error(path, "is_fraud", "missing")


def test_bad_type(tmp_path: Path) -> None:
    expect_error(small_file(tmp_path, is_fraud=["0", "yes please", "1"]), "is_fraud", "row 2")
    expect_error(small_file(tmp_path, timestamp=["2026-01-01", "yesterday", "2026-01-02"]), "timestamp", "row 2")


def test_null_in_required_column(tmp_path: Path) -> None:
    expect_error(small_file(tmp_path, customer_id=["c1", "c2", None]), "customer_id", "row 3", "empty")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="transactions file .*nowhere.csv does not exist"):
        read_transactions(tmp_path / "nowhere.csv")


def test_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "tx.xlsx"
    path.write_bytes(b"not a spreadsheet")
    with pytest.raises(DataFileError, match="tx.xlsx: unsupported file type"):
        read_transactions(path)
