"""The fraud loop end to end on small data: stream → Feast → train → registry → BentoML service → Kafka."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from pipelines.fraud.events import DECISIONS_TOPIC
from pipelines.fraud.loadgen import payloads_from_frame
from pipelines.fraud.train import train_fraud
from pipelines.platform.infra import free_port
from pipelines.platform.training import XGBParams

pytestmark = pytest.mark.e2e


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


@pytest.fixture(scope="module")
def service(tmp_path_factory, broker, small_transactions):
    from pipelines.settings import Settings

    home = tmp_path_factory.mktemp("e2e")
    settings = Settings(home=home, mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}", kafka_bootstrap=broker)
    train_fraud(settings, small_transactions, params=XGBParams(n_estimators=60))
    port = free_port()
    env = {
        **os.environ,
        "MLSD_HOME": str(home),
        "MLSD_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "MLSD_KAFKA_BOOTSTRAP": broker,
        "MLSD_FRAUD_SERVICE_PORT": str(port),
    }
    mlsd = Path(sys.executable).parent / "mlsd"
    process = subprocess.Popen(
        [str(mlsd), "fraud", "serve"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
        if process.poll() is not None:
            pytest.fail(f"service exited: {process.stdout.read().decode()[-3000:]}")
    else:
        pytest.fail("service did not become ready in 120 s")
    yield base, settings
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


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
        DECISIONS_TOPIC,
        bootstrap_servers=service[1].kafka_bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3000,
    )
    published = {json.loads(m.value)["transaction_id"] for m in consumer}
    consumer.close()
    assert set(decisions) <= published


def test_invalid_payloads_get_a_400_naming_the_fields(service):
    base, _ = service
    status, body = post(f"{base}/score", {"transaction_id": "t1", "customer_id": "C1", "amount": -3})
    assert status == 400
    fields = {tuple(d["loc"]) for d in body["detail"]}
    assert {("timestamp",), ("terminal_id",), ("amount",)} <= fields


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
