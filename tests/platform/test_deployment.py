"""Deployment patterns (pipelines/platform/deployment.py, watcher.py, predictions.py): canary routing, hot reload,
only gate-approved versions served, shadow scoring, the prediction log; the watcher on a real MLflow registry."""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from types import SimpleNamespace
from typing import Any

import pytest

from pipelines.fraud.events import PREDICTIONS_TOPIC as FRAUD_PREDICTIONS_TOPIC
from pipelines.platform.deployment import (
    CANARY,
    CHAMPION_ONLY,
    SHADOWED,
    Deployment,
    DeploymentMetrics,
    ShadowRunner,
    TrafficRouter,
)
from pipelines.platform.errors import ServiceUnavailable
from pipelines.platform.predictions import PredictionLogger, PredictionRecord
from pipelines.platform.watcher import ModelSlots, ModelWatcher, ServingModel
from pipelines.settings import Settings
from tests.factories import T0, PickleWatch, record
from tests.fraud.registered_models import wait_for


@pytest.mark.unit
def test_canary_routing_is_deterministic_per_key_and_depends_on_the_seed() -> None:
    keys = [f"C{i}" for i in range(2000)]
    first = [TrafficRouter("canary", 0.3, seed=7).assign(k, True) for k in keys]
    again = [TrafficRouter("canary", 0.3, seed=7).assign(k, True) for k in keys]
    other_seed = [TrafficRouter("canary", 0.3, seed=8).assign(k, True) for k in keys]
    assert first == again
    assert first != other_seed
    assert set(first) == {CANARY, CHAMPION_ONLY}


@pytest.mark.unit
@pytest.mark.parametrize("share", [0.0, 0.05, 0.1, 0.5, 1.0])
def test_the_canary_gets_its_share_of_keys(share: float) -> None:
    router = TrafficRouter("canary", share, seed=3)
    served = [router.assign(f"customer-{i}", True).served for i in range(20_000)]
    observed = served.count("challenger") / len(served)
    assert observed == pytest.approx(share, abs=0.01)


@pytest.mark.unit
def test_the_mode_decides_who_answers_and_a_missing_challenger_means_champion_only() -> None:
    assert TrafficRouter("off").assign("k", True) == CHAMPION_ONLY
    assert TrafficRouter("shadow").assign("k", True) == SHADOWED
    assert TrafficRouter("shadow").assign("k", False) == CHAMPION_ONLY
    assert TrafficRouter("canary", 1.0).assign("k", True) == CANARY
    assert TrafficRouter("canary", 1.0).assign("k", False) == CHAMPION_ONLY
    with pytest.raises(ValueError, match="serving mode"):
        TrafficRouter("blue-green")
    with pytest.raises(ValueError, match="between 0 and 1"):
        TrafficRouter("canary", 1.5)


class FakeRegistry:
    """Alias → version, and a loader that fails for the versions listed in `broken`."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.approved: dict[str, str] = {}  # what the audit trail says each alias was moved to
        self.broken: set[str] = set()
        self.loads = 0
        self.down = False

    def version_of(self, _name: str, alias: str) -> str | None:
        if self.down:
            raise ConnectionError("registry down")
        return self.aliases.get(alias)

    def approved_of(self, _name: str, alias: str) -> str | None:
        if self.down:
            raise ConnectionError("registry down")
        return self.approved.get(alias)

    def watcher(self, slots: ModelSlots[str], now: list[float] | None = None) -> ModelWatcher[str]:
        """A watcher of both aliases on this registry (clock `now[0]` when given)."""
        clock = (lambda: now[0]) if now is not None else time.monotonic
        return ModelWatcher(
            "m",
            slots,
            self.load,
            ("champion", "challenger"),
            5.0,
            self.version_of,
            60.0,
            clock,
            approved_of=self.approved_of,
        )

    def move(self, **aliases: str) -> None:
        """Move aliases the way the gate does: the audit trail records each move."""
        self.aliases.update(aliases)
        self.approved.update(aliases)

    def load(self, version: str) -> ServingModel[str]:
        self.loads += 1
        if version in self.broken:
            raise ValueError(f"version {version} is broken\nsecond line of detail")
        return ServingModel("m", version, f"model-{version}")


@pytest.mark.unit
def test_the_watcher_swaps_a_moved_alias_and_keeps_the_old_model_when_a_load_fails(caplog) -> None:
    registry = FakeRegistry()
    registry.move(champion="1")
    slots: ModelSlots[str] = ModelSlots()
    now = [0.0]
    watcher = registry.watcher(slots, now)
    assert [m.version for m in watcher.check()] == ["1"]
    assert watcher.check() == []  # nothing moved: no load at all
    assert registry.loads == 1

    registry.move(champion="2", challenger="3")
    watcher.check()
    assert (slots.champion.version, slots.challenger.version) == ("2", "3")  # type: ignore[union-attr]

    registry.move(champion="4")
    registry.broken.add("4")
    with caplog.at_level(logging.WARNING, logger="mlsd.deployment"):
        for _ in range(3):
            watcher.check()
            now[0] += 10
    assert slots.champion.version == "2"  # type: ignore[union-attr]
    assert registry.loads == 3 + 1  # a failed version is not retried every round
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "v4 did not load, still serving v2" in lines[0] and "\n" not in lines[0]

    now[0] += 60  # retried after retry_failed_s, and it works now
    registry.broken.clear()
    watcher.check()
    assert slots.champion.version == "4"  # type: ignore[union-attr]
    assert (watcher.swaps, watcher.failures) == (4, 1)

    registry.aliases.clear()  # removing the challenger alias stops a shadow/canary; the champion stays loaded
    watcher.check()
    assert (slots.champion.version, slots.challenger) == ("4", None)  # type: ignore[union-attr]


@pytest.mark.unit
def test_the_watcher_keeps_serving_when_the_registry_is_unreachable(caplog) -> None:
    registry = FakeRegistry()
    registry.move(champion="1")
    slots: ModelSlots[str] = ModelSlots()
    watcher = ModelWatcher(
        "m", slots, registry.load, ("champion",), 5.0, registry.version_of, approved_of=registry.approved_of
    )
    watcher.check()
    registry.down = True
    with caplog.at_level(logging.WARNING, logger="mlsd.deployment"):
        watcher.check()
        watcher.check()
    assert slots.champion.version == "1"  # type: ignore[union-attr]
    assert len(caplog.records) == 1 and "keeping the loaded models" in caplog.records[0].getMessage()


def toy_deployment(
    registry: FakeRegistry, mode: str, metrics: DeploymentMetrics | None = None, share: float = 0.5
) -> Deployment[str]:
    settings = Settings(serving_mode=mode, canary_share=share)  # type: ignore[arg-type]
    deployment = Deployment(
        "fraud",
        "m",
        registry.load,
        settings,
        PredictionLogger(None, FRAUD_PREDICTIONS_TOPIC),
        metrics,
        version_of=registry.version_of,
        approved_of=registry.approved_of,
    )
    deployment.load()
    return deployment


@pytest.mark.unit
def test_a_request_keeps_the_model_it_started_with_when_a_swap_happens_meanwhile() -> None:
    registry = FakeRegistry()
    registry.move(champion="1", challenger="2")
    deployment = toy_deployment(registry, "shadow")
    assignment, model, shadow = deployment.assign("C1")
    registry.move(champion="2", challenger="3")
    deployment.watcher.check()
    assert (assignment, model.version, shadow.version) == (SHADOWED, "1", "2")  # type: ignore[union-attr]
    _, model, shadow = deployment.assign("C1")
    assert (model.version, shadow.version) == ("2", "3")  # type: ignore[union-attr]


def toy_score(deployment: Deployment[str], key: str, x: float, fail_shadow: bool = False) -> dict[str, Any]:
    """A scorer in the shape of FraudScorer.score: respond, log, then hand the challenger to the shadow runner."""
    assignment, model, shadow = deployment.assign(key)
    response: dict[str, Any] = {"score": x * int(model.version), "version": model.version, "variant": assignment.served}

    def record(version: str, variant: str, served: bool, score: float) -> PredictionRecord:
        return PredictionRecord(
            design="fraud",
            request_id=key,
            entity_id=key,
            timestamp=T0,
            model_name="m",
            model_version=version,
            variant=variant,  # type: ignore[arg-type]
            served=served,
            score=score,
            decision="approve",
            latency_ms=1.0,
        )

    deployment.log(record(model.version, assignment.served, True, response["score"]))
    if shadow is not None:

        def work() -> None:
            if fail_shadow:
                raise RuntimeError("challenger cannot score")
            response["score"] = -1.0  # a shadow bug that touched the response would show here
            deployment.log(record(shadow.version, "challenger", False, x))

        deployment.shadow.submit(work)
    return {**response}


@pytest.mark.unit
def test_a_failing_shadow_never_changes_or_fails_the_response_and_is_counted() -> None:
    import prometheus_client

    registry = FakeRegistry()
    registry.move(champion="1", challenger="2")
    metrics_registry = prometheus_client.CollectorRegistry()
    metrics = DeploymentMetrics("fraud", prometheus_client, registry=metrics_registry)
    plain = toy_deployment(registry, "off")
    shadowed = toy_deployment(registry, "shadow", metrics)
    for i in range(20):
        expected = toy_score(plain, f"r{i}", float(i))
        assert toy_score(shadowed, f"r{i}", float(i), fail_shadow=True) == expected
    assert (shadowed.shadow.ran, shadowed.shadow.errors) == (20, 20)

    def sample(name: str, **labels: str) -> float | None:
        return metrics_registry.get_sample_value(name, {"design": "fraud", **labels})

    assert sample("mlsd_shadow_errors_total") == 20
    assert sample("mlsd_predictions_total", variant="champion", served="true") == 20
    assert sample("mlsd_predictions_total", variant="challenger", served="false") == 0
    assert sample("mlsd_model_version_info", variant="champion", version="1") == 1
    assert sample("mlsd_model_version_info", variant="challenger", version="2") == 1

    registry.move(champion="3")
    shadowed.watcher.check()
    assert sample("mlsd_model_version_info", variant="champion", version="1") == 0
    assert sample("mlsd_model_version_info", variant="champion", version="3") == 1


@pytest.mark.unit
def test_on_an_event_loop_the_shadow_runs_after_the_response_is_returned() -> None:
    registry = FakeRegistry()
    registry.move(champion="1", challenger="2")
    deployment = toy_deployment(registry, "shadow")

    async def request() -> tuple[dict[str, Any], int, int]:
        response = toy_score(deployment, "r1", 2.0)
        ran_before = deployment.shadow.ran
        await asyncio.sleep(0)  # the loop's next turn: the response is already on its way
        return response, ran_before, deployment.shadow.ran

    response, ran_before, ran_after = asyncio.run(request())
    assert response == {"score": 2.0, "version": "1", "variant": "champion"}
    assert (ran_before, ran_after) == (0, 1)


@pytest.mark.unit
def test_the_shadow_runner_counts_work_it_could_not_even_schedule() -> None:
    def closed_loop(_work: Any) -> None:
        raise RuntimeError("Event loop is closed")

    runner = ShadowRunner(closed_loop)
    runner.submit(lambda: None)
    assert (runner.ran, runner.errors) == (0, 1)


@pytest.mark.integration
def test_the_watcher_follows_the_champion_alias_in_mlflow(fraud_registry: SimpleNamespace, caplog) -> None:
    from pipelines.fraud.scoring import load_fraud_model
    from tests.fraud.registered_models import move_alias, register_fraud_model

    settings = fraud_registry.settings
    move_alias("champion", "1")
    slots: ModelSlots[Any] = ModelSlots()
    watcher = ModelWatcher("fraud-xgboost", slots, partial(load_fraud_model, settings), ("champion",), 0.2)
    with PickleWatch() as unpickled:
        watcher.check()
    assert unpickled.classes == []  # the booster comes from XGBoost's own file: nothing from the registry runs
    first = slots.champion
    assert first is not None and first.version == "1" and first.info["threshold"] == 0.3
    watcher.start()
    try:
        new = register_fraud_model(settings, fraud_registry.experiment, "champion", seed=4, threshold=0.6)
        assert wait_for(lambda: slots.champion is not None and slots.champion.version == new), "no swap"
    finally:
        watcher.stop()
    assert slots.champion.model.rules.decline_threshold == 0.6  # type: ignore[union-attr]
    assert first.model.rules.decline_threshold == 0.3  # the old object is untouched for requests still using it

    # A version trained on other features is refused: the previous one keeps serving, one line says why.
    bad = register_fraud_model(settings, fraud_registry.experiment, "champion", seed=5, features_tag=["amount"])
    with caplog.at_level(logging.WARNING, logger="mlsd.deployment"):
        watcher.check()
    assert slots.champion.version == new  # type: ignore[union-attr]
    assert [r.getMessage() for r in caplog.records if "did not load" in r.getMessage()] == [
        f"fraud-xgboost@champion v{bad} did not load, still serving v{new}: "
        f"ValueError: fraud-xgboost v{bad} was trained on other features than this code computes; retrain it."
    ]

    # Moved with a bare MLflow client, as anyone who reaches the server could: no audit record, never served.
    from mlflow import MlflowClient

    unvetted = register_fraud_model(settings, fraud_registry.experiment, None, seed=6)
    MlflowClient().set_registered_model_alias("fraud-xgboost", "champion", unvetted)
    with caplog.at_level(logging.WARNING, logger="mlsd.deployment"):
        watcher.check()
        watcher.check()
    assert slots.champion.version == new  # type: ignore[union-attr]
    refusals = [r.getMessage() for r in caplog.records if "refusing" in r.getMessage()]
    assert len(refusals) == 1 and f"fraud-xgboost@champion v{unvetted}:" in refusals[0]


@pytest.mark.unit
def test_an_alias_moved_outside_the_gate_is_refused_logged_once_and_never_served(caplog) -> None:
    registry = FakeRegistry()
    registry.move(champion="1")
    registry.aliases["champion"] = "2"  # a bare MLflow client: no audit record
    slots: ModelSlots[str] = ModelSlots()
    watcher = ModelWatcher(
        "m", slots, registry.load, ("champion",), 5.0, registry.version_of, approved_of=registry.approved_of
    )
    with caplog.at_level(logging.WARNING, logger="mlsd.deployment"):
        watcher.load_champion()  # at start: the last approved version, not the alias
        for _ in range(3):
            watcher.check()
    assert slots.champion.version == "1"  # type: ignore[union-attr]
    assert registry.loads == 1
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "refusing m@champion v2" in lines[0] and "serving v1" in lines[0]
    assert watcher.describe()["refusing"] == {"champion": "2"} and watcher.refused == 1

    registry.move(champion="2")  # the gate promotes it: now it is served, and the refusal is over
    watcher.check()
    assert slots.champion.version == "2" and watcher.describe()["refusing"] == {}  # type: ignore[union-attr]

    nothing = FakeRegistry()
    nothing.aliases["champion"] = "1"  # never approved: no service rather than an unvetted model
    with pytest.raises(ServiceUnavailable, match="no gate-approved champion"):
        watcher = ModelWatcher(
            "m", ModelSlots(), nothing.load, version_of=nothing.version_of, approved_of=nothing.approved_of
        )
        watcher.load_champion()


@pytest.mark.integration
def test_the_prediction_log_buffers_while_the_broker_is_away_counts_what_it_drops_and_delivers_the_rest(
    kafka_settings: Settings,
) -> None:
    from pipelines.platform.stream import make_producer

    broker_up = [False]

    def connect() -> Any:
        if not broker_up[0]:
            raise ServiceUnavailable("no Kafka broker at 127.0.0.1:1")
        return make_producer(kafka_settings)

    logger = PredictionLogger(connect, f"test.predictions.{id(connect)}", buffer_records=5, retry_s=0.05)
    for i in range(8):
        logger.log(record(f"r{i}", 0.1, "approve"))  # returns at once: nothing waits for the broker
    assert wait_for(lambda: not logger.broker_reachable, 5)
    assert subset(logger.describe(), waiting=5, logged=5, dropped=3, delivered=0)
    broker_up[0] = True
    assert wait_for(lambda: logger.counts["delivered"] == 5, 30), logger.describe()
    assert logger.broker_reachable
    logger.close()
    assert subset(logger.describe(), waiting=0, logged=5, dropped=3, delivered=5, failed=0)


def subset(described: dict[str, Any], **expected: Any) -> bool:
    return {key: described[key] for key in expected} == expected


@pytest.mark.unit
def test_a_closed_prediction_log_counts_what_it_could_not_send() -> None:
    logger = PredictionLogger(lambda: (_ for _ in ()).throw(ConnectionError("down")), "t", retry_s=0.05)
    logger.log(record("r1", 0.1, "approve"))
    logger.close(timeout_s=1)
    assert (logger.counts["logged"], logger.counts["dropped"], logger.counts["delivered"]) == (1, 1, 0)


@pytest.mark.unit
def test_a_service_started_while_the_registry_is_away_waits_for_it_and_then_loads_the_champion(caplog) -> None:
    registry = FakeRegistry()
    registry.move(champion="1")
    registry.down = True
    deployment = Deployment(
        "fraud",
        "m",
        registry.load,
        Settings(),
        PredictionLogger(None, FRAUD_PREDICTIONS_TOPIC),
        version_of=registry.version_of,
        approved_of=registry.approved_of,
    )
    with pytest.raises(ConnectionError):
        deployment.load()  # without waiting: the error, as before
    with caplog.at_level(logging.WARNING, logger="mlsd.deployment"):
        deployment.load(wait_for_registry=True)
    assert deployment.slots.champion is None
    assert "not ready until it answers" in caplog.records[-1].getMessage()
    with pytest.raises(ServiceUnavailable, match="No m champion is loaded yet"):
        deployment.assign("C1")

    registry.down = False  # the registry answers: the next round loads the champion, and says so
    with caplog.at_level(logging.WARNING, logger="mlsd.deployment"):
        deployment.watcher.check()
    assert deployment.assign("C1")[1].version == "1"
    assert any("registry reachable again" in r.getMessage() for r in caplog.records)


@pytest.mark.unit
def test_a_challenger_moved_outside_the_gate_is_refused_without_bringing_back_an_older_one() -> None:
    registry = FakeRegistry()
    registry.move(champion="1", challenger="4")
    slots: ModelSlots[str] = ModelSlots()
    watcher = registry.watcher(slots)
    watcher.check()
    assert slots.challenger.version == "4"  # type: ignore[union-attr]
    del registry.aliases["challenger"]  # the shadow is stopped
    watcher.check()
    assert slots.challenger is None
    registry.aliases["challenger"] = "9"  # moved by hand: neither v9 nor the old v4 is shadowed or canaried
    watcher.check()
    watcher.check()
    assert slots.challenger is None and watcher.describe()["refusing"] == {"challenger": "9"}


@pytest.mark.integration
def test_a_record_the_broker_refuses_is_counted_as_failed_and_the_others_still_go(kafka_settings: Settings) -> None:
    from pipelines.platform.stream import make_producer

    # A producer that refuses records over 1 KiB: one record with a long item list, the others small.
    logger = PredictionLogger(lambda: make_producer(kafka_settings, max_request_size=1024), "test.predictions.size")
    big = record("big", 0.1, "approve").model_copy(update={"items": [f"item-{i:05d}" for i in range(500)]})
    for entry in (record("r1", 0.1, "approve"), big, record("r2", 0.1, "approve")):
        logger.log(entry)
    assert wait_for(lambda: logger.counts["delivered"] == 2, 30), logger.describe()
    logger.close()
    assert subset(logger.describe(), logged=3, delivered=2, failed=1, waiting=0, dropped=0)
