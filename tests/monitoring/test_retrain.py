"""The retraining loop (pipelines/monitoring/retrain.py): which alerts retrain. Fresh data per design:
tests/<design>/test_lifecycle.py; the whole loop: tests/e2e/test_monitoring_loop.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from pipelines.monitoring.alerts import Alert
from pipelines.monitoring.retrain import LastRetrain, RetrainPolicy, incident_id, judge_alert
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
