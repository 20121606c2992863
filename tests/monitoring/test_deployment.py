"""Deployment patterns: canary routing, hot reload, shadow scoring, metrics, and the shadow / canary reports."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines.fraud.canary import canary_report
from pipelines.fraud.events import PREDICTIONS_TOPIC as FRAUD_PREDICTIONS_TOPIC
from pipelines.fraud.events import LabelEvent
from pipelines.platform.deployment import (
    CANARY,
    CHAMPION_ONLY,
    SHADOWED,
    Deployment,
    DeploymentMetrics,
    ModelSlots,
    ModelWatcher,
    PredictionLogger,
    ServingModel,
    ShadowRunner,
    TrafficRouter,
)
from pipelines.platform.experiments import average_precision, shadow_report, two_proportion_test, wilson_interval
from pipelines.platform.predictions import PredictionRecord
from pipelines.recsys.canary import recsys_canary_report
from pipelines.settings import Settings
from tests.conftest import unique

T0 = datetime(2026, 3, 1, tzinfo=UTC)


# ---------------------------------------------------------------- routing


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


# ---------------------------------------------------------------- slots and the watcher (pure)


class FakeRegistry:
    """Alias → version, and a loader that fails for the versions listed in `broken`."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.broken: set[str] = set()
        self.loads = 0
        self.down = False

    def version_of(self, _name: str, alias: str) -> str | None:
        if self.down:
            raise ConnectionError("registry down")
        return self.aliases.get(alias)

    def load(self, alias: str) -> ServingModel[str]:
        self.loads += 1
        version = self.aliases[alias]
        if version in self.broken:
            raise ValueError(f"version {version} is broken\nsecond line of detail")
        return ServingModel("m", version, f"model-{version}")


@pytest.mark.unit
def test_the_watcher_swaps_a_moved_alias_and_keeps_the_old_model_when_a_load_fails(caplog) -> None:
    registry = FakeRegistry()
    registry.aliases = {"champion": "1"}
    slots: ModelSlots[str] = ModelSlots()
    now = [0.0]
    watcher = ModelWatcher(
        "m", slots, registry.load, ("champion", "challenger"), 5.0, registry.version_of, 60.0, lambda: now[0]
    )
    assert [m.version for m in watcher.check()] == ["1"]
    assert watcher.check() == []  # nothing moved: no load at all
    assert registry.loads == 1

    registry.aliases.update(champion="2", challenger="3")
    watcher.check()
    assert (slots.champion.version, slots.challenger.version) == ("2", "3")  # type: ignore[union-attr]

    registry.aliases["champion"] = "4"
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
    registry.aliases = {"champion": "1"}
    slots: ModelSlots[str] = ModelSlots()
    watcher = ModelWatcher("m", slots, registry.load, ("champion",), 5.0, registry.version_of)
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
    )
    deployment.load()
    return deployment


@pytest.mark.unit
def test_a_request_keeps_the_model_it_started_with_when_a_swap_happens_meanwhile() -> None:
    registry = FakeRegistry()
    registry.aliases = {"champion": "1", "challenger": "2"}
    deployment = toy_deployment(registry, "shadow")
    assignment, model, shadow = deployment.assign("C1")
    registry.aliases.update(champion="2", challenger="3")
    deployment.watcher.check()
    assert (assignment, model.version, shadow.version) == (SHADOWED, "1", "2")  # type: ignore[union-attr]
    _, model, shadow = deployment.assign("C1")
    assert (model.version, shadow.version) == ("2", "3")  # type: ignore[union-attr]


# ---------------------------------------------------------------- shadow


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
    registry.aliases = {"champion": "1", "challenger": "2"}
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

    registry.aliases["champion"] = "3"
    shadowed.watcher.check()
    assert sample("mlsd_model_version_info", variant="champion", version="1") == 0
    assert sample("mlsd_model_version_info", variant="champion", version="3") == 1


@pytest.mark.unit
def test_on_an_event_loop_the_shadow_runs_after_the_response_is_returned() -> None:
    registry = FakeRegistry()
    registry.aliases = {"champion": "1", "challenger": "2"}
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


# ---------------------------------------------------------------- reports


def record(
    request: str,
    score: float,
    decision: str,
    variant: str = "champion",
    served: bool = True,
    version: str = "1",
    latency: float = 2.0,
    entity: str | None = None,
    at: datetime = T0,
) -> PredictionRecord:
    return PredictionRecord(
        design="fraud",
        request_id=request,
        entity_id=entity or request,
        timestamp=at,
        model_name="fraud-xgboost",
        model_version=version,
        variant=variant,  # type: ignore[arg-type]
        served=served,
        score=score,
        decision=decision,
        latency_ms=latency,
    )


@pytest.mark.unit
def test_shadow_report_pairs_by_request_and_measures_agreement_score_gaps_and_latency() -> None:
    served_scores = [0.1, 0.2, 0.9, 0.4]
    shadow_scores = [0.1, 0.3, 0.5, 0.8]
    decisions = [("approve", "approve"), ("approve", "approve"), ("decline", "review"), ("review", "decline")]
    records = []
    for i, (a, b) in enumerate(zip(served_scores, shadow_scores, strict=True)):
        records.append(record(f"q{i}", a, decisions[i][0], latency=1.0 + i))
        records.append(record(f"q{i}", b, decisions[i][1], "challenger", False, "2", latency=10.0 + i))
    records.append(record("q0", 0.1, "approve"))  # redelivered: counted once
    records.append(record("lonely", 0.3, "approve"))  # served, no shadow partner

    report = shadow_report(records)
    assert (report["served"], report["shadow"], report["pairs"], report["served_without_shadow"]) == (5, 4, 4, 1)
    assert report["agreement"] == 0.5
    assert report["decisions"] == {"approve": {"approve": 2}, "decline": {"review": 1}, "review": {"decline": 1}}
    diff = np.abs(np.array(served_scores) - np.array(shadow_scores))
    assert report["score_abs_diff"]["mean"] == pytest.approx(diff.mean())
    assert report["score_abs_diff"]["p50"] == pytest.approx(np.percentile(diff, 50))
    assert report["score_abs_diff"]["p95"] == pytest.approx(np.percentile(diff, 95))
    assert report["score_correlation"] == pytest.approx(np.corrcoef(served_scores, shadow_scores)[0, 1])
    assert report["latency_ms"]["challenger v2 (shadow)"]["p50"] == pytest.approx(11.5)
    assert report["latency_ms"]["champion v1 (served)"]["count"] == 5
    assert report["verdict"].startswith(
        "challenger v2 in the shadow of champion v1 on 4 requests: same decision on 50.0%"
    )


@pytest.mark.unit
def test_shadow_report_without_pairs_says_so() -> None:
    report = shadow_report([record("a", 0.1, "approve")])
    assert report["pairs"] == 0 and report["agreement"] is None
    assert "nothing to compare" in report["verdict"]


@pytest.mark.unit
def test_wilson_interval_and_the_two_proportion_test_match_hand_computed_values() -> None:
    low, high = wilson_interval(8, 10)  # type: ignore[misc]
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert wilson_interval(0, 0) is None
    test = two_proportion_test(60, 100, 80, 100)
    pooled_se = (0.7 * 0.3 * (2 / 100)) ** 0.5
    z = 0.2 / pooled_se
    assert test["difference"] == pytest.approx(0.2)
    assert test["p_value"] == pytest.approx(math.erfc(z / 2**0.5))
    half = 1.959964 * (0.6 * 0.4 / 100 + 0.8 * 0.2 / 100) ** 0.5
    assert (test["ci_low"], test["ci_high"]) == (pytest.approx(0.2 - half), pytest.approx(0.2 + half))


@pytest.mark.unit
def test_average_precision_matches_scikit_learn_with_ties() -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(5)
    labels = (rng.random(3000) < 0.05).astype(int)
    scores = np.round(rng.random(3000) * 0.5 + labels * 0.3, 2)  # rounded: many tied scores
    assert average_precision(labels, scores) == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert np.isnan(average_precision(np.zeros(5, dtype=int), np.ones(5)))


def canary_log(caught: dict[str, int], frauds: int = 100, genuine: int = 900) -> tuple[list[Any], list[LabelEvent]]:
    """Served records per variant: `caught[variant]` of the frauds flagged, genuine ones approved except 10."""
    records, labels = [], []
    rng = np.random.default_rng(1)
    for variant, version in (("champion", "1"), ("challenger", "2")):
        for i in range(frauds):
            tx = f"{variant}-fraud-{i}"
            flagged = i < caught[variant]
            score = rng.uniform(0.6, 1.0) if flagged else rng.uniform(0.0, 0.4)
            records.append(record(tx, score, "decline" if flagged else "approve", variant, True, version))
            labels.append(
                LabelEvent(
                    transaction_id=tx,
                    customer_id="c",
                    terminal_id="t",
                    timestamp=T0,
                    label_timestamp=T0 + timedelta(days=3),
                )
            )
        for i in range(genuine):
            declined = i < 10
            score = rng.uniform(0.6, 1.0) if declined else rng.uniform(0.0, 0.5)
            records.append(
                record(f"{variant}-ok-{i}", score, "decline" if declined else "approve", variant, True, version)
            )
    return records, labels


@pytest.mark.unit
def test_canary_report_finds_a_clearly_better_challenger_significant() -> None:
    records, labels = canary_log({"champion": 60, "challenger": 80})
    report = canary_report(records, labels, n_boot=200)
    champion, challenger = report["variants"]["champion"], report["variants"]["challenger"]
    assert (champion["predictions"], champion["frauds"], champion["catch_rate"]) == (1000, 100, 0.6)
    assert challenger["catch_rate"] == 0.8
    assert champion["decline_precision"] == pytest.approx(60 / 70)
    assert challenger["decline_precision"] == pytest.approx(80 / 90)
    low, high = champion["catch_rate_ci"]
    assert low < 0.6 < high
    assert challenger["average_precision"] > champion["average_precision"]
    catch = report["challenger_minus_champion"]["catch_rate"]
    assert catch["difference"] == pytest.approx(0.2) and catch["p_value"] < 0.01
    assert "significant at 95 %: the challenger is better on catch rate" in report["verdict"]
    json.dumps(report)  # the CLI writes it as JSON


@pytest.mark.unit
def test_canary_report_calls_a_small_difference_not_significant_and_respects_label_maturity() -> None:
    records, labels = canary_log({"champion": 60, "challenger": 62})
    report = canary_report(records, labels, n_boot=200)
    assert report["challenger_minus_champion"]["catch_rate"]["p_value"] > 0.05
    assert "no difference is significant at 95 %" in report["verdict"]

    late = [record("late-fraud", 0.1, "approve", "challenger", True, "2", at=T0 + timedelta(days=30))]
    settled = canary_report(records + late, labels, mature_before=T0 + timedelta(days=1), n_boot=50)
    assert settled["variants"]["challenger"]["predictions"] == 1000
    assert canary_report(records + late, labels, n_boot=50)["variants"]["challenger"]["predictions"] == 1001


@pytest.mark.unit
def test_canary_report_without_challenger_traffic_says_so() -> None:
    records, labels = canary_log({"champion": 60, "challenger": 60})
    only_champion = [r for r in records if r.variant == "champion"]
    report = canary_report(only_champion, labels, n_boot=20)
    assert report["verdict"] == "No labelled predictions served by the challenger yet: nothing to compare."


def recommendation(
    request: str, user: str, items: list[str], variant: str = "champion", served: bool = True, at: datetime = T0
) -> PredictionRecord:
    return PredictionRecord(
        design="recsys",
        request_id=request,
        entity_id=user,
        timestamp=at,
        model_name="recsys-ranker",
        model_version="1" if variant == "champion" else "2",
        variant=variant,  # type: ignore[arg-type]
        served=served,
        score=0.5,
        decision="recommend",
        items=items,
        latency_ms=10.0,
    )


@pytest.mark.unit
def test_the_recsys_shadow_report_compares_the_two_lists_not_the_decisions() -> None:
    records = [
        recommendation("q1", "u1", ["a", "b", "c", "d"]),
        recommendation("q1", "u1", ["a", "c", "x", "y"], "challenger", served=False),  # same first, 2 of 4 shared
        recommendation("q2", "u2", ["e", "f", "g", "h"]),
        recommendation("q2", "u2", ["f", "e", "g", "h"], "challenger", served=False),  # other first, all 4 shared
    ]
    report = shadow_report(records)
    assert report["lists"] == {"same_first_item": 0.5, "overlap": pytest.approx(0.75), "mean_length": 4.0}
    assert "declines" not in report
    assert "same first item on 50.0%, the shadow list holds 75.0% of the served items" in report["verdict"]


def recsys_canary_log(hit_rates: dict[str, float], users: int = 600) -> tuple[list[PredictionRecord], pd.DataFrame]:
    """Each variant serves `users` users one list; a share `hit_rates[variant]` of them take its first item later."""
    records, taken = [], []
    for variant, rate in hit_rates.items():
        for i in range(users):
            user = f"{variant}-u{i}"
            records.append(recommendation(f"{user}-q", user, [f"{user}-i{j}" for j in range(10)], variant))
            if i < rate * users:
                taken.append((user, f"{user}-i0", T0 + timedelta(hours=2)))
            else:
                taken.append((user, "something-else", T0 + timedelta(hours=2)))
    taken.append(("someone", "x", T0 + timedelta(days=3)))  # the clock of the interaction stream
    interactions = pd.DataFrame(taken, columns=["user_id", "item_id", "timestamp"])
    interactions["timestamp"] = pd.to_datetime(interactions["timestamp"], utc=True)
    return records, interactions


@pytest.mark.unit
def test_the_recsys_canary_report_judges_hit_rate_and_ndcg_on_later_interactions() -> None:
    records, interactions = recsys_canary_log({"champion": 0.2, "challenger": 0.3})
    report = recsys_canary_report(records, interactions, timedelta(hours=24), n_boot=200)
    champion, challenger = report["variants"]["champion"], report["variants"]["challenger"]
    assert (champion["predictions"], champion["hits"], challenger["hits"]) == (600, 120, 180)
    assert champion["hit_rate"] == pytest.approx(0.2) and challenger["hit_rate"] == pytest.approx(0.3)
    assert challenger["ndcg_at_10"] == pytest.approx(0.3)  # a hit on the first of 10 items with one relevant item
    low, high = champion["hit_rate_ci"]
    assert low < 0.2 < high
    assert report["challenger_minus_champion"]["hit_rate"]["p_value"] < 0.001
    assert "significant at 95 %: the challenger is better on hit rate, ndcg at 10" in report["verdict"]
    json.dumps(report)

    # a request newer than the newest interaction minus the horizon has no known outcome yet
    late = recommendation("late", "late-user", ["z"], "challenger", at=T0 + timedelta(days=2, hours=12))
    assert (
        recsys_canary_report(records + [late], interactions, timedelta(hours=24), n_boot=20)["labelled_predictions"]
        == 1200
    )


@pytest.mark.unit
def test_the_recsys_canary_report_without_challenger_traffic_says_so() -> None:
    records, interactions = recsys_canary_log({"champion": 0.2}, users=50)
    report = recsys_canary_report(records, interactions, timedelta(hours=24), n_boot=20)
    assert (
        report["verdict"] == "No recommendation served by the challenger has a known outcome yet: nothing to compare."
    )


# ---------------------------------------------------------------- real MLflow, Feast and Kafka


def wait_for(condition: Any, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, broker: str) -> SimpleNamespace:
    """One MLflow database and Feast repo for this module: v1 and v3 work, v2 cannot score a request.

    Each test points the aliases where it needs them first, so the order of the tests does not matter.
    """
    from pipelines.designs import feature_definitions
    from pipelines.platform.features import apply_feature_definitions
    from tests.monitoring.fraud_models import experiment, register_fraud_model

    home = tmp_path_factory.mktemp("deployment")
    settings = Settings(home=home, mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}", kafka_bootstrap=broker)
    apply_feature_definitions(settings, feature_definitions())
    exp = experiment(settings)
    versions = (
        register_fraud_model(settings, exp, "champion", seed=1, threshold=0.3),
        # Trained on fewer columns than the service sends: it cannot score a request.
        register_fraud_model(settings, exp, None, seed=2, n_features=3),
        register_fraud_model(settings, exp, None, seed=2, threshold=0.2),
    )
    assert versions == ("1", "2", "3")
    return SimpleNamespace(settings=settings, experiment=exp)


@pytest.mark.integration
def test_the_watcher_follows_the_champion_alias_in_mlflow(registry: SimpleNamespace, caplog) -> None:
    from pipelines.fraud.scoring import load_fraud_model
    from tests.monitoring.fraud_models import move_alias, register_fraud_model

    settings = registry.settings
    move_alias("champion", "1")
    slots: ModelSlots[Any] = ModelSlots()
    watcher = ModelWatcher("fraud-xgboost", slots, partial(load_fraud_model, settings), ("champion",), 0.2)
    watcher.check()
    first = slots.champion
    assert first is not None and first.version == "1" and first.info["threshold"] == 0.3
    watcher.start()
    try:
        new = register_fraud_model(settings, registry.experiment, "champion", seed=4, threshold=0.6)
        assert wait_for(lambda: slots.champion is not None and slots.champion.version == new), "no swap"
    finally:
        watcher.stop()
    assert slots.champion.model.rules.decline_threshold == 0.6  # type: ignore[union-attr]
    assert first.model.rules.decline_threshold == 0.3  # the old object is untouched for requests still using it

    # A version trained on other features is refused: the previous one keeps serving, one line says why.
    bad = register_fraud_model(settings, registry.experiment, "champion", seed=5, features_tag=["amount"])
    with caplog.at_level(logging.WARNING, logger="mlsd.deployment"):
        watcher.check()
    assert slots.champion.version == new  # type: ignore[union-attr]
    assert [r.getMessage() for r in caplog.records if "did not load" in r.getMessage()] == [
        f"fraud-xgboost@champion v{bad} did not load, still serving v{new}: "
        f"ValueError: fraud-xgboost v{bad} was trained on other features than this code computes; retrain it."
    ]


def read_predictions(settings: Settings, request_ids: set[str], expected: int) -> list[PredictionRecord]:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(
        FRAUD_PREDICTIONS_TOPIC,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    found = []
    for message in consumer:
        try:  # other tests share the topic, and one of them writes a bad message on purpose
            record = PredictionRecord.model_validate_json(message.value)
        except ValueError:
            continue
        if record.request_id in request_ids:
            found.append(record)
            if len(found) >= expected:
                break
    consumer.close()
    return found


@pytest.mark.integration
def test_fraud_scorer_shadow_never_changes_responses_and_logs_both_predictions(registry: SimpleNamespace) -> None:
    from pipelines.fraud.events import TransactionEvent
    from pipelines.fraud.model import MODEL_NAME, load_fraud_version
    from pipelines.fraud.scoring import FraudModel, FraudScorer
    from tests.monitoring.fraud_models import move_alias

    settings = registry.settings.model_copy(update={"serving_mode": "shadow"})
    move_alias("champion", "1")
    move_alias("challenger", "2")  # the broken one first
    scorer = FraudScorer(settings, watch=False)
    try:
        # The loader tries a prediction, so v2 never reaches the slot: shadow mode serves the champion alone.
        assert scorer.deployment.slots.challenger is None and scorer.deployment.watcher.failures == 1
        transactions = [
            TransactionEvent(
                transaction_id=unique("tx"),
                timestamp=T0 + timedelta(minutes=i),
                customer_id=f"C{i % 7}",
                terminal_id=f"T{i % 5}",
                amount=0.1 * i,  # the test models split on the first feature (amount) around 1
            )
            for i in range(25)
        ]
        alone = [scorer.score(t) for t in transactions]
        assert scorer.deployment.shadow.ran == 0

        # A challenger that fails at predict time anyway (here: v2 put in the slot without the loader's check).
        broken = load_fraud_version("2")
        champion_rules = scorer.champion.model.rules
        scorer.deployment.slots.swap(
            "challenger", ServingModel(MODEL_NAME, "2", FraudModel(broken.booster, champion_rules))
        )
        broken_shadow = [scorer.score(t) for t in transactions]
        assert scorer.deployment.shadow.errors == len(transactions)

        move_alias("challenger", "3")
        scorer.deployment.watcher.check()
        working_shadow = [scorer.score(t) for t in transactions]
        assert scorer.deployment.shadow.errors == len(transactions)

        def answer(decision: Any) -> tuple:
            return decision.decision, decision.score, decision.model_version, decision.variant, decision.reasons

        assert [answer(d) for d in alone] == [answer(d) for d in broken_shadow] == [answer(d) for d in working_shadow]
        assert {d.variant for d in working_shadow} == {"champion"}
        assert len({d.decision for d in working_shadow}) > 1, "the test model should not answer everything alike"
    finally:
        scorer.close()

    ids = {d.request_id for d in working_shadow}
    everything = ids | {d.request_id for d in alone + broken_shadow}
    found = read_predictions(settings, everything, 4 * len(transactions))
    shadows = {r.request_id: r for r in found if not r.served}
    served = {r.request_id: r for r in found if r.served}
    assert set(shadows) == ids  # the broken challenger logged nothing; the working one once per request
    assert len(served) == 3 * len(transactions)
    for decision in working_shadow:
        mine, shadow = served[decision.request_id], shadows[decision.request_id]
        assert (mine.model_version, mine.variant, mine.score, mine.decision) == (
            "1",
            "champion",
            decision.score,
            decision.decision,
        )
        assert (shadow.model_version, shadow.variant, shadow.entity_id) == ("3", "challenger", decision.transaction_id)
        assert set(shadow.features) == set(mine.features) and shadow.features == mine.features


@pytest.mark.integration
def test_fraud_scorer_canary_sends_a_sticky_share_of_customers_to_the_challenger(registry: SimpleNamespace) -> None:
    from pipelines.fraud.events import TransactionEvent
    from pipelines.fraud.scoring import FraudScorer
    from tests.monitoring.fraud_models import move_alias

    settings = registry.settings.model_copy(update={"serving_mode": "canary", "canary_share": 0.3})
    move_alias("champion", "1")
    move_alias("challenger", "3")
    scorer = FraudScorer(settings, publish=False, watch=False)
    try:
        router = TrafficRouter("canary", 0.3, settings.seed)
        by_customer: dict[str, set[tuple[str, str]]] = {}
        for i in range(120):
            customer = f"C{i % 40}"
            decision = scorer.score(
                TransactionEvent(
                    transaction_id=f"t{i}", timestamp=T0, customer_id=customer, terminal_id="T1", amount=50.0
                )
            )
            by_customer.setdefault(customer, set()).add((decision.variant, decision.model_version))
            assert decision.variant == router.assign(customer, True).served
    finally:
        scorer.close()
    assert all(len(seen) == 1 for seen in by_customer.values())  # a customer sticks to one variant
    variants = [next(iter(seen)) for seen in by_customer.values()]
    assert ("challenger", "3") in variants and ("champion", "1") in variants


@pytest.mark.integration
def test_deploy_reports_read_the_prediction_log_to_its_end(
    kafka_settings: Settings, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app
    from pipelines.fraud.events import LABELS_TOPIC
    from pipelines.platform.stream import encode, ensure_topics, make_producer, read_topic

    mine = [unique("req") for _ in range(10)]
    producer = make_producer(kafka_settings)
    for i, request in enumerate(mine):
        producer.send(FRAUD_PREDICTIONS_TOPIC, encode(record(request, 0.1 * i, "approve")))
        producer.send(FRAUD_PREDICTIONS_TOPIC, encode(record(request, 0.1 * i + 0.05, "approve", "challenger", False)))
        producer.send(
            LABELS_TOPIC,
            encode(
                LabelEvent(transaction_id=request, customer_id="c", terminal_id="t", timestamp=T0, label_timestamp=T0)
            ),
        )
    # A bad message is skipped and counted, not fatal (on a topic of its own: the others are shared).
    scratch = unique("deploy-read")
    ensure_topics(kafka_settings, [scratch])
    for request in mine[:3]:
        producer.send(scratch, encode(record(request, 0.5, "approve")))
    producer.send(scratch, b"not json")
    producer.flush()
    producer.close()

    valid, invalid = read_topic(kafka_settings, scratch, PredictionRecord)
    assert ([r.request_id for r in valid], invalid) == (mine[:3], 1)
    records, _ = read_topic(kafka_settings, FRAUD_PREDICTIONS_TOPIC, PredictionRecord)
    assert set(mine) <= {r.request_id for r in records}

    monkeypatch.setenv("MLSD_KAFKA_BOOTSTRAP", kafka_settings.kafka_bootstrap)
    runner = CliRunner()
    shadow = runner.invoke(app, ["deploy", "shadow-report", "--json-out", str(tmp_path / "shadow.json")])
    assert shadow.exit_code == 0, shadow.output
    report = json.loads((tmp_path / "shadow.json").read_text())
    assert report["pairs"] >= len(mine)
    assert "same decision on" in report["verdict"]

    # Other tests share the broker and its labels, so count every transaction (no label-delay cut-off).
    canary = runner.invoke(
        app, ["deploy", "canary-report", "--all-predictions", "--json-out", str(tmp_path / "canary.json")]
    )
    assert canary.exit_code == 0, canary.output
    report = json.loads((tmp_path / "canary.json").read_text())
    assert report["variants"]["champion"]["frauds"] >= len(mine)
    assert report["mature_before"] is None and report["verdict"]
    assert "canary report" in canary.output

    # The recommendation log: lists compared in the shadow report, later interactions as the canary's outcomes.
    from pipelines.recsys.events import INTERACTIONS_TOPIC, InteractionEvent
    from pipelines.recsys.events import PREDICTIONS_TOPIC as RECSYS_PREDICTIONS_TOPIC

    producer = make_producer(kafka_settings)
    for i, request in enumerate(mine):
        user, variant = f"{request}-user", ("champion", "challenger")[i % 2]
        producer.send(RECSYS_PREDICTIONS_TOPIC, encode(recommendation(request, user, ["a", "b"], variant)))
        producer.send(RECSYS_PREDICTIONS_TOPIC, encode(recommendation(request, user, ["b", "a"], "challenger", False)))
        taken = InteractionEvent(user_id=user, item_id="a", event_type="click", timestamp=T0 + timedelta(hours=1))
        producer.send(INTERACTIONS_TOPIC, encode(taken))
    producer.send(
        INTERACTIONS_TOPIC,
        encode(InteractionEvent(user_id="clock", item_id="z", event_type="view", timestamp=T0 + timedelta(days=2))),
    )
    producer.flush()
    producer.close()
    shadow = runner.invoke(
        app, ["deploy", "shadow-report", "--design", "recsys", "--json-out", str(tmp_path / "recsys-shadow.json")]
    )
    assert shadow.exit_code == 0, shadow.output
    assert "lists" in json.loads((tmp_path / "recsys-shadow.json").read_text())
    canary = runner.invoke(
        app, ["deploy", "canary-report", "--design", "recsys", "--json-out", str(tmp_path / "recsys-canary.json")]
    )
    assert canary.exit_code == 0, canary.output
    report = json.loads((tmp_path / "recsys-canary.json").read_text())
    assert report["variants"]["challenger"]["hits"] >= len(mine) // 2 and report["verdict"]


@pytest.mark.integration
def test_a_prediction_record_that_cannot_be_sent_is_counted_not_raised(kafka_settings: Settings) -> None:
    from pipelines.platform.stream import make_producer

    producer = make_producer(kafka_settings)
    producer.close()  # a producer that refuses every send, like one whose broker went away for good
    logger = PredictionLogger(producer, FRAUD_PREDICTIONS_TOPIC)
    logger.log(record("r1", 0.1, "approve"))
    logger.log(record("r2", 0.1, "approve"))
    assert (logger.sent, logger.dropped) == (0, 2)
