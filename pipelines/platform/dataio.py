"""Reading and writing the tables users bring (CSV or Parquet), validated against a small column contract.

Every design reads its input through `read_table`, so a bad file always ends in the same kind of message: one
sentence that names the file, the column, the first bad row and the fix. Conversions are vectorised because
the same code reads the multi-million-row files the simulators write.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from pipelines.platform.errors import InvalidInput, UserError

COLUMN_KINDS = ("string", "datetime", "float", "int", "label")
CSV_SUFFIXES = (".csv.gz", ".csv")
PARQUET_SUFFIXES = (".parquet", ".pq")

# Spellings read as "no value" in CSV files; kept short so identifiers such as "NA" stay values.
_CSV_NULLS = ["", "null", "NULL", "NaN", "nan", "N/A", "None"]

_EXPECTED = {
    "string": "text",
    "datetime": "a date-time such as 2026-01-31T14:05:00Z",
    "float": "numeric",
    "int": "a whole number",
    "label": "a 0/1 label (0, 1, true or false)",
}

_LABEL_WORDS = {"0": 0, "1": 1, "false": 0, "true": 1, "0.0": 0, "1.0": 1}


class DataFileError(UserError):
    """A problem with a user's data file, worded as one sentence that names the file, the column and the fix.

    Callers print `str(error)` without a traceback. `path`, `column` and `row` (1-based, header excluded)
    are kept for programs that want to point at the problem themselves.
    """

    def __init__(
        self, message: str, *, path: Path | None = None, column: str | None = None, row: int | None = None
    ) -> None:
        super().__init__(message)
        self.path = path
        self.column = column
        self.row = row


def file_format(path: Path) -> str:
    """'csv' or 'parquet' from the file name; anything else is a DataFileError."""
    name = path.name.lower()
    if name.endswith(CSV_SUFFIXES):
        return "csv"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    raise DataFileError(
        f"{path}: unsupported file type '{''.join(path.suffixes) or path.name}'; "
        "use a .csv, .csv.gz, .parquet or .pq file.",
        path=path,
    )


def row_label(path: Path, position: int) -> str:
    """How a message points at the row at 0-based `position`: the data row and, for CSV, the file line."""
    row = position + 1
    if file_format(path) == "csv":
        return f"row {row} (line {row + 1})"
    return f"row {row}"


def show_value(value: Any, limit: int = 40) -> str:
    text = repr(value.item() if isinstance(value, np.generic) else value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_table(
    path: Path,
    required: dict[str, str],
    optional: dict[str, str] | None = None,
    what: str = "file",
) -> pd.DataFrame:
    """Read a CSV (`.csv`, `.csv.gz`) or Parquet (`.parquet`, `.pq`) file and convert the declared columns.

    Kinds: "string" (object column of str; 123 becomes "123"), "datetime" (datetime64[ns, UTC]; naive values
    are taken as UTC; ISO strings, datetimes and numeric epoch seconds are accepted), "float" (float64),
    "int" (int64) and "label" (0/1 int64 from bools, 0/1, "0"/"1", "true"/"false").
    Required columns must exist and hold no empty values. Optional columns are converted when present and may
    hold empty values (NaN/NaT/None, or nullable Int64 for int and label). Other columns are kept as read.
    """
    path = Path(path)
    optional = optional or {}
    for column, kind in {**required, **optional}.items():
        if kind not in COLUMN_KINDS:
            raise ValueError(f"column {column!r} has unknown kind {kind!r}; use one of {', '.join(COLUMN_KINDS)}")

    fmt = file_format(path)
    if not path.exists():
        raise DataFileError(f"{what} {path} does not exist; check the path.", path=path)

    declared = {**required, **{c: k for c, k in optional.items() if c not in required}}
    frame = _read_csv(path, declared, what) if fmt == "csv" else _read_parquet(path, what)
    frame = _match_column_names(frame, list(declared))

    missing = [column for column in required if column not in frame.columns]
    if missing:
        found = ", ".join(str(c) for c in list(frame.columns)[:12]) or "none"
        if len(frame.columns) > 12:
            found += ", ..."
        raise DataFileError(
            f"{path}: required column '{missing[0]}' is missing (columns found: {found}); "
            "add the column or rename the one that holds it.",
            path=path,
            column=missing[0],
        )

    repeated = [column for column in declared if (frame.columns == column).sum() > 1]
    if repeated:
        raise DataFileError(
            f"{path}: column '{repeated[0]}' appears more than once in the header; keep one and rename the others.",
            path=path,
            column=repeated[0],
        )
    for column, kind in declared.items():
        if column in frame.columns:
            frame[column] = _convert(frame[column], kind, path, column, column in required)
    return frame


def write_table(df: pd.DataFrame, path: Path) -> Path:
    """Write `df` as CSV (`.csv`, `.csv.gz`) or Parquet (`.parquet`, `.pq`) by suffix, creating folders."""
    path = Path(path)
    fmt = file_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        df.to_parquet(path, index=False)
        return path
    _write_csv(df, path)
    return path


# ----------------------------------------------------------------------------------------------------------
# Reading


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__).rstrip(".")


def _read_csv(path: Path, declared: dict[str, str], what: str) -> pd.DataFrame:
    import pyarrow as pa

    # Identifier columns are read as text so leading zeros survive; the rest is inferred by Arrow (fast) and
    # converted below. If inference trips over a bad value deep in the file, a second read as plain text lets
    # the converters name the exact row.
    text_columns = {c: pa.string() for c, kind in declared.items() if kind == "string"}
    try:
        return _arrow_csv(path, text_columns)
    except pa.ArrowInvalid as error:
        if "conversion error" not in str(error).lower():
            raise DataFileError(
                f"{what} {path} could not be read as CSV ({_first_line(error)}); "
                "check that it is a valid comma-separated file with one header line.",
                path=path,
            ) from error
    except (OSError, pa.ArrowException) as error:
        raise DataFileError(
            f"{what} {path} could not be read as CSV ({_first_line(error)}); "
            "check that it is a valid, readable comma-separated file.",
            path=path,
        ) from error
    try:
        return _arrow_csv(path, {c: pa.string() for c in declared})
    except (OSError, pa.ArrowException) as error:
        raise DataFileError(
            f"{what} {path} could not be read as CSV ({_first_line(error)}); "
            "check that it is a valid comma-separated file with one header line.",
            path=path,
        ) from error


def _arrow_csv(path: Path, column_types: dict[str, Any]) -> pd.DataFrame:
    from pyarrow import csv as pa_csv

    options = pa_csv.ConvertOptions(
        column_types=column_types,
        null_values=_CSV_NULLS,
        strings_can_be_null=True,
        quoted_strings_can_be_null=True,
    )
    table = pa_csv.read_csv(str(path), convert_options=options)
    return table.to_pandas(split_blocks=True, self_destruct=True)


def _read_parquet(path: Path, what: str) -> pd.DataFrame:
    import pyarrow as pa

    try:
        return pd.read_parquet(path)
    except (OSError, ValueError, pa.ArrowException) as error:
        raise DataFileError(
            f"{what} {path} could not be read as Parquet ({_first_line(error)}); "
            "check that it is a complete Parquet file.",
            path=path,
        ) from error


def _match_column_names(frame: pd.DataFrame, declared: list[str]) -> pd.DataFrame:
    """Accept ' Amount ' for 'amount' when no exact 'amount' exists; other columns keep their names."""
    present = set(frame.columns)
    wanted = {name.strip().casefold(): name for name in declared if name not in present}
    if not wanted:
        return frame
    renames: dict[Any, str] = {}
    for column in frame.columns:
        if isinstance(column, str):
            target = wanted.get(column.strip().casefold())
            if target is not None and target not in renames.values():
                renames[column] = target
    return frame.rename(columns=renames) if renames else frame


# ----------------------------------------------------------------------------------------------------------
# Column conversion: each converter returns the converted values and a mask of non-empty values it rejected.


def _blank_mask(series: pd.Series) -> np.ndarray:
    mask = series.isna().to_numpy(dtype=bool)
    if series.dtype == object or isinstance(series.dtype, pd.StringDtype):
        mask |= (series == "").to_numpy(dtype=bool, na_value=False)
    return mask


def _convert(series: pd.Series, kind: str, path: Path, column: str, required: bool) -> pd.Series:
    blank = _blank_mask(series)
    if required and blank.any():
        position = int(np.flatnonzero(blank)[0])
        raise DataFileError(
            f"{path}: column '{column}' is required but {row_label(path, position)} is empty; "
            "fill in the value or drop the row.",
            path=path,
            column=column,
            row=position + 1,
        )
    try:
        values, bad = _CONVERTERS[kind](series, blank)
    except (OverflowError, ValueError, TypeError, pd.errors.OutOfBoundsDatetime) as error:
        raise DataFileError(
            f"{path}: column '{column}' must be {_EXPECTED[kind]} but could not be converted "
            f"({_first_line(error)}); fix the values in that column.",
            path=path,
            column=column,
        ) from error
    bad &= ~blank
    if bad.any():
        position = int(np.flatnonzero(bad)[0])
        raise DataFileError(
            f"{path}: column '{column}' must be {_EXPECTED[kind]} but {row_label(path, position)} holds "
            f"{show_value(series.iloc[position])}; fix the value or drop the row.",
            path=path,
            column=column,
            row=position + 1,
        )
    return values


def _to_string(series: pd.Series, blank: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    bad = np.zeros(len(series), dtype=bool)
    if series.dtype == object and pd.api.types.infer_dtype(series, skipna=True) in {"string", "empty"}:
        values = series.copy()
    elif ptypes.is_float_dtype(series.dtype):
        numbers = series.to_numpy(dtype="float64", na_value=np.nan)
        whole = np.isfinite(numbers) & (numbers == np.round(numbers))
        if whole[~blank].all():
            # An identifier column with gaps arrives as floats (123.0); give back "123".
            values = pd.Series(series.astype("Int64").astype(str).to_numpy(dtype=object), index=series.index)
        else:
            values = series.astype(str).astype(object)
    else:
        values = pd.Series(series.astype(str).to_numpy(dtype=object), index=series.index)
    if blank.any():
        values = values.astype(object).where(~blank, None)
    return values.astype(object), bad


def _to_datetime(series: pd.Series, blank: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    if ptypes.is_datetime64_any_dtype(series.dtype):
        values = series if getattr(series.dt, "tz", None) is not None else series.dt.tz_localize("UTC")
        values = values.dt.tz_convert("UTC")
    elif ptypes.is_numeric_dtype(series.dtype) and not ptypes.is_bool_dtype(series.dtype):
        seconds = series.to_numpy(dtype="float64", na_value=np.nan)
        values = pd.to_datetime(seconds, unit="s", utc=True, errors="coerce").to_series(index=series.index)
    else:
        values = pd.to_datetime(series, utc=True, format="ISO8601", errors="coerce")
        failed = values.isna().to_numpy() & ~blank
        if failed.any():
            # Rare non-ISO spellings ("01/31/2026 14:05") get the slower, more forgiving parser.
            retry = pd.to_datetime(series[failed], utc=True, format="mixed", errors="coerce")
            values = values.copy()
            values[failed] = retry
    values = values.astype("datetime64[ns, UTC]")
    return values, values.isna().to_numpy()


def _numbers(series: pd.Series) -> np.ndarray:
    if ptypes.is_bool_dtype(series.dtype):
        return series.astype("float64").to_numpy()
    if ptypes.is_numeric_dtype(series.dtype):
        return series.to_numpy(dtype="float64", na_value=np.nan)
    return pd.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def _to_float(series: pd.Series, blank: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    numbers = _numbers(series)
    return pd.Series(numbers, index=series.index, dtype="float64"), np.isnan(numbers)


def _integer_result(numbers: np.ndarray, blank: np.ndarray, index: pd.Index) -> pd.Series:
    if blank.any():
        result = pd.Series(pd.array(np.where(blank, 0, numbers).astype("int64"), dtype="Int64"), index=index)
        result[blank] = pd.NA
        return result
    return pd.Series(numbers.astype("int64"), index=index)


def _to_int(series: pd.Series, blank: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    if ptypes.is_integer_dtype(series.dtype) and not blank.any():
        return pd.Series(series.to_numpy(dtype="int64"), index=series.index), np.zeros(len(series), dtype=bool)
    numbers = _numbers(series)
    bad = ~np.isfinite(numbers)
    bad |= ~bad & (numbers != np.round(np.where(bad, 0.0, numbers)))
    bad |= np.abs(np.where(bad, 0.0, numbers)) > 2**63 - 1024
    return _integer_result(np.where(bad, 0.0, numbers), blank, series.index), bad


def _label_of(value: Any) -> int | None:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        return int(value) if value in (0, 1) else None
    if isinstance(value, str):
        return _LABEL_WORDS.get(value.strip().lower())
    return None


def _to_label(series: pd.Series, blank: np.ndarray) -> tuple[pd.Series, np.ndarray]:
    # Labels take few distinct values, so map the distinct values and spread the result back by code.
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    mapped = np.array([_label_of(value) for value in uniques] + [0], dtype=object)
    bad_unique = np.array([m is None for m in mapped], dtype=bool)
    lookup = np.where(bad_unique, 0, mapped).astype("int64")
    numbers = lookup[codes]  # code -1 (empty) picks the trailing 0
    bad = bad_unique[codes] & (codes >= 0)
    return _integer_result(numbers.astype("float64"), blank, series.index), bad


_CONVERTERS: dict[str, Callable[[pd.Series, np.ndarray], tuple[pd.Series, np.ndarray]]] = {
    "string": _to_string,
    "datetime": _to_datetime,
    "float": _to_float,
    "int": _to_int,
    "label": _to_label,
}


# ----------------------------------------------------------------------------------------------------------
# Writing


def _write_csv(df: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    from pyarrow import csv as pa_csv

    compressed = path.name.lower().endswith(".gz")
    try:
        table = pa.Table.from_pandas(df, preserve_index=False)
    except (pa.ArrowException, TypeError, ValueError):
        # Columns Arrow cannot type (mixed Python objects) still write through pandas, only slower.
        df.to_csv(path, index=False, compression="gzip" if compressed else None)
        return
    if compressed:
        with pa.CompressedOutputStream(str(path), "gzip") as stream:
            pa_csv.write_csv(table, stream)
    else:
        pa_csv.write_csv(table, str(path))


def split_history_live(events: pd.DataFrame, live_days: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """History (for training and warming stream state) and the last `live_days` calendar days (to replay live)."""
    if live_days < 1:
        raise InvalidInput(f"--live-days must be at least 1, got {live_days}.")
    timestamps = pd.to_datetime(events["timestamp"], utc=True)
    cut = timestamps.max().floor("D") - pd.Timedelta(days=live_days - 1)
    if cut <= timestamps.min():
        raise InvalidInput(f"The file spans less than {live_days + 1} days; use fewer --live-days or a longer file.")
    live = (timestamps >= cut).to_numpy()
    return events[~live], events[live]


def write_split(
    events: pd.DataFrame, live_days: int, history_out: Path, live_out: Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`split_history_live` written to two files (the `split` commands); returns (history, live)."""
    history, live = split_history_live(events, live_days)
    write_table(history, history_out)
    write_table(live, live_out)
    return history, live
