"""Feast definitions: entities, push sources, feature views and versioned feature services per design."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any


def pushed_view_objects(
    offline_dir: Path, entity: Any, view_name: str, push_name: str, schema: dict[str, Any], ttl: timedelta
) -> tuple[list[Any], Any]:
    """The Parquet offline source, push source and feature view of one streamed entity; returns (objects, view).

    Every design's stream processor writes rows this way: pushed online, appended to `offline_dir/<view>` offline.
    """
    from feast import FeatureView, Field, FileSource, PushSource
    from feast.data_format import ParquetFormat

    batch = FileSource(
        name=f"{view_name}_offline",
        path=str((offline_dir / view_name).resolve()),
        timestamp_field="event_timestamp",
        file_format=ParquetFormat(),
    )
    push = PushSource(name=push_name, batch_source=batch)
    view = FeatureView(
        name=view_name,
        entities=[entity],
        ttl=ttl,
        schema=[Field(name=name, dtype=dtype) for name, dtype in schema.items()],
        source=push,
        online=True,
    )
    return [batch, push, view], view
