"""Recommendation design in Feast: user and item entities, a push source and a feature view each.

The stream processor and the batch backfill write rows of exactly these columns (`pipelines/recsys/features.py`);
the ranker's training set and the `/recommend` service read them through the feature service `recsys_v1`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService
from feast.types import Array, Float64, Int64, String
from feast.value_type import ValueType

from feature_repo import pushed_view_objects

WINDOWS_DAYS = (1, 7, 30)
USER_VIEW = "recsys_user_features"
ITEM_VIEW = "recsys_item_features"
USER_PUSH = "recsys_user_push"
ITEM_PUSH = "recsys_item_push"
FEATURE_SERVICE = "recsys_v1"
RECENT_ITEMS = 20  # how many of a user's latest items are kept online (seen-item filter, session context)
TOP_CATEGORIES = 5

USER_SCHEMA = {
    **{f"user_events_{w}d": Int64 for w in WINDOWS_DAYS},
    "user_weight_30d": Float64,
    "user_recent_items": Array(String),
    "user_top_categories": Array(String),
    "user_top_category_shares": Array(Float64),
    "user_last_event_epoch": Float64,
}
ITEM_SCHEMA = {
    **{f"item_events_{w}d": Int64 for w in WINDOWS_DAYS},
    "item_weight_7d": Float64,
    "item_first_seen_epoch": Float64,
    "item_last_event_epoch": Float64,
}
USER_FEATURES = list(USER_SCHEMA)
ITEM_FEATURES = list(ITEM_SCHEMA)
# Long enough to cover the 30-day windows of a user who comes back once a month.
FEATURE_TTL = timedelta(days=45)


def recsys_feature_objects(offline_dir: Path) -> list:
    """Everything `feast apply` registers for the recommendation design; offline rows live under `offline_dir`."""
    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
    item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING)
    objects: list = [user, item]
    views = []
    for entity, view_name, push_name, schema in (
        (user, USER_VIEW, USER_PUSH, USER_SCHEMA),
        (item, ITEM_VIEW, ITEM_PUSH, ITEM_SCHEMA),
    ):
        made, view = pushed_view_objects(offline_dir, entity, view_name, push_name, schema, FEATURE_TTL)
        objects += made
        views.append(view)
    objects.append(FeatureService(name=FEATURE_SERVICE, features=views))
    return objects
