"""Recommendation features: hand-computed windows, batch equals stream, and a round trip through Feast."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feature_repo.recsys import FEATURE_SERVICE, ITEM_FEATURES, ITEM_VIEW, USER_FEATURES, USER_VIEW
from pipelines.recsys.features import DAY, RecsysFeatureEngine, backfill_features, engine_for_catalogue

T0 = 1_770_000_000.0


def user_row(row: tuple) -> dict:
    return dict(zip(USER_FEATURES, row, strict=True))


def item_row(row: tuple) -> dict:
    return dict(zip(ITEM_FEATURES, row, strict=True))


@pytest.mark.unit
def test_user_windows_recent_items_and_category_shares():
    engine = RecsysFeatureEngine({"a": "books", "b": "books", "c": "games"})
    engine.add_interaction("u", "a", T0, 1.0)
    engine.add_interaction("u", "c", T0 + 2 * DAY, 3.0)
    row = user_row(engine.add_interaction("u", "b", T0 + 2 * DAY + 60, 1.0)[0])
    assert [row["user_events_1d"], row["user_events_7d"], row["user_events_30d"]] == [2, 3, 3]
    assert row["user_recent_items"] == ["b", "c", "a"]  # newest first
    assert row["user_top_categories"] == ["games", "books"]
    assert row["user_top_category_shares"] == [0.6, 0.4]
    assert row["user_weight_30d"] == 5.0
    # 31 days later everything but the new event has left every window.
    later = user_row(engine.add_interaction("u", "a", T0 + 33 * DAY, 1.0)[0])
    assert [later["user_events_1d"], later["user_events_30d"]] == [1, 1]
    assert later["user_top_categories"] == ["books"] and later["user_top_category_shares"] == [1.0]
    assert later["user_recent_items"] == ["a", "b", "c"]  # a seen item moves to the front, once


@pytest.mark.unit
def test_item_popularity_and_freshness():
    engine = RecsysFeatureEngine()
    engine.add_item("i", "toys", T0 - 5 * DAY)
    engine.add_interaction("u1", "i", T0, 2.0)
    engine.add_interaction("u2", "i", T0 + 3 * DAY, 1.0)
    row = item_row(engine.add_interaction("u3", "i", T0 + 8 * DAY, 4.0)[1])
    assert [row["item_events_1d"], row["item_events_7d"], row["item_events_30d"]] == [1, 2, 3]
    assert row["item_weight_7d"] == 5.0  # the first event (8 days old) left the 7-day window
    assert row["item_first_seen_epoch"] == T0 - 5 * DAY
    assert row["item_last_event_epoch"] == T0 + 8 * DAY


def simulated(n: int = 4000, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    items = pd.DataFrame(
        {
            "item_id": [f"I{i}" for i in range(300)],
            "category": [f"c{i % 7}" for i in range(300)],
            "created_at": pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 20, 300), "D"),
        }
    )
    interactions = pd.DataFrame(
        {
            "user_id": [f"U{i}" for i in rng.integers(0, 150, n)],
            "item_id": [f"I{i}" for i in rng.zipf(1.5, n) % 300],
            "timestamp": pd.Timestamp("2026-01-01", tz="UTC")
            + pd.to_timedelta(np.sort(rng.uniform(0, 40 * 86400, n)), "s"),
            "weight": rng.choice([1.0, 2.0, 5.0], n),
        }
    )
    return interactions, items


@pytest.mark.unit
def test_micro_batches_give_exactly_the_backfill_rows():
    interactions, items = simulated()
    users, item_rows = backfill_features(interactions, items)
    engine = engine_for_catalogue(items)
    streamed_users, streamed_items = [], []
    for start in range(0, len(interactions), 333):
        chunk = interactions.iloc[start : start + 333]
        u, i = backfill_features(chunk, engine=engine)
        streamed_users.append(u)
        streamed_items.append(i)
    pd.testing.assert_frame_equal(pd.concat(streamed_users, ignore_index=True), users)
    pd.testing.assert_frame_equal(pd.concat(streamed_items, ignore_index=True), item_rows)


@pytest.mark.integration
def test_list_features_round_trip_through_the_online_store(settings):
    from pipelines.designs import feature_definitions
    from pipelines.platform.features import apply_feature_definitions, read_online, write_online_fast

    interactions, items = simulated(500)
    users, item_rows = backfill_features(interactions, items)
    newest_users = users.drop_duplicates("user_id", keep="last")
    newest_items = item_rows.drop_duplicates("item_id", keep="last")
    store = apply_feature_definitions(settings, feature_definitions())
    write_online_fast(store, USER_VIEW, "user_id", newest_users)
    write_online_fast(store, ITEM_VIEW, "item_id", newest_items)
    sample = newest_users.head(20).reset_index(drop=True)
    online = read_online(store, FEATURE_SERVICE, [{"user_id": u, "item_id": "I1"} for u in sample["user_id"]])
    for column in ("user_recent_items", "user_top_categories"):
        assert [list(v) for v in online[column]] == [list(v) for v in sample[column]]
    np.testing.assert_allclose(
        np.concatenate([np.asarray(v, dtype=float) for v in online["user_top_category_shares"]]),
        np.concatenate([np.asarray(v, dtype=float) for v in sample["user_top_category_shares"]]),
    )
    expected = newest_items.set_index("item_id").loc["I1", "item_events_30d"]
    assert (online["item_events_30d"] == expected).all()
