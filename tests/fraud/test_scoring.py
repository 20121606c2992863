"""The fraud scorer (pipelines/fraud/scoring.py) on a real MLflow registry, Feast and Kafka: shadow and canary."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from pipelines.fraud.events import PREDICTIONS_TOPIC as FRAUD_PREDICTIONS_TOPIC
from pipelines.platform.deployment import (
    ServingModel,
    TrafficRouter,
)
from pipelines.platform.predictions import PredictionRecord
from pipelines.settings import Settings
from tests.conftest import unique
from tests.factories import T0


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
def test_fraud_scorer_shadow_never_changes_responses_and_logs_both_predictions(fraud_registry: SimpleNamespace) -> None:
    from pipelines.fraud.events import TransactionEvent
    from pipelines.fraud.model import MODEL_NAME, load_fraud_version
    from pipelines.fraud.scoring import FraudModel, FraudScorer
    from tests.fraud.registered_models import move_alias

    settings = fraud_registry.settings.model_copy(update={"serving_mode": "shadow"})
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
def test_fraud_scorer_canary_sends_a_sticky_share_of_customers_to_the_challenger(
    fraud_registry: SimpleNamespace,
) -> None:
    from pipelines.fraud.events import TransactionEvent
    from pipelines.fraud.scoring import FraudScorer
    from tests.fraud.registered_models import move_alias

    settings = fraud_registry.settings.model_copy(update={"serving_mode": "canary", "canary_share": 0.3})
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
def test_with_the_online_store_locked_the_rules_alone_decide_flagged_and_full_answers_return_by_themselves(
    fraud_registry: SimpleNamespace,
) -> None:
    """A small online-store-outage drill: another process holds the SQLite store's exclusive lock."""
    import time

    from pipelines.fraud.events import TransactionEvent
    from pipelines.fraud.scoring import FraudScorer
    from pipelines.platform.service_drills import SqliteLock
    from tests.fraud.registered_models import move_alias

    settings = fraud_registry.settings.model_copy(
        # A generous budget: a slow read on a busy test machine must not look like the outage.
        update={"serving_store_cooldown_seconds": 0.2, "serving_store_budget_ms": 200, "fraud_blocklist": ["C-blocked"]}
    )
    move_alias("champion", "1")
    scorer = FraudScorer(settings, publish=False, watch=False)

    def score(customer: str, amount: float) -> Any:
        event = TransactionEvent(
            transaction_id=unique("tx"), timestamp=T0, customer_id=customer, terminal_id="T1", amount=amount
        )
        return scorer.score(event)

    lock = SqliteLock(settings.home / "feast" / "online.db")
    try:
        assert not score("C1", 50.0).degraded
        lock.start()
        during = [score("C1", 50.0), score("C1", 4_000.0), score("C-blocked", 5.0)]
        assert [d.degraded for d in during] == [True, True, True]
        assert [(d.decision, d.rule, d.score) for d in during] == [
            ("approve", "degraded_amount_within_limit", None),
            ("review", "degraded_amount_over_limit", None),  # over the lower limit that applies without a score
            ("decline", "blocklist", None),
        ]
        assert during[0].degraded_reason == "online store took longer than 200 ms"
        assert scorer.describe()["online_store"]["over_budget"] == 3 and scorer.store_guard.is_open
        lock.stop()
        deadline = time.monotonic() + 10  # the breaker retries after its cool-down: no restart, no operator
        while score("C1", 50.0).degraded and time.monotonic() < deadline:
            time.sleep(0.05)
        full = score("C1", 50.0)
        assert not full.degraded and full.score is not None and not scorer.store_guard.is_open
    finally:
        lock.stop()
        scorer.close()


@pytest.mark.integration
def test_the_scorers_direct_reads_return_what_feasts_feature_service_returns(fraud_registry: SimpleNamespace) -> None:
    import math

    from feature_repo.fraud import FEATURE_SERVICE
    from pipelines.fraud.scoring import STORED, FraudScorer
    from pipelines.fraud.simulate import config_for_size, simulate_transactions
    from pipelines.fraud.train import backfill_feature_store
    from tests.fraud.registered_models import move_alias

    settings = fraud_registry.settings
    move_alias("champion", "1")
    frame = simulate_transactions(config_for_size(3_000, seed=3))
    scorer = FraudScorer(settings, publish=False, watch=False)
    try:
        backfill_feature_store(settings, frame, scorer.store)
        pairs = list(zip(frame["customer_id"].tail(30), frame["terminal_id"].tail(30), strict=True))
        pairs.append(("C-never-seen", "T-never-seen"))
        service = scorer.store.get_feature_service(FEATURE_SERVICE)
        for customer, terminal in pairs:
            feast = scorer.store.get_online_features(
                features=service, entity_rows=[{"customer_id": customer, "terminal_id": terminal}]
            ).to_dict()
            expected = {name: feast[name][0] for name in STORED}
            mine = scorer.online_features(customer, terminal)
            assert set(mine) == set(expected)
            for name, value in expected.items():
                assert (value is None and math.isnan(mine[name])) or mine[name] == pytest.approx(value), name
        assert not any(math.isnan(v) for v in scorer.online_features(*pairs[0]).values())
    finally:
        scorer.close()
