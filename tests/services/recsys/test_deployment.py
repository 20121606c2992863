"""The recommendation service's deployment features on small data, with the real broker, MLflow and Feast.

Two versions trained by the real pipeline: v1 on all interactions (the champion), v2 on the earlier 70 % (the
challenger, so its lists differ). Shadow, canary and the monitor's training reference are checked in process;
hot reload and the prediction log of a shadowed service over HTTP against `mlsd recsys serve`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from feature_repo.recsys import ITEM_VIEW, USER_VIEW
from pipelines.designs import feature_definitions
from pipelines.platform.deployment import TrafficRouter
from pipelines.platform.features import apply_feature_definitions, write_feature_rows
from pipelines.platform.infra import free_port, stack_env
from pipelines.platform.predictions import PredictionRecord
from pipelines.recsys.events import PREDICTIONS_TOPIC as RECSYS_PREDICTIONS_TOPIC
from pipelines.recsys.features import backfill_features
from pipelines.recsys.model import MODEL_NAME
from pipelines.recsys.monitoring import REQUEST_FEATURES
from pipelines.recsys.serving import Recommender, RecommendRequest
from pipelines.recsys.simulate import config_for_size, simulate_interactions
from pipelines.recsys.train import train_recsys
from pipelines.settings import Settings
from tests.service_process import post, scrape_until, serving, traffic_across

pytestmark = pytest.mark.e2e


def move_alias(alias: str, version: str) -> None:
    """Point an alias the way the gate and training do (audited): services serve nothing else."""
    from pipelines.platform.registry import set_alias

    set_alias(MODEL_NAME, alias, version, "promote" if alias == "champion" else "register", "test")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, broker: str) -> SimpleNamespace:
    home = tmp_path_factory.mktemp("recsys-deployment")
    settings = Settings(home=home, mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}", kafka_bootstrap=broker)
    interactions, items = simulate_interactions(config_for_size(15_000, seed=8))
    times = pd.to_datetime(interactions["timestamp"], utc=True)
    earlier = interactions[(times <= times.min() + 0.7 * (times.max() - times.min())).to_numpy()]
    assert train_recsys(settings, interactions, items).model_version == "1"
    assert train_recsys(settings, earlier, items, alias="challenger").model_version == "2"
    users, item_rows = backfill_features(interactions, items)
    write_feature_rows(
        settings,
        apply_feature_definitions(settings, feature_definitions()),
        [(USER_VIEW, "user_id", users), (ITEM_VIEW, "item_id", item_rows)],
    )
    active = interactions["user_id"].astype(str).drop_duplicates(keep="last").tail(40).tolist()
    return SimpleNamespace(
        settings=settings,
        users=[*active, "cold-1", "cold-2"],
        end=times.max().to_pydatetime(),
    )


def read_records(settings: Settings, request_ids: set[str], expected: int, timeout_s: float = 30) -> list[Any]:
    """The records of these requests on recsys.predictions, once `expected` of them have arrived."""
    from pipelines.platform.stream import read_topic

    deadline = time.monotonic() + timeout_s
    while True:
        events, _ = read_topic(settings, RECSYS_PREDICTIONS_TOPIC, PredictionRecord)
        found = [e for e in events if e.request_id in request_ids]
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_shadow_mode_answers_as_the_champion_alone_and_logs_both_recommendations(world) -> None:
    settings = world.settings
    move_alias("champion", "1")
    move_alias("challenger", "2")
    requests = [RecommendRequest(user_id=user, k=5) for user in world.users]
    alone = Recommender(settings, publish=False, watch=False)
    try:
        expected = [alone.recommend(r) for r in requests]
    finally:
        alone.close()
    shadowed = Recommender(settings.model_copy(update={"serving_mode": "shadow"}), watch=False)
    try:
        answers = [shadowed.recommend(r) for r in requests]
        assert shadowed.deployment.shadow.ran == len(requests) and shadowed.deployment.shadow.errors == 0
    finally:
        shadowed.close()  # flushes the prediction log

    def listed(response: Any) -> list[str]:
        return [item.item_id for item in response.items]

    assert [listed(a) for a in answers] == [listed(e) for e in expected]
    assert {(a.variant, a.model_version) for a in answers} == {("champion", "1")}

    records = read_records(settings, {a.request_id for a in answers}, 2 * len(answers))
    served = {r.request_id: r for r in records if r.served}
    shadow = {r.request_id: r for r in records if not r.served}
    assert set(served) == set(shadow) == {a.request_id for a in answers}
    for answer in answers:
        mine, theirs = served[answer.request_id], shadow[answer.request_id]
        assert (mine.variant, mine.model_version, mine.items) == ("champion", "1", listed(answer))
        assert (theirs.variant, theirs.model_version) == ("challenger", "2")
        assert mine.entity_id == theirs.entity_id == answer.user_id
        assert tuple(mine.features) == tuple(theirs.features) == REQUEST_FEATURES
        assert mine.design == "recsys" and mine.decision == "recommend" and len(theirs.items) == 5
    assert any(served[a.request_id].items != shadow[a.request_id].items for a in answers)  # another model answered
    cold = [served[a.request_id] for a in answers if a.user_id.startswith("cold-")]
    assert cold and all(r.features["known_user"] == 0.0 for r in cold)


def test_canary_sends_a_sticky_share_of_users_to_the_challenger(world) -> None:
    move_alias("champion", "1")
    move_alias("challenger", "2")
    settings = world.settings.model_copy(update={"serving_mode": "canary", "canary_share": 0.4})
    recommender = Recommender(settings, publish=False, watch=False)
    router = TrafficRouter("canary", 0.4, settings.seed)
    seen: dict[str, set[tuple[str, str]]] = {}
    try:
        for i in range(3 * 20):
            user = world.users[i % 20]
            answer = recommender.recommend(RecommendRequest(user_id=user, k=3))
            assert answer.variant == router.assign(user, True).served
            seen.setdefault(user, set()).add((answer.variant, answer.model_version))
    finally:
        recommender.close()
    assert all(len(variants) == 1 for variants in seen.values())  # a user sticks to one variant
    assert {next(iter(v)) for v in seen.values()} == {("champion", "1"), ("challenger", "2")}


def test_the_monitor_compares_the_logged_recommendations_with_the_training_reference(world) -> None:
    from pipelines.monitoring.monitor import run_monitor
    from pipelines.platform.drift import load_reference

    move_alias("champion", "1")
    since = datetime.now(UTC) - timedelta(milliseconds=5)
    recommender = Recommender(world.settings, watch=False)
    try:
        for i, user in enumerate(world.users):
            # Replayed requests carry their time: the ranker's clock and the record's are the simulated ones.
            at = world.end + timedelta(minutes=i)
            answer = recommender.recommend(RecommendRequest(user_id=user, timestamp=at))
            assert answer.model_version == "1"
    finally:
        recommender.close()

    run = run_monitor(world.settings, "recsys", window_size=20, idle_timeout=3, since=since)

    reference = load_reference(world.settings, MODEL_NAME, "1")
    assert reference is not None and reference.columns.tolist() == [*REQUEST_FEATURES, "score"]
    assert len(reference) > 100 and 0 < reference["known_user"].mean() < 1  # the window's new users are cold

    assert run.served_records == len(world.users) and len(run.windows) == 2
    first = run.windows[0]
    assert first.reference.startswith(f"{MODEL_NAME} v1 training reference (")
    assert set(first.drift.features) == set(REQUEST_FEATURES)
    assert first.drift.prediction is not None and first.drift.prediction.column == "score"
    assert first.start == world.end  # the record's time is the request's


# ---------------------------------------------------------------- the service over HTTP


@pytest.fixture(scope="module")
def service(world):
    move_alias("champion", "1")
    move_alias("challenger", "2")
    settings = world.settings
    port = free_port()
    env = stack_env(settings, recsys_service_port=str(port), serving_mode="shadow", model_refresh_seconds="0.5")
    with serving(["recsys", "serve"], env, port) as base:
        yield base


def model_info(base: str) -> dict[str, Any]:
    status, body = post(f"{base}/model", {})
    assert status == 200, body
    return body


def wait_for_versions(base: str, champion: str, challenger: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        info = model_info(base)
        if (info["champion"]["version"], (info["challenger"] or {}).get("version")) == (champion, challenger):
            return
        time.sleep(0.2)
    pytest.fail(f"the service did not load champion v{champion} and challenger v{challenger}")


def test_the_shadowed_service_logs_each_request_twice_and_shows_its_models(world, service) -> None:
    move_alias("champion", "1")
    move_alias("challenger", "2")
    wait_for_versions(service, "1", "2")
    answers = []
    for user in world.users[:10]:
        status, body = post(f"{service}/recommend", {"user_id": user, "k": 4})
        assert status == 200, body
        answers.append(body)
    assert {(a["variant"], a["model_version"]) for a in answers} == {("champion", "1")}
    records = read_records(world.settings, {a["request_id"] for a in answers}, 2 * len(answers))
    assert sorted((r.request_id, r.served) for r in records) == sorted(
        (a["request_id"], served) for a in answers for served in (True, False)
    )
    info = model_info(service)
    assert info["mode"] == "shadow" and info["prediction_log"]["topic"] == RECSYS_PREDICTIONS_TOPIC
    assert info["item_table"]["items"] >= info["champion"]["items"]  # both catalogues' item rows are held


def test_moving_the_champion_under_traffic_fails_no_request_and_the_new_version_answers(world, service) -> None:
    move_alias("champion", "1")
    move_alias("challenger", "2")
    wait_for_versions(service, "1", "2")

    def recommend(i: int) -> tuple[int, str]:
        status, body = post(f"{service}/recommend", {"user_id": world.users[i % len(world.users)], "k": 5})
        return status, body.get("model_version", "")

    def move() -> None:
        move_alias("champion", "2")
        wait_for_versions(service, "2", "2")

    results, moved_at = traffic_across(recommend, move, clients=3)
    failures = [r for r in results if r[0] != 200]
    assert not failures, failures[:5]
    versions = [version for _, version in results]
    assert "1" in versions[:moved_at]
    assert set(versions[moved_at + 3 :]) == {"2"}  # a few requests may have started before the swap

    shadow_series = 'mlsd_predictions_total{design="recsys",served="false",variant="challenger"}'
    metrics = scrape_until(service, shadow_series, lambda: recommend(0))
    assert 'mlsd_model_version_info{design="recsys",variant="champion",version="2"} 1.0' in metrics
    assert 'mlsd_model_version_info{design="recsys",variant="champion",version="1"} 0.0' in metrics
    assert shadow_series in metrics
