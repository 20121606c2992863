"""The recommendation loop end to end in the production configuration: stream processor → Feast (Redis online
store, SQL registry in PostgreSQL) → train → MLflow server over HTTP on PostgreSQL → BentoML service.

The session's `production_stack` (tests/conftest.py) runs docker-compose.yml's settings on the local PostgreSQL and
Redis; the stream processor and the service are the real `mlsd` processes compose runs. The embedded
configuration's service is tested in tests/services/recsys/test_service.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from feature_repo.recsys import FEATURE_SERVICE
from pipelines.designs import feature_definitions
from pipelines.platform.features import apply_feature_definitions, latest_per_entity, read_online
from pipelines.platform.infra import free_port, stack_env
from pipelines.platform.stream import make_producer
from pipelines.recsys.features import backfill_features
from pipelines.recsys.simulate import config_for_size, simulate_interactions
from pipelines.recsys.stream import replay_interactions
from pipelines.recsys.train import train_recsys
from tests.local_services import query, redis_keys
from tests.service_process import post, serving

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

GROUP = "recsys-features"


@pytest.fixture(scope="module")
def streamed(production_stack: SimpleNamespace) -> SimpleNamespace:
    """A champion trained on the older 85 % of the interactions, the newest 15 % through `mlsd recsys stream`."""
    settings, home = production_stack.settings, Path(production_stack.home)
    suffix = f"-{production_stack.token}-recsys"  # this module's ids in the shared Redis
    interactions, items = simulate_interactions(config_for_size(15_000, seed=8))
    interactions = interactions.assign(
        user_id=interactions["user_id"].astype(str) + suffix, item_id=interactions["item_id"].astype(str) + suffix
    )
    items = items.assign(item_id=items["item_id"].astype(str) + suffix)
    ordered = interactions.sort_values("timestamp", kind="stable")
    cut = int(len(ordered) * 0.85)
    history, live = ordered.iloc[:cut], ordered.iloc[cut:]
    train_recsys(settings, history, items)
    history.to_parquet(home / "recsys-history.parquet")
    items.to_parquet(home / "recsys-items.parquet")

    producer = make_producer(settings)
    replay_interactions(producer, live, items, rate=0)
    producer.flush()
    producer.close()
    command = [str(Path(sys.executable).parent / "mlsd"), "recsys", "stream", "--items", "recsys-items.parquet"]
    command += ["--history", "recsys-history.parquet", "--group", GROUP, "--idle-stop", "6"]
    run = subprocess.run(
        command, cwd=home, env={**os.environ, **stack_env(settings)}, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return SimpleNamespace(history=history, live=live, items=items, suffix=suffix)


@pytest.fixture(scope="module")
def service(production_stack: SimpleNamespace, streamed: SimpleNamespace) -> Iterator[str]:
    port = free_port()
    env = stack_env(production_stack.settings, recsys_service_port=str(port))
    with serving(["recsys", "serve"], env, port) as base:
        yield base


def test_each_store_is_the_production_one(production_stack: SimpleNamespace, streamed: SimpleNamespace) -> None:
    database = production_stack.database
    aliases = query(database, "SELECT name, alias, version FROM registered_model_aliases")
    assert ("recsys-ranker", "champion", 1) in aliases
    processors = {row[0] for row in query(database, "SELECT DISTINCT processor FROM mlsd_stream_positions")}
    assert any(GROUP in processor for processor in processors), processors
    # One Redis hash per user and per item this module wrote, every one carrying its suffix.
    everything = pd.concat([streamed.history, streamed.live])
    assert redis_keys(streamed.suffix) == everything["user_id"].nunique() + everything["item_id"].nunique()


def test_the_stream_processor_wrote_what_the_batch_backfill_computes_into_redis(
    production_stack: SimpleNamespace, streamed: SimpleNamespace
) -> None:
    everything = pd.concat([streamed.history, streamed.live])
    users, _ = backfill_features(everything, streamed.items)
    expected = latest_per_entity(users, "user_id").set_index("user_id")
    sample = expected.loc[streamed.live["user_id"].drop_duplicates().head(40)]
    store = apply_feature_definitions(production_stack.settings, feature_definitions())
    item = str(streamed.items["item_id"].iloc[0])
    online = read_online(store, FEATURE_SERVICE, [{"user_id": u, "item_id": item} for u in sample.index])
    assert [list(v) for v in online["user_recent_items"]] == [list(v) for v in sample["user_recent_items"]]
    assert online["user_events_30d"].tolist() == sample["user_events_30d"].tolist()


def test_a_user_gets_unseen_items_from_the_champion_and_the_streamed_history(
    streamed: SimpleNamespace, service: str
) -> None:
    live = streamed.live
    # A user active after training: their newest items are known only through the stream processor's rows.
    user = str(live["user_id"].iloc[-1])
    status, body = post(f"{service}/recommend", {"user_id": user, "k": 10})
    assert status == 200, body
    assert body["model_version"] == "1" and body["variant"] == "champion" and body["degraded"] is False
    ids = [item["item_id"] for item in body["items"]]
    assert len(ids) == 10 == len(set(ids)) and all(i.endswith(streamed.suffix) for i in ids)
    recent_live = set(live.loc[live["user_id"] == user, "item_id"].tail(5))
    assert recent_live and not recent_live & set(ids)

    status, body = post(f"{service}/recommend", {"user_id": "someone-new", "k": 5})
    assert status == 200 and body["known_user"] is False and len(body["items"]) == 5
