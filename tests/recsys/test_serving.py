"""What /recommend reads and logs: the platform's fast online reads, the in-memory item table, the request features.

The online stores are real: SQLite in a temporary Feast repo, and the local Redis (skipped when it is not running;
each test's entities carry a unique token and are deleted afterwards).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from feature_repo.recsys import ITEM_FEATURES, ITEM_PUSH, ITEM_VIEW, USER_FEATURES, USER_VIEW
from pipelines.designs import feature_definitions
from pipelines.platform.features import (
    OnlineRows,
    apply_feature_definitions,
    push_online,
    write_online_fast,
)
from pipelines.recsys.monitoring import REQUEST_FEATURES, request_features, top_score
from pipelines.recsys.serving import ItemFeatureTable
from pipelines.settings import Settings
from tests.local_services import REDIS, require

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def item_rows(ids: list[str], events: int, at: datetime = NOW) -> pd.DataFrame:
    """Item rows whose every count is `events`, so a read shows which write it saw."""
    return pd.DataFrame(
        {
            "item_id": ids,
            "event_timestamp": [at] * len(ids),
            "item_events_1d": [events] * len(ids),
            "item_events_7d": [events] * len(ids),
            "item_events_30d": [events] * len(ids),
            "item_weight_7d": [float(events)] * len(ids),
            "item_first_seen_epoch": [at.timestamp() - 86_400] * len(ids),
            "item_last_event_epoch": [at.timestamp()] * len(ids),
        }
    )


def user_rows(ids: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ids,
            "event_timestamp": [NOW] * len(ids),
            "user_events_1d": [i for i in range(len(ids))],
            "user_events_7d": [2 * i for i in range(len(ids))],
            "user_events_30d": [3 * i for i in range(len(ids))],
            "user_weight_30d": [1.5 * i for i in range(len(ids))],
            "user_recent_items": [[f"I{i}", f"I{i + 1}"] for i in range(len(ids))],
            "user_top_categories": [["books"] if i % 2 else [] for i in range(len(ids))],
            "user_top_category_shares": [[0.5] if i % 2 else [] for i in range(len(ids))],
            "user_last_event_epoch": [NOW.timestamp()] * len(ids),
        }
    )


@pytest.fixture(params=["sqlite", "redis"])
def store_and_token(request: pytest.FixtureRequest, settings: Settings) -> Iterator[tuple[object, str]]:
    """A Feast store on SQLite or on the local Redis, and a token that makes this test's entity ids unique."""
    token = uuid.uuid4().hex[:10]
    if request.param == "redis":
        require(REDIS, "Redis")
        settings = settings.model_copy(update={"feast_online_store": "redis", "feast_redis_url": "127.0.0.1:6379"})
    yield apply_feature_definitions(settings, feature_definitions()), token
    if request.param == "redis":
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379)
        keys = list(client.scan_iter(match=f"*{token}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def feast_frame(store: object, view: str, key: str, ids: list[str], features: list[str]) -> pd.DataFrame:
    """The same rows through Feast's `get_online_features`, the path the fast reader replaces."""
    response = store.get_online_features(  # type: ignore[attr-defined]
        features=[f"{view}:{name}" for name in features], entity_rows=[{key: value} for value in ids]
    ).to_dict()
    return pd.DataFrame({name: response[name] for name in features}, index=pd.Index(ids, name=key))


@pytest.mark.integration
def test_fast_online_reads_return_what_get_online_features_returns(store_and_token) -> None:
    store, token = store_and_token
    users = [f"U{token}-{i}" for i in range(6)]
    items = [f"I{token}-{i}" for i in range(40)]
    write_online_fast(store, USER_VIEW, "user_id", user_rows(users))
    write_online_fast(store, ITEM_VIEW, "item_id", item_rows(items, events=4))

    asked = [*users, f"nobody-{token}"]
    fast = OnlineRows(store, USER_VIEW, "user_id", USER_FEATURES).read(asked)
    slow = feast_frame(store, USER_VIEW, "user_id", asked, USER_FEATURES)
    assert fast.index.tolist() == asked and fast.columns.tolist() == USER_FEATURES
    for name in USER_FEATURES:
        for mine, theirs in zip(fast[name], slow[name], strict=True):
            if missing(theirs):  # an absent row: NaN for numbers, None for lists
                assert missing(mine), name
            else:
                assert mine == theirs, name
    assert fast.loc[users[3], "user_recent_items"] == ["I3", "I4"]

    asked_items = [*items, f"gone-{token}"]
    fast_items = OnlineRows(store, ITEM_VIEW, "item_id", ITEM_FEATURES).read(asked_items)
    slow_items = feast_frame(store, ITEM_VIEW, "item_id", asked_items, ITEM_FEATURES).astype(float)
    pd.testing.assert_frame_equal(fast_items, slow_items, check_index_type=False)


@pytest.mark.integration
def test_the_item_table_rereads_only_the_rows_written_since_its_last_refresh(settings: Settings) -> None:
    store = apply_feature_definitions(settings, feature_definitions())
    items = [f"I{i}" for i in range(50)]
    write_online_fast(store, ITEM_VIEW, "item_id", item_rows(items, events=1), written_at=NOW - timedelta(seconds=100))
    write_online_fast(
        store, ITEM_VIEW, "item_id", item_rows(items[:3], events=2), written_at=NOW - timedelta(seconds=50)
    )
    table = ItemFeatureTable(OnlineRows(store, ITEM_VIEW, "item_id", ITEM_FEATURES), refresh_seconds=30)
    assert table.cover(items) == 50 and table.cover(items[:10]) == 0
    assert table.frame["item_events_7d"].tolist() == [2.0] * 3 + [1.0] * 47

    write_online_fast(store, ITEM_VIEW, "item_id", item_rows(["I10", "I11"], events=7), written_at=NOW)
    assert table.refresh() == {"mode": "changed", "rows": 2, "seconds": table.last_refresh["seconds"]}
    expected = [2.0] * 3 + [1.0] * 7 + [7.0] * 2 + [1.0] * 38
    assert table.frame["item_events_7d"].tolist() == expected
    assert table.frame.index.tolist() == items  # rows keep their place
    assert table.refresh()["rows"] == 0

    # A row written through Feast's push has no write time: it is read on every refresh.
    push_online(store, ITEM_PUSH, item_rows(["I20"], events=9))
    assert table.refresh()["rows"] == 1 and table.refresh()["rows"] == 1
    assert table.frame.loc["I20", "item_events_1d"] == 9.0

    # Items outside the loaded catalogues are not held.
    later = NOW + timedelta(seconds=10)
    write_online_fast(store, ITEM_VIEW, "item_id", item_rows(["elsewhere", "I30"], events=3), written_at=later)
    assert table.refresh()["rows"] == 2  # I20 and I30
    assert "elsewhere" not in table.frame.index and len(table.frame) == 50


@pytest.mark.integration
def test_rows_stamped_within_the_writers_clock_slack_are_read_again(settings: Settings) -> None:
    store = apply_feature_definitions(settings, feature_definitions())
    rows = OnlineRows(store, ITEM_VIEW, "item_id", ITEM_FEATURES)
    write_online_fast(store, ITEM_VIEW, "item_id", item_rows(["I1", "I2"], events=1))  # stamped now
    mark = rows.mark()
    assert mark is not None
    # A writer a second behind stamps its row with a time before the mark was taken: it is still found.
    lagging = datetime.now(UTC) - timedelta(seconds=1)
    write_online_fast(store, ITEM_VIEW, "item_id", item_rows(["I3"], events=4), written_at=lagging)
    found = rows.written_since(mark)
    assert found is not None and "I3" in found[0].index and found[0].loc["I3", "item_events_1d"] == 4.0


@pytest.mark.integration
def test_on_a_store_without_write_times_every_refresh_reads_all_rows(store_and_token) -> None:
    store, token = store_and_token
    items = [f"I{token}-{i}" for i in range(30)]
    write_online_fast(store, ITEM_VIEW, "item_id", item_rows(items, events=1))
    rows = OnlineRows(store, ITEM_VIEW, "item_id", ITEM_FEATURES)
    table = ItemFeatureTable(rows, refresh_seconds=30)
    table.cover(items)
    write_online_fast(store, ITEM_VIEW, "item_id", item_rows(items[:2], events=5, at=NOW + timedelta(hours=1)))
    report = table.refresh()
    if rows.written_since(0) is None:  # Redis keeps no write time
        assert report["mode"] == "all" and report["rows"] == 30
    else:
        assert report["mode"] == "changed"
    assert table.frame["item_events_1d"].tolist()[:3] == [5.0, 5.0, 1.0]


@pytest.mark.unit
def test_request_features_count_a_user_without_a_row_as_no_activity() -> None:
    candidates = [("a", 0.9, "als"), ("b", 0.8, "popular"), ("c", 0.7, "als"), ("d", 0.1, "item2item")]
    row = {
        "user_events_1d": 2.0,
        "user_events_7d": 5.0,
        "user_events_30d": float("nan"),
        "user_weight_30d": 7.5,
        "user_recent_items": np.array(["x", "y", "z"]),
    }
    known = request_features(row, True, candidates)
    assert tuple(known) == REQUEST_FEATURES
    assert known == {
        "user_events_1d": 2.0,
        "user_events_7d": 5.0,
        "user_events_30d": 0.0,
        "user_weight_30d": 7.5,
        "user_recent_count": 3.0,
        "known_user": 1.0,
        "candidates_als": 2.0,
        "candidates_item2item": 1.0,
        "candidates_popular": 1.0,
    }
    cold = request_features(None, False, [("b", 0.8, "popular")])
    assert cold["known_user"] == 0.0 and cold["user_recent_count"] == 0.0 and cold["candidates_popular"] == 1.0
    assert sum(cold[name] for name in ("user_events_1d", "user_events_7d", "user_events_30d")) == 0.0


@pytest.mark.unit
def test_the_logged_score_is_the_rankers_score_of_the_first_item_shown() -> None:
    ranked = [("a", 2.0, "als"), ("b", 1.5, "popular"), ("c", 1.0, "als")]
    assert top_score(ranked, [("b", 1.7, "popular"), ("a", 2.0, "als")]) == 1.5  # boosted b leads: its rank score
    assert top_score(ranked, []) == 0.0
