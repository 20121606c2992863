"""The whole monitoring loop on small data: a shift injected into the fraud stream → the monitor's windows on Kafka →
an alert on `monitoring.alerts` → the retraining loop → a challenger in the registry → the gate → a decision in the
audit trail. Everything real: an embedded broker of its own, MLflow on SQLite, the streaming feature engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines.fraud.scenario_specs import WorldConfig
from pipelines.monitoring.scenarios import run_scenario
from pipelines.settings import Settings


@pytest.mark.e2e
def test_a_covariate_shift_is_detected_and_answered_by_one_audited_retrain_that_is_rejected(
    settings: Settings,
) -> None:
    """The shift moves inputs the champion already handles: the retrained challenger is no better on the holdout,
    so the gate keeps the champion (a loop that promotes on every alert would fail here)."""
    from pipelines.fraud.model import MODEL_NAME
    from pipelines.platform.registry import connect_mlflow, history

    world = WorldConfig(seed=11, size=500, history_days=50)
    result = run_scenario(settings, "fraud", "covariate-shift", world, window_size=500)

    detection = result["detection"]
    assert detection["detected"] and detection["kind"] in ("data_drift", "prediction_drift")
    assert detection["delay_windows"] <= 2
    retrains = result["retraining"]["retrains"]
    assert len(retrains) == 1, "one incident, one retrain: later alerts join it"
    assert result["retraining"]["alerts"]["join"] >= 1
    retrain = retrains[0]
    assert not retrain["failed"], retrain["decision"]
    assert retrain["gate"]["challenger_version"] == retrain["challenger_version"] != "1"
    assert retrain["data"]["train_rows"] > 0 and retrain["seconds"]["total"] > 0

    # The run's own registry holds the chain, oldest first: retrain → register challenger → promote or reject.
    run_registry = Settings(
        home=settings.home,
        mlflow_tracking_uri=f"sqlite:///{settings.home.resolve() / 'drift-tests' / 'covariate-shift' / 'mlflow.db'}",
    )
    connect_mlflow(run_registry)
    actions = [r.action for r in reversed(history(MODEL_NAME, limit=None))]
    assert actions[-3:-1] == ["retrain", "register"]
    assert actions[-1] == "reject" and not retrain["promoted"]
    gate = retrain["gate"]
    assert gate["passed"] is False and gate["improvement"] < gate["min_improvement"], gate

    saved = json.loads(Path(result["json"]).read_text())
    assert saved["summary"] == result["summary"] and Path(result["plot"]).stat().st_size > 0
