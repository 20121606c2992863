"""The fraud loop end to end on small data: stream → Feast → train → registry → BentoML service → Kafka."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from kafka import KafkaConsumer

from pipelines.fraud.events import PREDICTIONS_TOPIC as FRAUD_PREDICTIONS_TOPIC
from pipelines.fraud.loadgen import payloads_from_frame
from pipelines.fraud.modeling import XGBParams
from pipelines.fraud.train import train_fraud
from pipelines.platform.infra import free_port
from tests.service_process import post, serving

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def service(tmp_path_factory, broker, small_transactions):
    from pipelines.settings import Settings

    home = tmp_path_factory.mktemp("e2e")
    settings = Settings(home=home, mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}", kafka_bootstrap=broker)
    train_fraud(settings, small_transactions, params=XGBParams(n_estimators=60))
    port = free_port()
    env = {
        "MLSD_HOME": str(home),
        "MLSD_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "MLSD_KAFKA_BOOTSTRAP": broker,
        "MLSD_FRAUD_SERVICE_PORT": str(port),
    }
    with serving(["fraud", "serve"], env, port) as base:
        yield base, settings


def test_a_transaction_gets_a_decision_with_score_version_and_reasons(service, small_transactions):
    base, _ = service
    fraud = small_transactions[small_transactions["is_fraud"] == 1].tail(20)
    genuine = small_transactions[small_transactions["is_fraud"] == 0].tail(20)
    decisions = {}
    for payload in payloads_from_frame(fraud) + payloads_from_frame(genuine):
        status, body = post(f"{base}/score", payload)
        assert status == 200, body
        assert body["transaction_id"] == payload["transaction_id"]
        assert body["decision"] in {"approve", "review", "decline"}
        assert body["model_version"] == "1"
        assert 0 <= body["score"] <= 1
        if body["decision"] != "approve":
            assert body["reasons"], body
        decisions[payload["transaction_id"]] = body
    fraud_scores = [decisions[t]["score"] for t in fraud["transaction_id"]]
    genuine_scores = [decisions[t]["score"] for t in genuine["transaction_id"]]
    assert sum(fraud_scores) / len(fraud_scores) > 5 * sum(genuine_scores) / len(genuine_scores)

    consumer = KafkaConsumer(
        FRAUD_PREDICTIONS_TOPIC,
        bootstrap_servers=service[1].kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    published = {json.loads(m.value)["entity_id"] for m in consumer}
    consumer.close()
    assert set(decisions) <= published


def test_invalid_payloads_get_a_400_naming_the_fields(service):
    base, _ = service
    status, body = post(f"{base}/score", {"transaction_id": "t1", "customer_id": "C1", "amount": -3})
    assert status == 400 and body["error"] == "Invalid request body"
    # One sentence: the first problem, and the other fields to check.
    assert body["detail"] == "Field 'timestamp' is missing: add it (also check 'terminal_id', 'amount')."
    status, body = post(
        f"{base}/score",
        {
            "transaction_id": "t1",
            "customer_id": "C1",
            "terminal_id": "T1",
            "timestamp": "2026-03-01T12:00:00Z",
            "amount": False,
        },
    )
    assert (status, body["detail"]) == (400, "Field 'amount' is invalid: input should be a valid number.")


def test_blocklisted_and_unknown_entities(service):
    base, _ = service
    status, body = post(
        f"{base}/score",
        {
            "transaction_id": "t2",
            "timestamp": "2026-03-01T12:00:00Z",
            "customer_id": "NEVER-SEEN",
            "terminal_id": "NEVER-SEEN",
            "amount": 12.5,
        },
    )
    assert status == 200 and body["decision"] == "approve"  # no history is not an error


def test_health_and_openapi(service):
    base, _ = service
    for path in ("/livez", "/readyz"):
        with urllib.request.urlopen(base + path, timeout=5) as response:
            assert response.status == 200
    with urllib.request.urlopen(base + "/docs.json", timeout=5) as response:
        spec = json.loads(response.read())
    assert "/score" in spec["paths"]
