"""The recommendation service end to end on small data: features in Feast, champion in MLflow, BentoML over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from feature_repo.recsys import ITEM_VIEW, USER_VIEW
from pipelines.platform.features import apply_feature_definitions, write_feature_rows
from pipelines.platform.infra import free_port
from pipelines.recsys.features import backfill_features
from pipelines.recsys.simulate import config_for_size, simulate_interactions
from pipelines.recsys.train import train_recsys
from tests.e2e.test_fraud_loop import post

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from pipelines.settings import Settings

    home = tmp_path_factory.mktemp("recsys-e2e")
    settings = Settings(home=home, mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    interactions, items = simulate_interactions(config_for_size(30_000, seed=8))
    train_recsys(settings, interactions, items)
    users, item_rows = backfill_features(interactions, items)
    write_feature_rows(
        settings,
        apply_feature_definitions(settings),
        [(USER_VIEW, "user_id", users), (ITEM_VIEW, "item_id", item_rows)],
    )
    port = free_port()
    env = {
        **os.environ,
        "MLSD_HOME": str(home),
        "MLSD_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "MLSD_RECSYS_SERVICE_PORT": str(port),
    }
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlsd"), "recsys", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
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
    yield base, interactions
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


def test_a_known_user_gets_k_unseen_items_with_stages_and_latency(service):
    base, interactions = service
    user = str(interactions["user_id"].iloc[-1])
    status, body = post(f"{base}/recommend", {"user_id": user, "k": 8})
    assert status == 200, body
    assert body["known_user"] is True and body["model_version"] == "1"
    ids = [item["item_id"] for item in body["items"]]
    assert len(ids) == 8 == len(set(ids))
    recent = set(interactions.loc[interactions["user_id"] == user, "item_id"].tail(20))
    assert not recent & set(ids)  # the user's recent items are filtered out
    assert {item["stage"] for item in body["items"]} <= {"als", "item2item", "popular"}
    assert {"candidates", "features", "ranking", "reranking", "total"} <= set(body["latency_ms"])


def test_an_unknown_user_gets_cold_start_items(service):
    base, _ = service
    status, body = post(f"{base}/recommend", {"user_id": "someone-new", "k": 5})
    assert status == 200 and body["known_user"] is False and len(body["items"]) == 5


def test_invalid_requests_get_a_400_naming_the_field(service):
    base, _ = service
    status, body = post(f"{base}/recommend", {"user_id": "u", "k": 0})
    assert status == 400 and any(d["loc"] == ["k"] for d in body["detail"])
