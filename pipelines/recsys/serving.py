"""Recommending for one user: candidates → online features from Feast → ranker → re-ranking, timed per stage.

The BentoML service in `services/recsys/service.py` is a thin shell around `Recommender`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from feature_repo.recsys import ITEM_FEATURES, ITEM_VIEW, USER_FEATURES, USER_VIEW
from pipelines.platform.registry import CHAMPION
from pipelines.recsys.rerank import RerankConfig, rerank
from pipelines.settings import Settings


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: str = Field(min_length=1, max_length=64)
    k: int = Field(default=10, ge=1, le=100)


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    stage: str  # the generator that proposed it; the ranker and re-ranker ordered it


class RecommendResponse(BaseModel):
    user_id: str
    items: list[RecommendedItem]
    known_user: bool
    model_version: str
    latency_ms: dict[str, float]


def _online_rows(store: Any, view: str, key: str, ids: list[str], features: list[str]) -> pd.DataFrame:
    """Rows of one feature view for these entity ids (NaN where an entity has no row)."""
    response = store.get_online_features(
        features=[f"{view}:{name}" for name in features], entity_rows=[{key: value} for value in ids]
    ).to_dict()
    frame = pd.DataFrame({name: response[name] for name in features}, index=pd.Index(ids, name=key))
    for name in features:  # an entity with no row comes back as None: numbers become NaN, lists stay objects
        if not any(isinstance(value, list | np.ndarray) for value in frame[name]):
            frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(float)
    return frame


log = logging.getLogger(__name__)


def _one_thread(recommender: Any) -> None:
    """One request ranks ~150 rows: extra OpenMP threads in XGBoost and faiss only spin next to the server's."""
    import faiss

    faiss.omp_set_num_threads(1)
    recommender.ranker.set_params(n_jobs=1)
    _ = recommender.arrays  # build the per-catalogue arrays now, not on the first request


ITEM_READ_CHUNK = 2_000


class ItemFeatureTable:
    """The online item rows of the whole catalogue, held in memory and re-read from Feast in the background.

    Reading the ~150 candidate rows from the online store on every request cost ~12 ms, half the request;
    item windows (events per day/week/month) move slowly, so a table at most `refresh_seconds` old ranks the
    same. User rows are still read per request: they change with every interaction.
    """

    def __init__(self, store: Any, item_ids: list[str], refresh_seconds: float) -> None:
        self.store = store
        self.item_ids = item_ids
        self.refresh_seconds = refresh_seconds
        self.frame = self.read()
        self.refreshed_at = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read(self) -> pd.DataFrame:
        ids = self.item_ids
        chunks = [
            _online_rows(self.store, ITEM_VIEW, "item_id", ids[start : start + ITEM_READ_CHUNK], ITEM_FEATURES)
            for start in range(0, len(ids), ITEM_READ_CHUNK)
        ]
        return pd.concat(chunks) if chunks else pd.DataFrame(columns=ITEM_FEATURES).rename_axis("item_id")

    def start(self) -> None:
        if self.refresh_seconds > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="item-feature-refresh", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            try:
                frame = self.read()
            except Exception as exc:  # keep serving the last table; the next round tries again
                log.warning("item feature refresh failed, keeping the table from %.0f s ago: %s", self.age(), exc)
                continue
            self.frame, self.refreshed_at = frame, time.time()  # one reference swap: readers see old or new

    def age(self) -> float:
        return time.time() - self.refreshed_at

    def stop(self) -> None:
        self._stop.set()


class Recommender:
    def __init__(self, settings: Settings, rerank_config: RerankConfig | None = None) -> None:
        from mlflow import MlflowClient

        from pipelines.platform.features import open_feature_store
        from pipelines.recsys.train import MODEL_NAME, load_champion_recommender

        self.recommender = load_champion_recommender(settings).unwrap_python_model().recommender
        _one_thread(self.recommender)
        self.model_version = str(MlflowClient().get_model_version_by_alias(MODEL_NAME, CHAMPION).version)
        self.store = open_feature_store(settings)
        self.item_features = ItemFeatureTable(
            self.store, self.recommender.candidates.catalogue.items.tolist(), settings.recsys_item_refresh_seconds
        )
        self.item_features.start()
        self.rerank_config = rerank_config or RerankConfig()
        table = self.recommender.items
        self.categories = table["category"].astype(str).to_dict() if "category" in table else {}
        self.known_users = self.recommender.candidates.catalogue.user_index

    def recommend(self, request: RecommendRequest) -> RecommendResponse:
        from pipelines.recsys.rank import FeatureSnapshot

        clock = time.perf_counter()
        timings: dict[str, float] = {}
        found = self.recommender.candidates.generate_candidates([request.user_id], self.recommender.n_candidates)
        timings["candidates"] = time.perf_counter() - clock

        clock = time.perf_counter()
        # An entity without an online row is left out of the snapshot, as in training (its features stay NaN).
        users = _online_rows(self.store, USER_VIEW, "user_id", [request.user_id], USER_FEATURES).dropna(how="all")
        snapshot = FeatureSnapshot(users=users, items=self.item_features.frame, now=time.time())
        timings["features"] = time.perf_counter() - clock

        clock = time.perf_counter()
        scored = self.recommender.score(found, snapshot).sort_values("rank_score", ascending=False, kind="stable")
        ranked = list(
            zip(scored["item_id"].astype(str), scored["rank_score"].astype(float), scored["generator"], strict=True)
        )
        timings["ranking"] = time.perf_counter() - clock

        clock = time.perf_counter()
        recent = users["user_recent_items"].iloc[0] if len(users) else None
        seen = set(recent) if isinstance(recent, list | np.ndarray) else set()
        final = rerank(ranked, request.k, self.rerank_config, seen=seen, item_category=self.categories)
        timings["reranking"] = time.perf_counter() - clock
        timings["total"] = sum(timings.values())
        return RecommendResponse(
            user_id=request.user_id,
            items=[RecommendedItem(item_id=i, score=round(s, 6), stage=g) for i, s, g in final],
            known_user=request.user_id in self.known_users,
            model_version=self.model_version,
            latency_ms={name: round(seconds * 1000, 3) for name, seconds in timings.items()},
        )
