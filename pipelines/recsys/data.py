"""The interaction and item contracts: what a user's files (or the simulator) must provide for the recsys design.

Every downstream step trains on a `weight` per interaction, so reading always yields one: the file's `weight`,
else its `rating`, else 1.0. Items are optional metadata; interactions may name items the item file lacks
(catalogues lag behind logs), which is counted and logged rather than treated as an error.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.platform.dataio import DataFileError, read_table, row_label, show_value
from pipelines.recsys.events import derived_interaction_id

logger = logging.getLogger(__name__)

INTERACTION_REQUIRED: dict[str, str] = {"user_id": "string", "item_id": "string", "timestamp": "datetime"}
INTERACTION_OPTIONAL: dict[str, str] = {
    "rating": "float",
    "weight": "float",
    "event_type": "string",
    "interaction_id": "string",
}
ITEM_REQUIRED: dict[str, str] = {"item_id": "string"}
ITEM_OPTIONAL: dict[str, str] = {"category": "string", "created_at": "datetime"}
UNKNOWN_CATEGORY = "unknown"


def read_interactions(path: Path) -> pd.DataFrame:
    """Read and validate an interactions file; rows come back sorted by timestamp (stable) with a fresh index.

    The `weight` column is always present (float64): taken from `weight`, else `rating`, else 1.0. The column
    it comes from must hold finite values of zero or more. `interaction_id` is always present too: the file's
    (unique), else derived from each row's content and its occurrence (`interaction_ids`). Extra columns are kept
    as read.
    """
    path = Path(path)
    frame = read_table(path, INTERACTION_REQUIRED, INTERACTION_OPTIONAL, what="interactions file")

    source = next((column for column in ("weight", "rating") if column in frame.columns), None)
    if source is None:
        frame["weight"] = 1.0
    else:
        values = frame[source].to_numpy(dtype="float64")
        invalid = ~np.isfinite(values) | (values < 0)
        if invalid.any():
            position = int(np.flatnonzero(invalid)[0])
            shown = "an empty value" if np.isnan(values[position]) else show_value(frame[source].iloc[position])
            raise DataFileError(
                f"{path}: column '{source}' must be a finite number of zero or more (it becomes the interaction "
                f"weight) but {row_label(path, position)} holds {shown}; fix the value or drop the row.",
                path=path,
                column=source,
                row=position + 1,
            )
        frame["weight"] = values

    if "interaction_id" in frame.columns:
        ids = frame["interaction_id"]
        if ids.isna().any() or not ids.is_unique:
            position = int(np.flatnonzero((ids.isna() | ids.duplicated(keep="first")).to_numpy())[0])
            raise DataFileError(
                f"{path}: column 'interaction_id' must be filled and unique but {row_label(path, position)} holds "
                f"{show_value(ids.iloc[position])}; fix the id or drop the column to have ids derived.",
                path=path,
                column="interaction_id",
                row=position + 1,
            )
    else:
        frame["interaction_id"] = interaction_ids(frame)

    times = frame["timestamp"].to_numpy(dtype="int64")
    if len(times) > 1 and (np.diff(times) < 0).any():
        frame = frame.take(np.argsort(times, kind="stable"))
    frame.index = pd.RangeIndex(len(frame))
    return frame


def interaction_ids(frame: pd.DataFrame) -> pd.Series:
    """Ids for interactions that came without: the content's (`derived_interaction_id`, what the stream derives
    for an event without an id), with "-2", "-3"... for the second, third... identical row of a file."""
    types = frame["event_type"].astype(str) if "event_type" in frame else pd.Series("interaction", index=frame.index)
    micros = pd.to_datetime(frame["timestamp"], utc=True).dt.as_unit("us").astype("int64")
    base = [
        derived_interaction_id(str(u), str(i), int(m), t)
        for u, i, m, t in zip(frame["user_id"], frame["item_id"], micros, types, strict=True)
    ]
    out = pd.Series(base, index=frame.index, dtype=object)
    occurrence = out.groupby(out).cumcount()
    repeated = occurrence > 0
    out[repeated] = out[repeated] + "-" + (occurrence[repeated] + 1).astype(str)
    return out


def read_items(path: Path) -> pd.DataFrame:
    """Read and validate an items file: item ids must be unique; a missing or empty category becomes "unknown".

    Extra columns (price, brand, ...) are kept as read; `created_at`, when present, is read as a UTC time.
    """
    path = Path(path)
    frame = read_table(path, ITEM_REQUIRED, ITEM_OPTIONAL, what="items file")

    ids = frame["item_id"]
    if not ids.is_unique:
        position = int(np.flatnonzero(ids.duplicated(keep="first").to_numpy())[0])
        first = int(np.flatnonzero((ids == ids.iloc[position]).to_numpy())[0])
        raise DataFileError(
            f"{path}: column 'item_id' must be unique but {row_label(path, position)} repeats "
            f"{show_value(ids.iloc[position])} from {row_label(path, first)}; keep one row per item.",
            path=path,
            column="item_id",
            row=position + 1,
        )
    if "category" in frame.columns:
        frame["category"] = frame["category"].fillna(UNKNOWN_CATEGORY).astype(object)
    else:
        frame["category"] = UNKNOWN_CATEGORY
    frame.index = pd.RangeIndex(len(frame))
    return frame


def unknown_items(interactions: pd.DataFrame, items: pd.DataFrame) -> pd.Index:
    """Item ids the interactions use that the item file lacks (sorted); logged when there are any.

    They stay usable for collaborative models; only item features (category, freshness) are missing for them.
    """
    used = pd.Index(interactions["item_id"].unique())
    missing = used.difference(pd.Index(items["item_id"]))
    if len(missing):
        share = float(interactions["item_id"].isin(missing).mean())
        logger.warning(
            "%d of %d item ids in the interactions (%.1f%% of rows) are not in the item file, e.g. %s; "
            "they have no item features.",
            len(missing),
            len(used),
            100 * share,
            ", ".join(map(str, missing[:3])),
        )
    return missing
