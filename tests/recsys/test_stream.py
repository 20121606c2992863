"""The recommendation feature processor on the real broker and Feast: online rows equal the batch backfill."""

from __future__ import annotations

import pytest

from feature_repo.recsys import FEATURE_SERVICE, ITEM_VIEW, USER_VIEW
from pipelines.designs import feature_definitions
from pipelines.platform.features import apply_feature_definitions, latest_per_entity, read_offline, read_online
from pipelines.platform.microbatch import run_micro_batches
from pipelines.platform.stream import make_consumer, make_producer
from pipelines.recsys.events import INTERACTIONS_TOPIC
from pipelines.recsys.features import RecsysFeatureEngine, backfill_features
from pipelines.recsys.stream import SCHEMAS, RecsysFeatureSink, replay_interactions, replay_records
from tests.conftest import group_at_end
from tests.recsys.test_features import simulated

pytestmark = pytest.mark.integration


def test_items_are_announced_before_their_first_interaction():
    interactions, items = simulated(2000)
    records = replay_records(interactions, items)
    announced: set[str] = set()
    for topic, _key, value in records:
        if topic != INTERACTIONS_TOPIC:
            announced.add(value.split(b'"item_id":"')[1].split(b'"')[0].decode())
    assert len(announced) == len(items)
    assert len(records) == len(interactions) + len(items)


def test_streamed_user_and_item_features_equal_the_backfill(kafka_settings):
    interactions, items = simulated(3000)
    store = apply_feature_definitions(kafka_settings, feature_definitions())
    sink = RecsysFeatureSink(kafka_settings, store, RecsysFeatureEngine())
    group = group_at_end(kafka_settings, list(SCHEMAS), "recsys-features")  # other tests share these topics
    producer = make_producer(kafka_settings)
    replay_interactions(producer, interactions, items, rate=0)
    producer.send(INTERACTIONS_TOPIC, b'{"user_id":"U1","item_id":"I1","timestamp":"2026-01-02T00:00:00Z","weight":-1}')
    producer.flush()
    consumer = make_consumer(kafka_settings, list(SCHEMAS), group)
    stats = run_micro_batches(consumer, producer, SCHEMAS, sink, batch_size=700, idle_stop_s=4)
    consumer.close()
    assert sink.stats.interactions == len(interactions) and sink.stats.items == len(items)
    assert stats.dead_lettered == 1

    users, item_rows = backfill_features(interactions, items)
    assert len(read_offline(kafka_settings, USER_VIEW)) == len(interactions)
    assert len(read_offline(kafka_settings, ITEM_VIEW)) == len(interactions)
    expected = latest_per_entity(users, "user_id").set_index("user_id")
    expected_items = latest_per_entity(item_rows, "item_id").set_index("item_id")
    sample = expected.head(30)
    online = read_online(store, FEATURE_SERVICE, [{"user_id": u, "item_id": "I1"} for u in sample.index])
    assert [list(v) for v in online["user_recent_items"]] == [list(v) for v in sample["user_recent_items"]]
    assert online["user_events_30d"].tolist() == sample["user_events_30d"].tolist()
    assert (online["item_first_seen_epoch"] == expected_items.loc["I1", "item_first_seen_epoch"]).all()


def test_the_processor_started_with_history_seeds_the_online_store(kafka_settings, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    interactions, items = simulated(2000)
    history, items_path = tmp_path / "history.parquet", tmp_path / "items.parquet"
    interactions.to_parquet(history)
    items.to_parquet(items_path)
    env = {
        **os.environ,
        "MLSD_HOME": str(kafka_settings.home),
        "MLSD_KAFKA_BOOTSTRAP": kafka_settings.kafka_bootstrap,
        "MLSD_MLFLOW_TRACKING_URI": kafka_settings.mlflow_tracking_uri,
    }
    group = group_at_end(kafka_settings, list(SCHEMAS), "seed")  # other tests' events would move the rows
    mlsd = Path(sys.executable).parent / "mlsd"
    args = ["recsys", "stream", "--history", str(history), "--items", str(items_path), "--idle-stop", "2"]
    done = subprocess.run([str(mlsd), *args, "--group", group], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr

    users, _ = backfill_features(interactions, items)
    expected = latest_per_entity(users, "user_id").set_index("user_id").tail(20)
    store = apply_feature_definitions(kafka_settings, feature_definitions())
    online = read_online(store, FEATURE_SERVICE, [{"user_id": u, "item_id": "I1"} for u in expected.index])
    assert online["user_events_30d"].tolist() == expected["user_events_30d"].tolist()
    assert [list(v) for v in online["user_recent_items"]] == [list(v) for v in expected["user_recent_items"]]


def _stateful_run(settings, store, state, group, max_events=None):
    """One processor run with checkpoints, as `mlsd recsys stream` runs it (a fresh engine each time)."""
    from kafka import ConsumerRebalanceListener

    from pipelines.platform.microbatch import LoopConfig, MicroBatchLoop
    from pipelines.recsys.features import engine_for_catalogue

    holder = {}

    class Rebalance(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            holder["loop"].revoked(list(revoked))

        def on_partitions_assigned(self, assigned):
            holder["loop"].assigned(list(assigned))

    sink = RecsysFeatureSink(settings, store, engine_for_catalogue(None))
    consumer = make_consumer(settings, list(SCHEMAS), group, listener=Rebalance())
    producer = make_producer(settings)
    config = LoopConfig(batch_size=500, idle_stop_s=4, max_events=max_events)
    loop = holder["loop"] = MicroBatchLoop(consumer, producer, SCHEMAS, sink, config, store=state)
    loop.run()
    consumer.close()
    producer.close()
    return sink


def test_a_restarted_processor_resumes_from_its_checkpoint_and_counts_a_redelivery_once(kafka_settings, tmp_path):
    from pipelines.platform.state import StateStore

    interactions, items = simulated(2000)
    store = apply_feature_definitions(kafka_settings, feature_definitions())
    state = StateStore(f"sqlite:///{tmp_path / 'state.db'}", "recsys-restart")
    group = group_at_end(kafka_settings, list(SCHEMAS), "recsys-restart")
    producer = make_producer(kafka_settings)
    replay_interactions(producer, interactions, items, rate=0)
    first = _stateful_run(kafka_settings, store, state, group, max_events=1200)  # stops part-way: a restart
    replay_interactions(producer, interactions.head(300), None, rate=0)  # delivered again, with the same ids
    producer.close()
    second = _stateful_run(kafka_settings, store, state, group)

    assert first.stats.interactions + second.stats.interactions == len(interactions)
    assert second.stats.duplicates == 300
    users, item_rows = backfill_features(interactions, items)
    expected = latest_per_entity(users, "user_id").set_index("user_id")
    online = read_online(store, FEATURE_SERVICE, [{"user_id": u, "item_id": "I1"} for u in expected.index])
    assert online["user_events_30d"].tolist() == expected["user_events_30d"].tolist()
    assert [list(v) for v in online["user_recent_items"]] == [list(v) for v in expected["user_recent_items"]]
    assert len(read_offline(kafka_settings, USER_VIEW)) == len(interactions)
