"""The retraining loop (pipelines/monitoring/retrain.py): which alerts retrain, and fresh data cut at the alert's
stream time; plus the monitor's label-shift test it acts on. The whole loop: tests/e2e/test_monitoring_loop.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from pipelines.fraud.events import LABELS_TOPIC, TRANSACTIONS_TOPIC
from pipelines.monitoring.monitor import Alert, label_shift
from pipelines.monitoring.retrain import (
    LastRetrain,
    RetrainPolicy,
    fraud_fresh_data,
    incident_id,
    judge_alert,
)
from pipelines.platform.stream import encode, make_producer
from pipelines.settings import Settings

T0 = datetime(2026, 3, 1, tzinfo=UTC)
POLICY = RetrainPolicy(
    frozenset({"data_drift", "prediction_drift", "performance_decay", "label_shift"}), pd.Timedelta(days=7)
)


def alert(kind: str = "data_drift", window: int = 3, hours: float = 0, version: str | None = "1") -> Alert:
    moment = T0 + timedelta(hours=hours)
    return Alert(
        design="fraud",
        window=window,
        kind=kind,  # type: ignore[arg-type]
        scores={},
        model_version=version,
        event_time_start=moment - timedelta(hours=6),
        event_time_end=moment,
        message=f"{kind} in window {window}",
        detected_at=datetime.now(UTC),
        stream_time=moment,
    )


@pytest.mark.unit
def test_a_drift_alert_with_no_open_incident_retrains() -> None:
    judgement = judge_alert(POLICY, alert(), None, "1")
    assert judgement.verdict == "retrain"
    assert "window 3" in judgement.reason


@pytest.mark.unit
def test_alerts_within_the_cooldown_join_the_open_incident_and_later_ones_open_a_new_one() -> None:
    last = LastRetrain(incident_id(alert()), T0, datetime.now(UTC))
    assert judge_alert(POLICY, alert(window=4, hours=12), last, "1").verdict == "join"
    assert judge_alert(POLICY, alert(window=2, hours=-12), last, "1").verdict == "join"  # a re-published old alert
    assert judge_alert(POLICY, alert(window=40, hours=24 * 8), last, "1").verdict == "retrain"


@pytest.mark.unit
def test_data_quality_never_retrains_and_taints_the_same_windows_drift() -> None:
    assert judge_alert(POLICY, alert("data_quality"), None, "1").verdict == "ignore"
    tainted = judge_alert(POLICY, alert("data_drift", window=5), None, "1", frozenset({5}))
    assert tainted.verdict == "ignore" and "data-quality" in tainted.reason
    assert judge_alert(POLICY, alert("data_drift", window=6), None, "1", frozenset({5})).verdict == "retrain"
    # a model scoring broken inputs decays too, and the window's fraud rate is counted on the broken records
    for kind in ("performance_decay", "label_shift"):
        assert judge_alert(POLICY, alert(kind, window=5), None, "1", frozenset({5})).verdict == "ignore"
    assert judge_alert(POLICY, alert("label_shift", window=6), None, "1", frozenset({5})).verdict == "retrain"


@pytest.mark.unit
def test_alerts_about_a_replaced_champion_or_kinds_left_out_of_the_triggers_are_ignored() -> None:
    stale = judge_alert(POLICY, alert(version="1"), None, "2")
    assert stale.verdict == "ignore" and "no longer the champion" in stale.reason
    only_decay = RetrainPolicy(frozenset({"performance_decay"}), pd.Timedelta(days=7))
    assert judge_alert(only_decay, alert("data_drift"), None, "1").verdict == "ignore"
    assert judge_alert(only_decay, alert("performance_decay"), None, "1").verdict == "retrain"


@pytest.mark.unit
def test_the_policy_refuses_unknown_trigger_names_in_one_sentence() -> None:
    with pytest.raises(ValueError, match="MLSD_RETRAIN_TRIGGERS names unknown alert kind"):
        RetrainPolicy.from_settings(Settings(retrain_triggers=["data_drift", "driftt"]))
    policy = RetrainPolicy.from_settings(Settings(retrain_triggers=["data_quality", "data_drift"]))
    assert policy.triggers == frozenset({"data_drift"})  # data_quality cannot be made a trigger


@pytest.mark.unit
def test_label_shift_needs_both_a_large_ratio_and_a_significant_z() -> None:
    shifted, ratio, z = label_shift(
        positives=240, rows=10_000, reference_rate=0.008, reference_rows=20_000, ratio=1.5, z_min=4
    )
    assert shifted and ratio == pytest.approx(3.0) and z > 4
    # the same rate moved by 25 %: significant with these sizes? not large enough either way
    assert not label_shift(100, 10_000, 0.008, 20_000, 1.5, 4)[0]
    # a tripled rate on a tiny window is noise
    assert not label_shift(3, 125, 0.008, 20_000, 1.5, 4)[0]
    assert label_shift(10, 10_000, 0.008, 20_000, 1.5, 4)[0]  # fraud falling to an eighth is a shift too


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

    data = fraud_fresh_data(kafka_settings, history, as_of=T0 + timedelta(days=1))
    mine = data[data["transaction_id"].isin(["h1", "h2", f"s1-{tag}", f"s2-{tag}", f"s3-{tag}"])].set_index(
        "transaction_id"
    )
    assert list(mine.index) == ["h1", "h2", f"s1-{tag}", f"s2-{tag}"]  # s3 happened after the alert
    assert mine.loc[f"s1-{tag}", "is_fraud"] == 1
    assert mine.loc[f"s2-{tag}", "is_fraud"] == 0  # its chargeback was not known yet
    assert mine.loc[f"s2-{tag}", "label_timestamp"] == pd.Timestamp(T0 + timedelta(hours=2 + 24 * 7))
    assert mine.loc["h2", "is_fraud"] == 1  # the history keeps its labels (training reads them by label time)
    assert data["timestamp"].is_monotonic_increasing
