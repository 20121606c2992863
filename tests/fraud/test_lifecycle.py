"""The fraud design in the model lifecycle (pipelines/fraud/lifecycle.py): the retraining loop's fresh data."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from pipelines.fraud.events import LABELS_TOPIC, TRANSACTIONS_TOPIC
from pipelines.fraud.lifecycle import fresh_data
from pipelines.platform.design import RetrainInputs
from pipelines.platform.stream import encode, make_producer
from pipelines.settings import Settings

T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.mark.integration
def test_fresh_fraud_data_joins_history_and_stream_with_only_the_chargebacks_known_at_the_alert(
    kafka_settings: Settings,
) -> None:
    # The session's broker is shared: other tests' transactions are on the topic too, so only these ids are read.
    history = pd.DataFrame(
        {
            "transaction_id": ["h1", "h2"],
            "timestamp": pd.to_datetime([T0 - timedelta(days=3), T0 - timedelta(days=2)], utc=True),
            "customer_id": ["c1", "c2"],
            "terminal_id": ["t1", "t2"],
            "amount": [10.0, 20.0],
            "is_fraud": [0, 1],
            "label_timestamp": pd.to_datetime([T0 + timedelta(days=4), T0 + timedelta(days=1)], utc=True),
        }
    )
    tag = datetime.now(UTC).strftime("%H%M%S%f")
    producer = make_producer(kafka_settings)
    streamed = [
        (f"s1-{tag}", T0 + timedelta(hours=1)),
        (f"s2-{tag}", T0 + timedelta(hours=2)),
        (f"s3-{tag}", T0 + timedelta(days=3)),
    ]
    for tx_id, moment in streamed:
        producer.send(
            TRANSACTIONS_TOPIC,
            encode(
                {
                    "transaction_id": tx_id,
                    "timestamp": moment.isoformat(),
                    "customer_id": "c9",
                    "terminal_id": "t9",
                    "amount": 5.0,
                }
            ),
        )
    for tx_id, moment, label_time in (
        (f"s1-{tag}", T0 + timedelta(hours=1), T0 + timedelta(hours=20)),  # known by the alert
        (f"s2-{tag}", T0 + timedelta(hours=2), T0 + timedelta(days=2)),  # arrives after the alert
    ):
        producer.send(
            LABELS_TOPIC,
            encode(
                {
                    "transaction_id": tx_id,
                    "customer_id": "c9",
                    "terminal_id": "t9",
                    "timestamp": moment.isoformat(),
                    "label_timestamp": label_time.isoformat(),
                    "is_fraud": 1,
                }
            ),
        )
    producer.flush()
    producer.close()

    data = fresh_data(kafka_settings, RetrainInputs(history=history), as_of=T0 + timedelta(days=1))
    mine = data[data["transaction_id"].isin(["h1", "h2", f"s1-{tag}", f"s2-{tag}", f"s3-{tag}"])].set_index(
        "transaction_id"
    )
    assert list(mine.index) == ["h1", "h2", f"s1-{tag}", f"s2-{tag}"]  # s3 happened after the alert
    assert mine.loc[f"s1-{tag}", "is_fraud"] == 1
    assert mine.loc[f"s2-{tag}", "is_fraud"] == 0  # its chargeback was not known yet
    assert mine.loc[f"s2-{tag}", "label_timestamp"] == pd.Timestamp(T0 + timedelta(hours=2 + 24 * 7))
    assert mine.loc["h2", "is_fraud"] == 1  # the history keeps its labels (training reads them by label time)
    assert data["timestamp"].is_monotonic_increasing
