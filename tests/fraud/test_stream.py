"""The fraud feature processor on the real broker and real Feast stores: online rows equal the batch backfill."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feature_repo.fraud import CUSTOMER_FEATURES, CUSTOMER_VIEW, FEATURE_SERVICE, TERMINAL_FEATURES, TERMINAL_VIEW
from pipelines.designs import feature_definitions
from pipelines.fraud.events import TRANSACTIONS_TOPIC
from pipelines.fraud.features import backfill_features
from pipelines.fraud.stream import SCHEMAS, FraudFeatureSink, replay_events, replay_transactions, warm_engine
from pipelines.platform.features import apply_feature_definitions, latest_per_entity, read_offline, read_online
from pipelines.platform.microbatch import run_micro_batches
from pipelines.platform.stream import make_consumer, make_producer, read_dead_letters
from tests.conftest import group_at_end

pytestmark = pytest.mark.integration


def test_replay_orders_chargebacks_by_the_time_they_become_known(small_transactions):
    events = replay_events(small_transactions.head(5000))
    assert events["at"].is_monotonic_increasing
    labels = events[events["topic"] == "fraud.labels"]
    assert len(labels) == int(small_transactions.head(5000)["is_fraud"].sum())
    assert (labels["at"] == labels["label_timestamp"]).all()


def test_streamed_features_equal_the_batch_backfill_online_and_offline(kafka_settings, small_transactions):
    settings = kafka_settings.model_copy(update={"stream_batch_size": 500})
    frame = small_transactions
    cut = frame["timestamp"].min() + pd.Timedelta(days=30)
    history, live = frame[frame["timestamp"] < cut], frame[frame["timestamp"] >= cut].head(4000)

    store = apply_feature_definitions(settings, feature_definitions())
    sink = FraudFeatureSink(settings, store, warm_engine(history, settings.fraud_label_delay_days))
    group = group_at_end(settings, list(SCHEMAS), "fraud-features")  # other tests' events stay unread
    producer = make_producer(settings)
    replay_transactions(producer, live, rate=0)
    # Malformed events in the middle of the stream: they must be dead-lettered, not stop the processor.
    for bad in (
        b"{oops",
        b'{"transaction_id":"bad1","timestamp":"2026-01-01T00:00:00Z","customer_id":"C1",'
        b'"terminal_id":"M1","amount":-5}',
        b'{"transaction_id":"bad2","customer_id":"C1"}',
    ):
        producer.send(TRANSACTIONS_TOPIC, bad)
    producer.flush()
    consumer = make_consumer(settings, list(SCHEMAS), group)
    stats = run_micro_batches(consumer, producer, SCHEMAS, sink, batch_size=500, idle_stop_s=4)
    consumer.close()

    assert sink.stats.transactions == len(live)
    assert stats.dead_lettered == 3

    customers, terminals = backfill_features(pd.concat([history, live]), settings.fraud_label_delay_days)
    live_ids = set(live["transaction_id"])
    in_live = pd.concat([history, live])["transaction_id"].isin(live_ids).to_numpy()
    expected_customers = latest_per_entity(customers[in_live], "customer_id").set_index("customer_id")
    expected_terminals = latest_per_entity(terminals[in_live], "terminal_id").set_index("terminal_id")

    sample = live.drop_duplicates("customer_id").head(200)
    online = read_online(
        store,
        FEATURE_SERVICE,
        [
            {"customer_id": c, "terminal_id": t}
            for c, t in zip(sample["customer_id"], sample["terminal_id"], strict=True)
        ],
    )
    for feature in CUSTOMER_FEATURES:
        np.testing.assert_allclose(
            online[feature].to_numpy(dtype=float),
            expected_customers.loc[sample["customer_id"], feature].to_numpy(dtype=float),
            rtol=1e-6,
            err_msg=feature,
        )
    for feature in TERMINAL_FEATURES:
        np.testing.assert_allclose(
            online[feature].to_numpy(dtype=float),
            expected_terminals.loc[sample["terminal_id"], feature].to_numpy(dtype=float),
            rtol=1e-6,
            err_msg=feature,
        )

    offline_customers = read_offline(settings, CUSTOMER_VIEW)
    offline_terminals = read_offline(settings, TERMINAL_VIEW)
    assert len(offline_customers) == len(offline_terminals) == len(live)
    np.testing.assert_allclose(
        offline_customers[CUSTOMER_FEATURES].to_numpy(dtype=float),
        customers[in_live][CUSTOMER_FEATURES].to_numpy(dtype=float),
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        offline_terminals[TERMINAL_FEATURES].to_numpy(dtype=float),
        terminals[in_live][TERMINAL_FEATURES].to_numpy(dtype=float),
        rtol=1e-6,
    )

    reasons = [letter.reason for letter in read_dead_letters(settings, TRANSACTIONS_TOPIC)]
    assert "not valid JSON" in reasons
    assert any(r.startswith("amount:") for r in reasons)
    assert any(r.startswith("timestamp:") for r in reasons)


def test_a_redelivered_batch_does_not_count_twice(settings, small_transactions):
    store = apply_feature_definitions(settings, feature_definitions())
    sink = FraudFeatureSink(settings, store, warm_engine(None, settings.fraud_label_delay_days))
    from pipelines.fraud.events import TransactionEvent
    from pipelines.platform.stream import Envelope

    rows = small_transactions.head(50)
    batch = [Envelope(TRANSACTIONS_TOPIC, TransactionEvent(**r), 0) for r in rows.to_dict(orient="records")]
    sink(batch)
    sink(batch)  # at-least-once: the same batch again after a crash before the commit
    assert sink.stats.transactions == 50 and sink.stats.duplicates == 50
    assert len(read_offline(settings, CUSTOMER_VIEW)) == 50
