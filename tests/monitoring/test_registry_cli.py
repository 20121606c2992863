"""Gated promotion on a real MLflow (pipelines/monitoring/gate.py `promote`) and the `mlsd registry` commands
(pipelines/monitoring/registry_cli.py)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime

import pytest

from pipelines.fraud.model import MODEL_NAME as FRAUD_MODEL
from pipelines.monitoring.gate import GateResult, decide, explain, promote
from pipelines.platform.design import GateError, Holdout
from pipelines.platform.errors import InvalidInput
from pipelines.platform.registry import (
    CHALLENGER,
    CHAMPION,
    RegistryError,
    alias_version,
    champion_stack,
    history,
    register_version,
    rollback,
)
from pipelines.settings import Settings

pytestmark = pytest.mark.integration


def gate_result(champion: str | None, challenger: str, values: tuple[float | None, float], bar: float) -> GateResult:
    """A gate outcome decided by the real rule from two metric values (the gate's evaluation is in test_gate)."""
    holdout = Holdout(
        rows=1000,
        start=datetime(2026, 1, 1, tzinfo=UTC),
        end=datetime(2026, 1, 8, tzinfo=UTC),
        unit="transactions",
        entities=300,
        entity_unit="cards",
    )
    passed, improvement = decide(values[0], values[1], bar)
    reason = explain(FRAUD_MODEL, "average_precision", champion, challenger, *values, improvement, bar, passed, holdout)
    return GateResult(
        model=FRAUD_MODEL,
        metric="average_precision",
        champion_version=champion,
        challenger_version=challenger,
        champion_value=values[0],
        challenger_value=values[1],
        improvement=improvement,
        min_improvement=bar,
        passed=passed,
        holdout=holdout,
        reason=reason,
        champion_metrics={"average_precision": values[0]} if values[0] is not None else {},
        challenger_metrics={"average_precision": values[1]},
    )


def test_a_passing_gate_promotes_the_challenger_and_records_both_numbers(settings: Settings, model_uri: str) -> None:
    register_version(model_uri, FRAUD_MODEL, CHAMPION)
    register_version(model_uri, FRAUD_MODEL, CHALLENGER)

    outcome = promote(settings, FRAUD_MODEL, gate=lambda: gate_result("1", "2", (0.700, 0.710), 0.005))
    assert outcome.promoted
    assert (alias_version(FRAUD_MODEL, CHAMPION), alias_version(FRAUD_MODEL, CHALLENGER)) == ("2", None)
    record = history(FRAUD_MODEL, limit=1)[0]
    assert (record.action, record.from_version, record.to_version) == ("promote", "1", "2")
    assert record.metrics["champion_average_precision"] == pytest.approx(0.700)
    assert record.metrics["challenger_average_precision"] == pytest.approx(0.710)
    assert record.metrics["improvement"] == pytest.approx(0.010)
    assert record.metrics["min_improvement"] == pytest.approx(0.005)
    assert record.details["metric"] == "average_precision"
    assert "passes" in record.reason and "0.7000 → 0.7100" in record.reason
    # The promotion is a champion change like any other: a rollback undoes it.
    assert rollback(FRAUD_MODEL).to_version == "1"


def test_a_failing_gate_keeps_the_champion_and_records_a_rejection(settings: Settings, model_uri: str) -> None:
    register_version(model_uri, FRAUD_MODEL, CHAMPION)
    register_version(model_uri, FRAUD_MODEL, CHALLENGER)

    outcome = promote(
        settings,
        FRAUD_MODEL,
        gate=lambda: gate_result("1", "2", (0.700, 0.703), 0.005),
        reason="weekly retrain",
    )
    assert not outcome.promoted
    assert (alias_version(FRAUD_MODEL, CHAMPION), alias_version(FRAUD_MODEL, CHALLENGER)) == ("1", "2")
    record = history(FRAUD_MODEL, limit=1)[0]
    assert (record.action, record.alias, record.from_version, record.to_version) == ("reject", CHAMPION, "1", "2")
    assert record.reason == "weekly retrain"
    assert "is rejected and champion v1 stays" in record.details["gate"]
    assert record.metrics["improvement"] == pytest.approx(0.003)
    # A rejection is not a champion change: nothing to roll back to.
    assert champion_stack(FRAUD_MODEL) == ["1"]


def test_force_skips_the_gate_but_is_audited_as_forced(settings: Settings, model_uri: str) -> None:
    register_version(model_uri, FRAUD_MODEL, CHAMPION)
    register_version(model_uri, FRAUD_MODEL, CHALLENGER)

    outcome = promote(settings, FRAUD_MODEL, force=True, reason="hotfix for a broken feature")
    assert outcome.promoted and outcome.gate is None
    assert alias_version(FRAUD_MODEL, CHAMPION) == "2"
    record = history(FRAUD_MODEL, limit=1)[0]
    assert (record.action, record.reason) == ("promote", "forced: hotfix for a broken feature")
    assert record.metrics == {}


def test_the_first_challenger_passes_when_there_is_no_champion(settings: Settings, model_uri: str) -> None:
    register_version(model_uri, FRAUD_MODEL, CHALLENGER)
    outcome = promote(settings, FRAUD_MODEL, gate=lambda: gate_result(None, "1", (None, 0.42), 0.005))
    assert outcome.promoted
    assert (outcome.record.from_version, outcome.record.to_version) == (None, "1")
    assert "no champion yet" in outcome.record.reason


def test_mistakes_end_in_one_sentence(settings: Settings, model_uri: str) -> None:
    register_version(model_uri, FRAUD_MODEL, CHAMPION)
    with pytest.raises(GateError, match="has no challenger to promote; register one with `mlsd fraud train"):
        promote(settings, "fraud", force=True)
    register_version(model_uri, FRAUD_MODEL, CHALLENGER)
    with pytest.raises(GateError, match="promote needs --data PATH"):
        promote(settings, "fraud")
    with pytest.raises(InvalidInput, match="'churn' is not a design or a registered model of one"):
        promote(settings, "churn", force=True)
    with pytest.raises(RegistryError, match="no earlier champion"):
        rollback(FRAUD_MODEL)
    with pytest.raises(RegistryError, match="not a valid model name"):
        history("x' or '1'='1")


def run_mlsd(monkeypatch: pytest.MonkeyPatch, settings: Settings, *args: str) -> int:
    """`main()` as the console script calls it, on this test's MLflow; returns the exit code."""
    from pipelines.cli import main

    monkeypatch.setenv("MLSD_HOME", str(settings.home))
    monkeypatch.setenv("MLSD_MLFLOW_TRACKING_URI", settings.tracking_uri)
    monkeypatch.setattr(sys, "argv", ["mlsd", *args])
    try:
        main()
    except SystemExit as stopped:
        return int(stopped.code or 0)
    return 0


def test_the_registry_commands_list_history_rollback_and_promote(
    settings: Settings, model_uri: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    register_version(model_uri, FRAUD_MODEL, CHAMPION, tags={"strategy": "class_weight"})
    register_version(model_uri, FRAUD_MODEL, CHAMPION)
    register_version(model_uri, FRAUD_MODEL, CHALLENGER)
    capsys.readouterr()

    assert run_mlsd(monkeypatch, settings, "registry", "list", "--model", "fraud", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(v["version"], v["aliases"]) for v in listed] == [("3", [CHALLENGER]), ("2", [CHAMPION]), ("1", [])]

    assert run_mlsd(monkeypatch, settings, "registry", "list", "--model", "fraud-xgboost") == 0
    table = capsys.readouterr().out
    assert "strategy=class_weight" in table and "challenger" in table

    assert run_mlsd(monkeypatch, settings, "registry", "rollback", "--model", "fraud", "--reason", "bad canary") == 0
    assert "champion v2 → v1" in capsys.readouterr().out

    assert run_mlsd(monkeypatch, settings, "registry", "promote", "--model", "fraud", "--force", "--json") == 0
    promoted = json.loads(capsys.readouterr().out)
    assert promoted["promoted"] and promoted["record"]["to_version"] == "3" and promoted["gate"] is None

    assert run_mlsd(monkeypatch, settings, "registry", "history", "--model", "fraud", "--limit", "2", "--json") == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["action"], r["from_version"], r["to_version"]) for r in records] == [
        ("promote", "1", "3"),
        ("rollback", "2", "1"),
    ]
    assert records[0]["command"] == "mlsd registry promote --model fraud --force --json"
    assert records[1]["reason"] == "bad canary"
    assert records[1]["command"] == "mlsd registry rollback --model fraud --reason 'bad canary'"

    assert run_mlsd(monkeypatch, settings, "registry", "history", "--model", "fraud") == 0
    assert "rollback" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("registry", "list", "--model", "churn-model"), "No registered model is called 'churn-model'"),
        (("registry", "promote", "--model", "fraud"), "promote needs --data PATH"),
        (("registry", "promote", "--model", "fraud", "--data", "missing.parquet"), "missing.parquet"),
        (("registry", "rollback", "--model", "fraud"), "no earlier champion than v1"),
    ],
    ids=["unknown model", "no data", "missing file", "nothing to roll back"],
)
def test_command_errors_are_one_sentence(
    settings: Settings,
    model_uri: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    words: str,
) -> None:
    register_version(model_uri, FRAUD_MODEL, CHAMPION)
    register_version(model_uri, FRAUD_MODEL, CHALLENGER)
    monkeypatch.chdir(settings.home)
    capsys.readouterr()
    assert run_mlsd(monkeypatch, settings, *args) == 1
    out, err = capsys.readouterr()
    message = " ".join(err.split())
    assert message.startswith("error: ") and words in message
    assert message.endswith(".") and ". " not in message, message
    assert "Traceback" not in out + err
