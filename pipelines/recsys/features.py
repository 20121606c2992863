"""Recommendation features, one implementation for the batch backfill and the stream processor.

`RecsysFeatureEngine` keeps per-user and per-item window state and turns each interaction into one new user row
and one new item row (the state including that interaction): activity counts over 1/7/30 days, a user's latest
items (the seen-item filter and session context), a user's category shares over 30 days, an item's popularity over
windows and its age (freshness). The backfill runs it over a file in time order; the stream processor runs the
same object over Kafka micro-batches, so online rows equal offline rows.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

import pandas as pd

from feature_repo.recsys import ITEM_FEATURES, RECENT_ITEMS, TOP_CATEGORIES, USER_FEATURES, WINDOWS_DAYS
from pipelines.platform.features import epoch_seconds

DAY = 86_400.0
UNKNOWN_CATEGORY = "unknown"


def _window_deques() -> list[deque[tuple[float, float]]]:
    return [deque() for _ in WINDOWS_DAYS]


@dataclass
class _UserState:
    windows: list[deque[tuple[float, float]]] = field(default_factory=_window_deques)
    month: deque[tuple[float, str, float]] = field(default_factory=deque)  # (time, category, weight), 30 days
    category_weight: dict[str, float] = field(default_factory=dict)
    recent: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_ITEMS))
    clock: float = float("-inf")


@dataclass
class _ItemState:
    windows: list[deque[tuple[float, float]]] = field(default_factory=_window_deques)
    weights: list[float] = field(default_factory=lambda: [0.0] * len(WINDOWS_DAYS))
    first_seen: float = float("inf")
    clock: float = float("-inf")


def _slide(window: deque[tuple[float, float]], time: float, weight: float, horizon: float) -> float:
    """Add an event (unless already older than the window), drop what left it; return the weight removed."""
    if time > horizon:
        window.append((time, weight))
    removed = 0.0
    while window and window[0][0] <= horizon:
        removed += window.popleft()[1]
    return removed


class RecsysFeatureEngine:
    """Window state for every user and item; times are epoch seconds."""

    def __init__(self, item_categories: dict[str, str] | None = None) -> None:
        self.spans = [w * DAY for w in WINDOWS_DAYS]
        self.categories: dict[str, str] = dict(item_categories or {})
        self.users: dict[str, _UserState] = {}
        self.items: dict[str, _ItemState] = {}

    def add_item(self, item_id: str, category: str, created_at: float) -> None:
        """A catalogue entry: its category, and when it became available (freshness counts from there)."""
        self.categories[item_id] = category
        state = self.items.setdefault(item_id, _ItemState())
        state.first_seen = min(state.first_seen, created_at)

    def add_interaction(self, user_id: str, item_id: str, time: float, weight: float) -> tuple[tuple, tuple]:
        category = self.categories.get(item_id, UNKNOWN_CATEGORY)
        return self._user(user_id, item_id, category, time, weight), self._item(item_id, time, weight)

    def _user(self, user_id: str, item_id: str, category: str, time: float, weight: float) -> tuple:
        state = self.users.get(user_id)
        if state is None:
            state = self.users[user_id] = _UserState()
        clock = state.clock = max(state.clock, time)
        counts = []
        for window, span in zip(state.windows, self.spans, strict=True):
            _slide(window, time, 1.0, clock - span)
            counts.append(len(window))
        horizon = clock - self.spans[-1]
        if time > horizon:
            state.month.append((time, category, weight))
            state.category_weight[category] = state.category_weight.get(category, 0.0) + weight
        while state.month and state.month[0][0] <= horizon:
            _, old_category, old_weight = state.month.popleft()
            left = state.category_weight[old_category] - old_weight
            if left <= 1e-9:
                del state.category_weight[old_category]
            else:
                state.category_weight[old_category] = left
        if item_id in state.recent:
            state.recent.remove(item_id)
        state.recent.append(item_id)
        total = sum(state.category_weight.values())
        top = sorted(state.category_weight.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_CATEGORIES]
        return (
            *counts,
            round(total, 6),
            list(reversed(state.recent)),
            [name for name, _ in top],
            [round(w / total, 6) if total else 0.0 for _, w in top],
            clock,
        )

    def _item(self, item_id: str, time: float, weight: float) -> tuple:
        state = self.items.get(item_id)
        if state is None:
            state = self.items[item_id] = _ItemState()
        state.first_seen = min(state.first_seen, time)
        clock = state.clock = max(state.clock, time)
        counts = []
        for i, (window, span) in enumerate(zip(state.windows, self.spans, strict=True)):
            if time > clock - span:
                state.weights[i] += weight
            state.weights[i] -= _slide(window, time, weight, clock - span)
            counts.append(len(window))
        return (*counts, round(state.weights[WINDOWS_DAYS.index(7)], 6), state.first_seen, clock)

    # -- state as bytes, for the stream processor's checkpoints (JSON keeps floats exact, and ±inf)

    def export_user(self, user_id: str) -> bytes:
        u = self.users[user_id]
        return json.dumps(
            [
                [list(map(list, w)) for w in u.windows],
                list(map(list, u.month)),
                u.category_weight,
                list(u.recent),
                u.clock,
            ]
        ).encode()

    def import_user(self, user_id: str, data: bytes) -> None:
        windows, month, category_weight, recent, clock = json.loads(data)
        self.users[user_id] = _UserState(
            windows=[deque((t, w) for t, w in window) for window in windows],
            month=deque((t, c, w) for t, c, w in month),
            category_weight=dict(category_weight),
            recent=deque(recent, maxlen=RECENT_ITEMS),
            clock=clock,
        )

    def export_item(self, item_id: str) -> bytes:
        i = self.items[item_id]
        return json.dumps([[list(map(list, w)) for w in i.windows], i.weights, i.first_seen, i.clock]).encode()

    def import_item(self, item_id: str, data: bytes) -> None:
        windows, weights, first_seen, clock = json.loads(data)
        self.items[item_id] = _ItemState(
            windows=[deque((t, w) for t, w in window) for window in windows],
            weights=list(weights),
            first_seen=first_seen,
            clock=clock,
        )

    def run(
        self, user_ids: Iterable[str], item_ids: Iterable[str], times: Iterable[float], weights: Iterable[float]
    ) -> tuple[list[tuple], list[tuple]]:
        user_rows, item_rows = [], []
        for user_id, item_id, time, weight in zip(user_ids, item_ids, times, weights, strict=True):
            user_row, item_row = self.add_interaction(user_id, item_id, time, weight)
            user_rows.append(user_row)
            item_rows.append(item_row)
        return user_rows, item_rows


def feature_frames(
    interactions: pd.DataFrame, user_rows: list[tuple], item_rows: list[tuple]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attach ids and event timestamps to engine rows: the shape Feast stores."""
    timestamps = pd.to_datetime(interactions["timestamp"], utc=True).to_numpy()
    users = pd.DataFrame(user_rows, columns=USER_FEATURES)
    users.insert(0, "user_id", interactions["user_id"].astype(str).to_numpy())
    users.insert(1, "event_timestamp", pd.to_datetime(timestamps, utc=True))
    items = pd.DataFrame(item_rows, columns=ITEM_FEATURES)
    items.insert(0, "item_id", interactions["item_id"].astype(str).to_numpy())
    items.insert(1, "event_timestamp", pd.to_datetime(timestamps, utc=True))
    return users, items


def engine_for_catalogue(items: pd.DataFrame | None) -> RecsysFeatureEngine:
    """An engine that knows every item's category and creation time."""
    engine = RecsysFeatureEngine()
    if items is not None and not items.empty:
        created = epoch_seconds(items["created_at"]).tolist() if "created_at" in items else [float("inf")] * len(items)
        categories = items["category"] if "category" in items else [UNKNOWN_CATEGORY] * len(items)
        for item_id, category, created_at in zip(items["item_id"].astype(str), categories, created, strict=True):
            engine.add_item(item_id, str(category), created_at)
    return engine


def backfill_features(
    interactions: pd.DataFrame, items: pd.DataFrame | None = None, engine: RecsysFeatureEngine | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """User and item feature rows for every interaction of a file, through the streaming engine."""
    engine = engine or engine_for_catalogue(items)
    ordered = interactions.sort_values("timestamp", kind="stable")
    weights = ordered["weight"].astype(float).tolist() if "weight" in ordered else [1.0] * len(ordered)
    user_rows, item_rows = engine.run(
        ordered["user_id"].astype(str).tolist(),
        ordered["item_id"].astype(str).tolist(),
        epoch_seconds(ordered["timestamp"]).tolist(),
        weights,
    )
    return feature_frames(ordered, user_rows, item_rows)
