"""The file contract every design reads through: types on the way in, one clear sentence for a bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.platform.dataio import DataFileError, read_table, write_table

pytestmark = pytest.mark.unit

REQUIRED = {"id": "string", "when": "datetime", "price": "float", "qty": "int", "flag": "label"}
OPTIONAL = {"seen": "datetime", "bonus": "label"}


def sample_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": ["007", "a-1", "1234"],
            "when": pd.to_datetime(["2026-01-01 00:00:00", "2026-01-02 12:30:05", "2026-02-28 23:59:59"], utc=True),
            "price": [1.5, 0.0, 1234.56],
            "qty": [1, 0, -3],
            "flag": [0, 1, 1],
            "note": ["x", "y", "z"],
        }
    )


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def assert_one_sentence(error: DataFileError, *names: str) -> None:
    message = str(error)
    assert "\n" not in message
    assert message.endswith(".")
    for name in names:
        assert name in message, f"{name!r} missing from: {message}"


@pytest.mark.parametrize("name", ["table.csv", "table.csv.gz", "table.parquet", "table.pq"])
def test_round_trip_keeps_types_and_values(tmp_path: Path, name: str) -> None:
    original = sample_frame()
    path = write_table(original, tmp_path / "nested" / "folder" / name)

    loaded = read_table(path, REQUIRED, OPTIONAL)

    pd.testing.assert_frame_equal(loaded, original, check_dtype=False)
    assert loaded["id"].dtype == object and loaded["id"].tolist() == ["007", "a-1", "1234"]
    assert str(loaded["when"].dtype) == "datetime64[ns, UTC]"
    assert loaded["price"].dtype == np.float64
    assert loaded["qty"].dtype == np.int64
    assert loaded["flag"].dtype == np.int64
    assert "seen" not in loaded.columns


def test_extra_columns_are_kept_untouched(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "id,when,price,qty,flag,zip,comment\n1,2026-01-01,2,3,1,00501,hello\n")
    loaded = read_table(path, {**REQUIRED, "zip": "string"})
    assert loaded["zip"].tolist() == ["00501"]  # declared text keeps its leading zeros
    assert loaded["comment"].tolist() == ["hello"]
    assert list(loaded.columns) == ["id", "when", "price", "qty", "flag", "zip", "comment"]


def test_numbers_become_strings_for_text_columns(tmp_path: Path) -> None:
    frame = sample_frame().assign(id=[7, 8, 123])
    path = write_table(frame, tmp_path / "t.parquet")
    assert read_table(path, REQUIRED)["id"].tolist() == ["7", "8", "123"]


def test_datetimes_are_utc_and_naive_values_are_taken_as_utc(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "t.csv",
        "id,when,price,qty,flag\n"
        "a,2026-01-01 10:00:00,1,1,0\n"
        "b,2026-01-01T10:00:00+02:00,1,1,0\n"
        "c,2026-01-01T10:00:00Z,1,1,0\n",
    )
    when = read_table(path, REQUIRED)["when"]
    assert when.tolist() == [
        pd.Timestamp("2026-01-01 10:00", tz="UTC"),
        pd.Timestamp("2026-01-01 08:00", tz="UTC"),
        pd.Timestamp("2026-01-01 10:00", tz="UTC"),
    ]


def test_naive_parquet_datetimes_are_taken_as_utc(tmp_path: Path) -> None:
    frame = sample_frame()
    frame["when"] = frame["when"].dt.tz_localize(None)
    loaded = read_table(write_table(frame, tmp_path / "t.parquet"), REQUIRED)
    assert loaded["when"].tolist() == sample_frame()["when"].tolist()


def test_label_spellings(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "t.csv",
        "id,when,price,qty,flag\n"
        + "".join(f"r{i},2026-01-01,1,1,{v}\n" for i, v in enumerate(["0", "1", "true", "FALSE", "True"])),
    )
    assert read_table(path, REQUIRED)["flag"].tolist() == [0, 1, 1, 0, 1]

    frame = sample_frame().assign(flag=[True, False, True])
    assert read_table(write_table(frame, tmp_path / "t.parquet"), REQUIRED)["flag"].tolist() == [1, 0, 1]


def test_optional_columns_are_converted_when_present_and_may_be_empty(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "t.csv",
        "id,when,price,qty,flag,seen,bonus\na,2026-01-01,1,1,0,2026-01-03,true\nb,2026-01-01,1,1,0,,\n",
    )
    loaded = read_table(path, REQUIRED, OPTIONAL)
    assert loaded["seen"].iloc[0] == pd.Timestamp("2026-01-03", tz="UTC")
    assert pd.isna(loaded["seen"].iloc[1])
    assert loaded["bonus"].iloc[0] == 1 and pd.isna(loaded["bonus"].iloc[1])


def test_header_names_match_despite_case_and_spaces(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "ID, When ,Price,qty,flag\na,2026-01-01,1,1,0\n")
    assert list(read_table(path, REQUIRED).columns) == list(REQUIRED)


# --- errors: one sentence naming the file, the column and the fix ------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.csv"
    with pytest.raises(DataFileError) as caught:
        read_table(path, REQUIRED, what="transactions file")
    assert_one_sentence(caught.value, str(path), "transactions file", "check the path")


@pytest.mark.parametrize("name", ["data.txt", "data.json", "data"])
def test_unknown_suffix(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("id\n1\n")
    with pytest.raises(DataFileError) as caught:
        read_table(path, REQUIRED)
    assert_one_sentence(caught.value, str(path), ".csv", ".parquet")
    with pytest.raises(DataFileError):
        write_table(sample_frame(), path)


def test_missing_required_column(tmp_path: Path) -> None:
    path = write_table(sample_frame().drop(columns=["price"]), tmp_path / "t.csv")
    with pytest.raises(DataFileError) as caught:
        read_table(path, REQUIRED)
    assert_one_sentence(caught.value, str(path), "'price'", "missing")
    assert caught.value.column == "price"


@pytest.mark.parametrize(
    ("column", "bad", "expected"),
    [
        ("price", "abc", "numeric"),
        ("qty", "2.5", "whole number"),
        ("when", "not a date", "date-time"),
        ("flag", "maybe", "0/1 label"),
        ("flag", "2", "0/1 label"),
    ],
)
def test_value_that_cannot_be_converted(tmp_path: Path, column: str, bad: str, expected: str) -> None:
    rows = {"id": "a", "when": "2026-01-01", "price": "1", "qty": "1", "flag": "0"}
    lines = [",".join(rows.values())] * 3 + [",".join({**rows, column: bad}.values())]
    path = write_csv(tmp_path / "t.csv", ",".join(rows) + "\n" + "\n".join(lines) + "\n")
    with pytest.raises(DataFileError) as caught:
        read_table(path, REQUIRED)
    assert_one_sentence(caught.value, str(path), f"'{column}'", expected, "row 4", bad)
    assert caught.value.row == 4


def test_bad_value_far_down_a_large_csv_is_located(tmp_path: Path) -> None:
    # Far past the first block, where the fast reader has already settled on a numeric type.
    n = 300_000
    lines = ["id,when,price,qty,flag"] + [f"r{i},2026-01-01,1.25,1,0" for i in range(n)]
    lines[n - 5] = f"r{n - 6},2026-01-01,oops,1,0"
    path = write_csv(tmp_path / "big.csv", "\n".join(lines) + "\n")
    with pytest.raises(DataFileError) as caught:
        read_table(path, REQUIRED)
    assert_one_sentence(caught.value, str(path), "'price'", "'oops'", f"row {n - 5}")


@pytest.mark.parametrize("column", ["id", "when", "price", "qty", "flag"])
def test_empty_value_in_required_column(tmp_path: Path, column: str) -> None:
    frame = sample_frame().astype({column: object})
    frame.loc[1, column] = None
    for name in ("t.csv", "t.parquet"):
        path = write_table(frame, tmp_path / name)
        with pytest.raises(DataFileError) as caught:
            read_table(path, REQUIRED)
        assert_one_sentence(caught.value, str(path), f"'{column}'", "row 2", "empty")


def test_corrupt_parquet(tmp_path: Path) -> None:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    with pytest.raises(DataFileError) as caught:
        read_table(path, REQUIRED)
    assert_one_sentence(caught.value, str(path), "Parquet")


def test_ragged_csv(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "t.csv", "id,when,price,qty,flag\na,2026-01-01,1,1,0,extra,fields\n")
    with pytest.raises(DataFileError) as caught:
        read_table(path, REQUIRED)
    assert_one_sentence(caught.value, str(path), "CSV")


def test_unknown_kind_is_a_programming_error(tmp_path: Path) -> None:
    path = write_table(sample_frame(), tmp_path / "t.csv")
    with pytest.raises(ValueError, match="unknown kind"):
        read_table(path, {"id": "text"})
