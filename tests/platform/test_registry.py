"""The registry on a real MLflow (SQLite backend): versions, aliases, the audit trail, history, rollback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipelines.fraud.model import MODEL_NAME as FRAUD_MODEL
from pipelines.platform.registry import (
    AUDIT_EXPERIMENT,
    CHALLENGER,
    CHAMPION,
    RegistryError,
    alias_version,
    champion_stack,
    history,
    list_versions,
    register_version,
    rollback,
)
from pipelines.settings import Settings

pytestmark = pytest.mark.integration


def test_versions_are_listed_newest_first_with_their_aliases_and_tags(
    settings: Settings, model_uri: str, capfd: pytest.CaptureFixture[str]
) -> None:
    first = register_version(model_uri, FRAUD_MODEL, CHAMPION, tags={"threshold": "0.4"})
    assert capfd.readouterr().err == ""  # registering prints nothing (MLflow's fluent API would)
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


def test_only_register_promote_and_rollback_approve_a_version_and_a_bare_alias_move_does_not(
    settings: Settings, model_uri: str
) -> None:
    from mlflow import MlflowClient

    from pipelines.platform.registry import approved_version, check_servable, promote_version, record_rejection

    assert approved_version(FRAUD_MODEL, CHAMPION) is None  # nothing audited yet
    register_version(model_uri, FRAUD_MODEL, CHAMPION)  # v1
    register_version(model_uri, FRAUD_MODEL, CHALLENGER)  # v2
    assert (approved_version(FRAUD_MODEL, CHAMPION), approved_version(FRAUD_MODEL, CHALLENGER)) == ("1", "2")
    for _ in range(3):
        record_rejection(FRAUD_MODEL, "2", "worse on the holdout")  # names v2, approves nothing
    assert approved_version(FRAUD_MODEL, CHAMPION) == "1"
    promote_version(FRAUD_MODEL, "2", "better on the holdout")
    assert approved_version(FRAUD_MODEL, CHAMPION) == "2"
    rollback(FRAUD_MODEL)
    assert approved_version(FRAUD_MODEL, CHAMPION) == "1"
    register_version(model_uri, FRAUD_MODEL, None)  # v3, no alias
    MlflowClient().set_registered_model_alias(FRAUD_MODEL, CHAMPION, "3")  # outside the registry module
    assert alias_version(FRAUD_MODEL, CHAMPION) == "3" and approved_version(FRAUD_MODEL, CHAMPION) == "1"
    assert check_servable(settings, FRAUD_MODEL, "train") is None  # an approved champion exists (v1)


def test_a_service_refuses_to_start_on_a_champion_never_set_through_the_registry(
    settings: Settings, model_uri: str
) -> None:
    from mlflow import MlflowClient

    from pipelines.platform.errors import ServiceUnavailable
    from pipelines.platform.registry import check_servable

    register_version(model_uri, FRAUD_MODEL, None)
    MlflowClient().set_registered_model_alias(FRAUD_MODEL, CHAMPION, "1")
    with pytest.raises(ServiceUnavailable, match="was never set by training, the gate or a rollback"):
        check_servable(settings, FRAUD_MODEL, "`mlsd fraud train`")
    away = settings.model_copy(update={"mlflow_tracking_uri": "http://127.0.0.1:9"})  # nothing listens there
    warning = check_servable(away, FRAUD_MODEL, "`mlsd fraud train`")
    assert warning is not None and "not reachable" in warning and "starts anyway" in warning
