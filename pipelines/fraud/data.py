"""The transaction contract: what a user's file (or the simulator) must provide for the fraud design.

Labels arrive late in this domain (a chargeback comes days after the payment), so every row carries the time
its label became known. Files without that column get the configured delay, which keeps training and backtests
from using labels that would not have existed yet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.platform.dataio import DataFileError, read_table, row_label, show_value
from pipelines.platform.errors import InvalidInput

TRANSACTION_REQUIRED: dict[str, str] = {
    "transaction_id": "string",
    "timestamp": "datetime",
    "customer_id": "string",
    "terminal_id": "string",
    "amount": "float",
    "is_fraud": "label",
}
TRANSACTION_OPTIONAL: dict[str, str] = {"label_timestamp": "datetime"}


def read_transactions(path: Path, label_delay_days: int = 7) -> pd.DataFrame:
    """Read and validate a transactions file; rows come back sorted by (timestamp, transaction_id).

    Beyond the column types: amounts must be finite and not negative, transaction ids unique, and a given
    `label_timestamp` not earlier than its `timestamp`. Missing label times become
    timestamp + label_delay_days. Extra columns are kept as read.
    """
    if label_delay_days < 0:
        raise InvalidInput(f"label_delay_days must be zero or more, got {label_delay_days}")
    path = Path(path)
    frame = read_table(path, TRANSACTION_REQUIRED, TRANSACTION_OPTIONAL, what="transactions file")

    amount = frame["amount"].to_numpy(dtype="float64")
    invalid = ~np.isfinite(amount) | (amount < 0)
    if invalid.any():
        position = int(np.flatnonzero(invalid)[0])
        raise DataFileError(
            f"{path}: column 'amount' must be a finite number of zero or more but "
            f"{row_label(path, position)} holds {show_value(frame['amount'].iloc[position])}; "
            "fix the value or drop the row.",
            path=path,
            column="amount",
            row=position + 1,
        )

    ids = frame["transaction_id"]
    if not ids.is_unique:
        repeated = ids.duplicated(keep="first").to_numpy()
        position = int(np.flatnonzero(repeated)[0])
        first = int(np.flatnonzero((ids == ids.iloc[position]).to_numpy())[0])
        raise DataFileError(
            f"{path}: column 'transaction_id' must be unique but {row_label(path, position)} repeats "
            f"{show_value(ids.iloc[position])} from {row_label(path, first)}; "
            "remove or renumber the duplicate.",
            path=path,
            column="transaction_id",
            row=position + 1,
        )

    default_label_time = frame["timestamp"] + pd.Timedelta(days=label_delay_days)
    if "label_timestamp" not in frame.columns:
        frame["label_timestamp"] = default_label_time
    else:
        label_time = frame["label_timestamp"]
        early = (label_time < frame["timestamp"]).to_numpy(dtype=bool, na_value=False)
        if early.any():
            position = int(np.flatnonzero(early)[0])
            raise DataFileError(
                f"{path}: column 'label_timestamp' must not be earlier than 'timestamp' but "
                f"{row_label(path, position)} has {label_time.iloc[position]} before "
                f"{frame['timestamp'].iloc[position]}; fix the value or leave it empty to use the "
                f"{label_delay_days}-day default.",
                path=path,
                column="label_timestamp",
                row=position + 1,
            )
        frame["label_timestamp"] = label_time.fillna(default_label_time)

    order = _time_then_id_order(frame["timestamp"].to_numpy(dtype="int64"), ids.to_numpy())
    if not np.array_equal(order, np.arange(len(order))):
        frame = frame.take(order)
    frame.index = pd.RangeIndex(len(frame))
    return frame


def _time_then_id_order(times: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row order by (time, id); ids are compared only among rows that share a time, which keeps it fast."""
    order = np.argsort(times, kind="stable")
    ordered = times[order]
    same = ordered[1:] == ordered[:-1]
    if not same.any():
        return order
    tied = np.zeros(len(order), dtype=bool)
    tied[1:] |= same
    tied[:-1] |= same
    spots = np.flatnonzero(tied)
    rows = order[spots]
    ranks, _ = pd.factorize(ids[rows], sort=True)
    # Tied rows fill contiguous runs of `spots`, so sorting them by (time, id) keeps each run in place.
    order[spots] = rows[np.lexsort((ranks, times[rows]))]
    return order
