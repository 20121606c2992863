"""Fraud design in Feast: customer and terminal entities, one push source and one feature view each.

The stream processor and the batch backfill both write rows of exactly these columns; the scoring service and
the training set read them through the feature service `fraud_v1`.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService
from feast.types import Float64, Int64
from feast.value_type import ValueType

from feature_repo import pushed_view_objects

WINDOWS_DAYS = (1, 7, 30)
CUSTOMER_VIEW = "fraud_customer_features"
TERMINAL_VIEW = "fraud_terminal_features"
CUSTOMER_PUSH = "fraud_customer_push"
TERMINAL_PUSH = "fraud_terminal_push"
FEATURE_SERVICE = "fraud_v1"

CUSTOMER_FEATURES = [
    *(f"customer_tx_count_{w}d" for w in WINDOWS_DAYS),
    *(f"customer_avg_amount_{w}d" for w in WINDOWS_DAYS),
    "customer_last_tx_epoch",
]
TERMINAL_FEATURES = [
    *(f"terminal_tx_count_{w}d" for w in WINDOWS_DAYS),
    *(f"terminal_risk_{w}d" for w in WINDOWS_DAYS),
]
# A row older than this is treated as missing, online and offline alike.
FEATURE_TTL = timedelta(days=45)


def _dtype(name: str) -> type:
    return Int64 if "_count_" in name else Float64


def fraud_feature_objects(offline_dir: Path) -> list:
    """Everything `feast apply` registers for the fraud design; offline rows live under `offline_dir`."""
    customer = Entity(name="customer", join_keys=["customer_id"], value_type=ValueType.STRING)
    terminal = Entity(name="terminal", join_keys=["terminal_id"], value_type=ValueType.STRING)
    objects: list = [customer, terminal]
    views = []
    for entity, view_name, push_name, features in (
        (customer, CUSTOMER_VIEW, CUSTOMER_PUSH, CUSTOMER_FEATURES),
        (terminal, TERMINAL_VIEW, TERMINAL_PUSH, TERMINAL_FEATURES),
    ):
        made, view = pushed_view_objects(
            offline_dir, entity, view_name, push_name, {name: _dtype(name) for name in features}, FEATURE_TTL
        )
        objects += made
        views.append(view)
    objects.append(FeatureService(name=FEATURE_SERVICE, features=views))
    return objects
