"""Registry lifecycle on a real MLflow (SQLite backend): aliases, audit trail, history, rollback, gated promotion."""

from __future__ import annotations

import json
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from pipelines.fraud.model import MODEL_NAME as FRAUD_MODEL
from pipelines.monitoring.gate import GateResult, decide, explain, promote
from pipelines.platform.design import GateError, Holdout
from pipelines.platform.errors import InvalidInput
from pipelines.platform.registry import (
    AUDIT_EXPERIMENT,
    CHALLENGER,
    CHAMPION,
    RegistryError,
    alias_version,
    champion_stack,
    connect_mlflow,
    history,
    list_versions,
    register_version,
    rollback,
)
from pipelines.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A migrated MLflow database holding one small logged XGBoost model, copied for each test (cheap isolation)."""
    import mlflow
    import mlflow.xgboost
    import xgboost

    home = tmp_path_factory.mktemp("registry-template")
    connect_mlflow(Settings(home=home, mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}"))
    rng = np.random.default_rng(3)
    features = rng.normal(size=(200, 3)).astype(np.float32)
    model = xgboost.XGBClassifier(n_estimators=5, max_depth=2).fit(features, (features[:, 0] > 0).astype(int))
    experiment = mlflow.create_experiment("tiny", (home / "artifacts").as_uri())
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.xgboost.log_model(model, name="model", model_format="ubj", pip_requirements=["xgboost"])
    return home / "mlflow.db", info.model_uri


@pytest.fixture
def model_uri(settings: Settings, template: tuple[Path, str]) -> str:
    """This test's own registry (a copy of the template database); every test registers versions of one model."""
    database, uri = template
    shutil.copyfile(database, settings.home / "mlflow.db")
    connect_mlflow(settings)
    return uri


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


def test_versions_are_listed_newest_first_with_their_aliases_and_tags(settings: Settings, model_uri: str) -> None:
    first = register_version(model_uri, FRAUD_MODEL, CHAMPION, tags={"threshold": "0.4"})
    second = register_version(model_uri, FRAUD_MODEL, CHALLENGER, tags={"threshold": "0.6"})
    third = register_version(model_uri, FRAUD_MODEL, None)

    versions = list_versions(FRAUD_MODEL)
    assert [v.version for v in versions] == [third, second, first] == ["3", "2", "1"]
    assert [v.aliases for v in versions] == [(), (CHALLENGER,), (CHAMPION,)]
    assert versions[1].tags == {"threshold": "0.6"}
    assert all(v.run_id and v.created.tzinfo is not None for v in versions)
    with pytest.raises(RegistryError, match="No registered model is called 'nothing-here'"):
        list_versions("nothing-here")


def test_every_registration_with_an_alias_is_an_audit_run_in_mlflow(settings: Settings, model_uri: str) -> None:
    from mlflow import MlflowClient

    register_version(model_uri, FRAUD_MODEL, CHAMPION, reason="first training", metrics={"validation_ap": 0.61})
    register_version(model_uri, FRAUD_MODEL, None)  # no alias moved: nothing to audit
    register_version(model_uri, FRAUD_MODEL, CHAMPION, reason="second training")

    records = history(FRAUD_MODEL)
    assert [(r.action, r.alias, r.from_version, r.to_version, r.reason) for r in records] == [
        ("register", CHAMPION, "1", "3", "second training"),
        ("register", CHAMPION, None, "1", "first training"),
    ]
    assert records[1].metrics == {"validation_ap": pytest.approx(0.61)}
    assert records[0].at > records[1].at
    assert "@" in records[0].user
    assert records[0].command.startswith(Path(sys.argv[0]).name)

    # The trail is plain MLflow: one run per change in the `registry-audit` experiment, in the registry's backend.
    client = MlflowClient()
    experiment = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert {run.info.run_id for run in runs} == {r.run_id for r in records}
    run = client.get_run(records[1].run_id)
    assert run.data.tags["action"] == "register" and run.data.tags["to_version"] == "1"
    assert run.data.metrics == {"validation_ap": pytest.approx(0.61)}


def test_history_is_newest_first_and_limited(settings: Settings, model_uri: str) -> None:
    for _ in range(4):
        register_version(model_uri, FRAUD_MODEL, CHAMPION)
    register_version(model_uri, FRAUD_MODEL, CHALLENGER)
    register_version(model_uri, "recsys-ranker", CHAMPION)  # another model's trail stays apart

    records = history(FRAUD_MODEL)
    assert [r.to_version for r in records] == ["5", "4", "3", "2", "1"]
    assert [r.at for r in records] == sorted((r.at for r in records), reverse=True)
    assert [r.to_version for r in history(FRAUD_MODEL, limit=2)] == ["5", "4"]
    assert [r.to_version for r in history(FRAUD_MODEL, alias=CHALLENGER)] == ["5"]
    assert [r.model for r in history("recsys-ranker")] == ["recsys-ranker"]


def test_rollback_walks_back_through_earlier_champions(settings: Settings, model_uri: str) -> None:
    for _ in range(3):
        register_version(model_uri, FRAUD_MODEL, CHAMPION)
    assert champion_stack(FRAUD_MODEL) == ["1", "2", "3"]

    first = rollback(FRAUD_MODEL, "v3 declines too many good payments")
    assert (first.action, first.from_version, first.to_version) == ("rollback", "3", "2")
    assert alias_version(FRAUD_MODEL, CHAMPION) == "2"
    second = rollback(FRAUD_MODEL)
    assert (second.from_version, second.to_version) == ("2", "1")
    assert alias_version(FRAUD_MODEL, CHAMPION) == "1"
    with pytest.raises(RegistryError, match="no earlier champion than v1"):
        rollback(FRAUD_MODEL)
    assert alias_version(FRAUD_MODEL, CHAMPION) == "1"

    # A new champion after rollbacks: rolling it back returns to the one it replaced, not to a popped one.
    register_version(model_uri, FRAUD_MODEL, CHAMPION)
    assert rollback(FRAUD_MODEL).to_version == "1"
    records = history(FRAUD_MODEL)
    assert [r.action for r in records] == ["rollback", "register", "rollback", "rollback", *["register"] * 3]
    assert records[3].reason == "v3 declines too many good payments"


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


# ---------------------------------------------------------------- the commands


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
