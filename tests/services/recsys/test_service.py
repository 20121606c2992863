"""The recommendation service end to end on small data: features in Feast, champion in MLflow, BentoML over HTTP.

Its deployment features (shadow, canary, hot reload, the prediction log and the monitor's reference) are tested in
tests/services/recsys/test_deployment.py.
"""

from __future__ import annotations

import collections

import pytest

from feature_repo.recsys import ITEM_VIEW, USER_VIEW
from pipelines.designs import feature_definitions
from pipelines.platform.features import apply_feature_definitions, write_feature_rows
from pipelines.platform.infra import free_port
from pipelines.recsys.features import backfill_features
from pipelines.recsys.simulate import config_for_size, simulate_interactions
from pipelines.recsys.train import train_recsys
from tests.service_process import post, serving
from tests.services.contract import EXAMPLES, fuzz

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def service(tmp_path_factory, broker):
    from pipelines.settings import Settings

    home = tmp_path_factory.mktemp("recsys-e2e")
    settings = Settings(home=home, mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}", kafka_bootstrap=broker)
    interactions, items = simulate_interactions(config_for_size(15_000, seed=8))
    train_recsys(settings, interactions, items)
    users, item_rows = backfill_features(interactions, items)
    write_feature_rows(
        settings,
        apply_feature_definitions(settings, feature_definitions()),
        [(USER_VIEW, "user_id", users), (ITEM_VIEW, "item_id", item_rows)],
    )
    port = free_port()
    env = {
        "MLSD_HOME": str(home),
        "MLSD_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
        "MLSD_KAFKA_BOOTSTRAP": broker,  # the prediction log
        "MLSD_RECSYS_SERVICE_PORT": str(port),
    }
    with serving(["recsys", "serve"], env, port) as base:
        yield base, interactions, home


def test_a_known_user_gets_k_unseen_items_with_stages_and_latency(service):
    base, interactions, _ = service
    user = str(interactions["user_id"].iloc[-1])
    status, body = post(f"{base}/recommend", {"user_id": user, "k": 8})
    assert status == 200, body
    assert body["known_user"] is True and body["model_version"] == "1" and body["variant"] == "champion"
    assert len(body["request_id"]) == 32
    ids = [item["item_id"] for item in body["items"]]
    assert len(ids) == 8 == len(set(ids))
    recent = set(interactions.loc[interactions["user_id"] == user, "item_id"].tail(20))
    assert not recent & set(ids)  # the user's recent items are filtered out
    assert {item["stage"] for item in body["items"]} <= {"als", "item2item", "popular"}
    assert {"candidates", "features", "ranking", "reranking", "total"} <= set(body["latency_ms"])


def test_an_unknown_user_gets_cold_start_items(service):
    base, _, _ = service
    status, body = post(f"{base}/recommend", {"user_id": "someone-new", "k": 5})
    assert status == 200 and body["known_user"] is False and len(body["items"]) == 5


def test_invalid_requests_get_a_400_naming_the_field(service):
    base, _, _ = service
    status, body = post(f"{base}/recommend", {"user_id": "u", "k": 0})
    assert (status, body["error"]) == (400, "Invalid request body")
    assert body["detail"] == "Field 'k' is invalid: input should be greater than or equal to 1."


def test_the_load_test_command_drives_the_service_without_errors(service, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    base, interactions, _ = service
    path = tmp_path / "interactions.parquet"
    interactions.to_parquet(path)
    mlsd = Path(sys.executable).parent / "mlsd"
    args = ["loadtest", "recsys", "--rps", "20", "--duration", "3", "--url", f"{base}/recommend"]
    done = subprocess.run(
        [str(mlsd), *args, "--interactions", str(path), "--out-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((tmp_path / "recsys_20rps.json").read_text())
    assert result["sent"] == 60 and result["errors"] == 0 and result["ok"] == 60


def test_with_the_online_store_locked_popular_items_answer_flagged_and_full_answers_return(service):
    """A small online-store-outage drill over HTTP: another process holds the SQLite store's exclusive lock."""
    import time

    from pipelines.platform.service_drills import SqliteLock

    base, interactions, home = service
    user = str(interactions["user_id"].iloc[-1])
    lock = SqliteLock(home / "feast" / "online.db")
    try:
        lock.start()
        answers = [post(f"{base}/recommend", {"user_id": user, "k": 5}) for _ in range(4)]
        assert [status for status, _ in answers] == [200] * 4
        degraded = [body for _, body in answers if body["degraded"]]
        assert degraded, answers  # the first reads overrun their budget, then the breaker skips the store
        assert all(item["stage"] == "popular" for body in degraded for item in body["items"])
        assert all(len(body["items"]) == 5 and body["degraded_reason"] for body in degraded)
        recent = set(interactions.loc[interactions["user_id"] == user, "item_id"])
        assert not recent & {item["item_id"] for body in degraded for item in body["items"]}  # still unseen items
        lock.stop()
        deadline = time.monotonic() + 15  # full answers return without a restart once the breaker's probe succeeds
        status, body = post(f"{base}/recommend", {"user_id": user, "k": 5})
        while body["degraded"] and time.monotonic() < deadline:
            time.sleep(0.1)
            status, body = post(f"{base}/recommend", {"user_id": user, "k": 5})
        assert status == 200 and not body["degraded"] and body["variant"] == "champion"
    finally:
        lock.stop()


def test_loading_the_registered_recommender_unpickles_nothing(service):
    """What the service's watcher does, in this process so that Python's audit events can be heard."""
    from pipelines.recsys.serving import load_recsys_model
    from pipelines.settings import Settings
    from tests.factories import PickleWatch

    _, _, home = service
    settings = Settings(home=home, mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    with PickleWatch() as unpickled:
        model = load_recsys_model(settings, "1")
    assert model.version == "1" and model.model.item_ids
    assert unpickled.classes == []  # arrays (allow_pickle=False), a faiss index and XGBoost JSON only


# ---------------------------------------------------------------- generated requests


def test_generated_requests_get_no_server_error_and_every_answer_matches_the_document(service) -> None:
    answers = fuzz(service[0], "/recommend")
    by_status = collections.Counter(status for (_, _, status) in answers.elements())
    assert sum(n for (path, _, _), n in answers.items() if path == "/recommend") >= 2 * EXAMPLES, answers
    assert not any(status >= 500 for status in by_status), by_status
