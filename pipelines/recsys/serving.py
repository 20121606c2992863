"""Recommending for one user: candidates → online features from Feast → ranker → re-ranking, timed per stage.

Which model answers is the platform's business (`pipelines.platform.deployment`), as for fraud: the champion, a
canary share of users (by a seeded hash of the user id, so a user sticks to one variant) on the challenger, or the
champion with the challenger in the shadow. The shadow reuses the user row and the item table of the request, so it
costs the challenger's own candidates, ranking and re-ranking, no Feast read. Both slots follow their registry
aliases (`recsys-ranker@champion` / `@challenger`), reloaded off the request path.

Every served and shadow recommendation is one `PredictionRecord` on `recsys.predictions`: the items in order,
the ranker's score of the top item, and `request_features` — the few user-level numbers a drift monitor watches.
The training run logs the same numbers for a sample of its users as the monitor's reference.

`services/recsys/service.py` only wraps `Recommender` in BentoML, so tests and benchmarks call this module directly.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from feature_repo.recsys import ITEM_FEATURES, ITEM_VIEW, USER_FEATURES, USER_VIEW
from pipelines.platform.deployment import Deployment, DeploymentMetrics, defer_to_event_loop
from pipelines.platform.events import EntityId, EventTime
from pipelines.platform.guard import GuardedDependency
from pipelines.platform.predictions import PredictionRecord, Variant
from pipelines.platform.watcher import CHALLENGER, ServingModel
from pipelines.recsys.candidates import Candidate
from pipelines.recsys.model import MODEL_NAME, load_recommender
from pipelines.recsys.monitoring import request_features, top_score
from pipelines.recsys.rerank import RerankConfig, rerank
from pipelines.settings import Settings

if TYPE_CHECKING:
    from pipelines.platform.features import OnlineRows
    from pipelines.recsys.rank import RecsysRanker

log = logging.getLogger("mlsd.recsys")
DESIGN_NAME = "recsys"  # the `design` of its prediction records and metrics


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: EntityId
    k: int = Field(default=10, ge=1, le=100, strict=True)
    # When the request happened, for replays of recorded traffic: the ranker's clock (hours since an item's last
    # event, ...) and the prediction record's time. Absent: now. Between 1970 and a day ahead of now.
    timestamp: EventTime | None = None


class RecommendedItem(BaseModel):
    item_id: str
    score: float
    stage: str  # the generator that proposed it; the ranker and re-ranker ordered it


class RecommendResponse(BaseModel):
    user_id: str
    items: list[RecommendedItem]
    known_user: bool
    model_version: str
    variant: Variant = "champion"  # champion, or challenger for a user in the canary share
    request_id: str = ""  # shared by this answer's record and the shadow's on recsys.predictions
    latency_ms: dict[str, float]
    degraded: bool = False  # True: the user's features could not be read in time, the items are the most popular
    degraded_reason: str = ""  # why, in one sentence


# ----------------------------------------------------------------------------------------------------------
# The model a slot holds


@dataclass(frozen=True)
class RecsysModel:
    """A registered recommender ready to answer: candidate model + ranker, and the lookups a request needs."""

    recommender: RecsysRanker
    categories: dict[str, str]  # item -> category, for the re-ranker's diversity

    @property
    def known_users(self) -> Mapping[str, int]:
        return self.recommender.candidates.catalogue.user_index

    @property
    def item_ids(self) -> list[str]:
        return [str(item) for item in self.recommender.candidates.catalogue.items.tolist()]


def _one_thread(recommender: RecsysRanker) -> None:
    """One request ranks ~150 rows: extra OpenMP threads in XGBoost and faiss only spin next to the server's."""
    import faiss

    faiss.omp_set_num_threads(1)
    recommender.ranker.set_params(n_jobs=1)


def load_recsys_model(settings: Settings, version: str) -> ServingModel[RecsysModel]:
    """The design's loader for the platform watcher: registered version → checked, single-threaded, warmed-up
    recommender. Its files are read as arrays, an index and XGBoost's JSON (no pickle)."""
    from pipelines.platform.registry import connect_mlflow

    connect_mlflow(settings, check=False)
    recommender, _ = load_recommender(version)
    from pipelines.recsys.rank import FEATURE_NAMES

    unknown = [name for name in recommender.feature_names if name not in FEATURE_NAMES]
    if unknown:
        raise ValueError(
            f"{MODEL_NAME} v{version} was trained on features this code does not compute "
            f"({', '.join(unknown[:3])}); retrain it with `mlsd recsys train`."
        )
    _one_thread(recommender)
    # The per-catalogue arrays, faiss and XGBoost's predictor are built on first use: here, not in a request.
    _ = recommender.arrays
    users = recommender.candidates.catalogue.users
    recommender.recommend([str(users[0]) if len(users) else "warm-up"], 10)
    table = recommender.items
    categories = {str(item): str(name) for item, name in table["category"].items()} if "category" in table else {}
    return ServingModel(
        MODEL_NAME,
        version,
        RecsysModel(recommender, categories),
        info={"items": len(recommender.candidates.catalogue.items), "n_candidates": recommender.n_candidates},
    )


# ----------------------------------------------------------------------------------------------------------
# The item rows, in memory


ITEM_READ_CHUNK = 2_000


class ItemFeatureTable:
    """The online item rows of the loaded models' catalogues, held in memory, at most `refresh_seconds` old.

    Reading the ~150 candidate rows from the online store on every request cost ~12 ms, half the request; item
    windows (events per day/week/month) move slowly, so a table refreshed in the background ranks the same. User
    rows are still read per request: they change with every interaction.

    A refresh re-reads only the rows written since the previous one when the store can say which (SQLite, from
    the write time `write_online_fast` stores), and every row otherwise (Redis); both read through the platform's
    `OnlineRows`, which skips Feast's per-value conversions. Re-reading all 15k rows through
    `get_online_features` cost 1.6–3.7 s of CPU with the GIL held, long enough to stall requests for up to 0.6 s.
    """

    def __init__(self, rows: OnlineRows, refresh_seconds: float) -> None:
        self.rows = rows
        self.refresh_seconds = refresh_seconds
        self.frame = pd.DataFrame(columns=rows.features, dtype=float).rename_axis(rows.join_key)
        self.refreshed_at = time.time()
        self.last_refresh: dict[str, Any] = {}
        self.refreshes = 0
        self.failures = 0
        self._ids: list[str] = []
        self._covered: set[str] = set()
        self._mark: int | None = None
        self._lock = threading.Lock()  # one writer at a time (refresh thread, model loads); readers never wait
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def cover(self, item_ids: Sequence[str]) -> int:
        """Add the rows of items not held yet (a newly loaded model's catalogue); returns how many were read."""
        with self._lock:
            new = [item for item in dict.fromkeys(str(i) for i in item_ids) if item not in self._covered]
            if not new:
                return 0
            if self._mark is None:
                self._mark = self.rows.mark()  # before the read: rows written during it are read again next time
            frame = self._read(new)
            self._ids += new
            self._covered.update(new)
            self.frame = frame if self.frame.empty else pd.concat([self.frame, frame])
            return len(new)

    def _read(self, ids: list[str]) -> pd.DataFrame:
        chunks = [self.rows.read(ids[start : start + ITEM_READ_CHUNK]) for start in range(0, len(ids), ITEM_READ_CHUNK)]
        return pd.concat(chunks) if chunks else self.rows.read([])

    def refresh(self) -> dict[str, Any]:
        """One round: the changed rows where the store can tell, all rows otherwise; one reference swap at the end."""
        started, clock = time.time(), time.perf_counter()
        with self._lock:
            changed = self.rows.written_since(self._mark) if self._mark is not None else None
            if changed is None:
                mark = self.rows.mark()
                frame, mode, rows = self._read(self._ids), "all", len(self._ids)
            else:
                update, mark = changed
                update = update[update.index.isin(self._covered)]
                frame, mode, rows = _replace_rows(self.frame, update), "changed", len(update)
            self._mark = mark
            self.frame, self.refreshed_at = frame, started  # readers see the old table or the new one
        self.refreshes += 1
        self.last_refresh = {"mode": mode, "rows": rows, "seconds": round(time.perf_counter() - clock, 4)}
        log.debug("item table refreshed: %s", self.last_refresh)
        return self.last_refresh

    def start(self) -> None:
        if self.refresh_seconds > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="item-feature-refresh", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_seconds):
            try:
                self.refresh()
            except Exception as exc:  # keep serving the last table; the next round tries again
                self.failures += 1
                log.warning("item feature refresh failed, keeping the table from %.0f s ago: %s", self.age(), exc)

    def age(self) -> float:
        return time.time() - self.refreshed_at

    def describe(self) -> dict[str, Any]:
        return {
            "items": len(self.frame),
            "age_seconds": round(self.age(), 1),
            "refresh_seconds": self.refresh_seconds,
            "refreshes": self.refreshes,
            "failed_refreshes": self.failures,
            "last_refresh": self.last_refresh,
        }

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None


def _replace_rows(frame: pd.DataFrame, update: pd.DataFrame) -> pd.DataFrame:
    """`frame` with the rows of `update` replaced (rows keep their place)."""
    if update.empty:
        return frame
    out = frame.copy()
    out.loc[update.index, update.columns] = update
    return out


# ----------------------------------------------------------------------------------------------------------
# Serving


@dataclass
class _Answer:
    """One model's answer to one request, before it becomes a response and a record."""

    final: list[Candidate]
    features: dict[str, float]
    score: float
    timings: dict[str, float]
    known_user: bool


class Recommender:
    def __init__(
        self,
        settings: Settings,
        rerank_config: RerankConfig | None = None,
        publish: bool = True,
        metrics: DeploymentMetrics | None = None,
        watch: bool = True,
        defer: Callable[[Callable[[], None]], Any] = defer_to_event_loop,
    ) -> None:
        from pipelines.platform.features import OnlineRows, open_feature_store
        from pipelines.platform.registry import connect_mlflow

        self.settings = settings
        connect_mlflow(settings, check=False)  # the watcher reports a registry that is away
        self.store = open_feature_store(settings)
        self.user_rows = OnlineRows(self.store, USER_VIEW, "user_id", USER_FEATURES)
        self.item_features = ItemFeatureTable(
            OnlineRows(self.store, ITEM_VIEW, "item_id", ITEM_FEATURES), settings.recsys_item_refresh_seconds
        )
        self.rerank_config = rerank_config or RerankConfig()
        # The user-row read is the request's only I/O: bounded, and skipped while the store keeps failing.
        self.store_guard = GuardedDependency.online_store(settings, partial(self.user_row, "warm-up"))
        # The item table exists before the first load: `_load` fills it with the loaded catalogue's rows.
        self.deployment: Deployment[RecsysModel] = Deployment.serving(
            DESIGN_NAME, MODEL_NAME, self._load, settings, publish, metrics, defer, watch
        )
        self.item_features.start()

    def _load(self, version: str) -> ServingModel[RecsysModel]:
        """The platform's loader plus the item rows of the new catalogue, read before the model can serve."""
        model = load_recsys_model(self.settings, version)
        self.item_features.cover(model.model.item_ids)
        return model

    @property
    def champion(self) -> ServingModel[RecsysModel]:
        return self.deployment.champion

    @property
    def recommender(self) -> RecsysRanker:
        return self.champion.model.recommender

    @property
    def model_version(self) -> str:
        return self.champion.version

    def user_row(self, user_id: str) -> pd.DataFrame:
        """The user's online row (no rows when the store has none: its features stay NaN, as in training)."""
        return self.user_rows.read([user_id]).dropna(how="all")

    def recommend(self, request: RecommendRequest) -> RecommendResponse:
        """Recommend without an event loop (tests, benchmarks): the user-row read still runs within its budget."""
        started = time.perf_counter()
        users, problem = self.store_guard.attempt_blocking(partial(self.user_row, request.user_id))
        return self.respond(request, users, problem, started)

    async def recommend_async(self, request: RecommendRequest) -> RecommendResponse:
        """The service's path: the user-row read runs off the event loop, waited for at most the budget."""
        started = time.perf_counter()
        users, problem = await self.store_guard.attempt(partial(self.user_row, request.user_id))
        return self.respond(request, users, problem, started)

    def respond(
        self, request: RecommendRequest, users: pd.DataFrame | None, problem: str | None, started: float
    ) -> RecommendResponse:
        """The answer from the user row read (or, without it, the most popular items), logged."""
        # Models taken once: a hot reload during this request changes the next request, not this one.
        assignment, model, shadow = self.deployment.assign(request.user_id)
        at = request.timestamp or datetime.now(UTC)
        if users is None:
            return self._popular(request, at, model, assignment.served, problem or "", started)
        items = self.item_features.frame
        features_s = time.perf_counter() - started
        answer = self._answer(model.model, request, users, items, at)
        answer.timings["features"] += features_s
        request_id = uuid.uuid4().hex
        latency_ms = {name: round(seconds * 1000, 3) for name, seconds in answer.timings.items()}
        latency_ms["total"] = round((time.perf_counter() - started) * 1000, 3)
        response = RecommendResponse(
            user_id=request.user_id,
            items=[RecommendedItem(item_id=i, score=round(s, 6), stage=g) for i, s, g in answer.final],
            known_user=answer.known_user,
            model_version=model.version,
            variant=assignment.served,
            request_id=request_id,
            latency_ms=latency_ms,
        )
        self.deployment.log(
            _record(request, at, request_id, model, assignment.served, True, answer, latency_ms["total"])
        )
        if shadow is not None:
            self.deployment.shadow.submit(
                lambda: self._shadow(request, at, request_id, shadow, users, items, features_s)
            )
        return response

    def _popular(
        self,
        request: RecommendRequest,
        at: datetime,
        model: ServingModel[RecsysModel],
        variant: Variant,
        problem: str,
        started: float,
    ) -> RecommendResponse:
        """No user row, so no ranking: the k most popular items the user has not interacted with, flagged."""
        candidates = model.model.recommender.candidates
        users = candidates.catalogue.user_codes([request.user_id])
        [(codes, scores)] = candidates.popular(users, request.k, exclude_seen=True)
        final = [
            (str(candidates.catalogue.items[code]), float(score), "popular")
            for code, score in zip(codes.tolist(), scores.tolist(), strict=True)
        ]
        known = request.user_id in model.model.known_users
        request_id = uuid.uuid4().hex
        total_ms = round((time.perf_counter() - started) * 1000, 3)
        answer = _Answer(final, {}, final[0][1] if final else 0.0, {}, known)
        record = _record(request, at, request_id, model, variant, True, answer, total_ms)
        self.deployment.log_degraded(record, problem, "online_store")
        return RecommendResponse(
            user_id=request.user_id,
            items=[RecommendedItem(item_id=i, score=round(s, 6), stage=g) for i, s, g in final],
            known_user=known,
            model_version=model.version,
            variant=variant,
            request_id=request_id,
            latency_ms={"total": total_ms},
            degraded=True,
            degraded_reason=problem,
        )

    def _answer(
        self, model: RecsysModel, request: RecommendRequest, users: pd.DataFrame, items: pd.DataFrame, at: datetime
    ) -> _Answer:
        from pipelines.recsys.rank import FeatureSnapshot

        recommender, timings = model.recommender, {}
        clock = time.perf_counter()
        found = recommender.candidates.generate_candidates([request.user_id], recommender.n_candidates)
        timings["candidates"] = time.perf_counter() - clock

        clock = time.perf_counter()
        snapshot = FeatureSnapshot(users=users, items=items, now=at.timestamp())
        user = users.iloc[0].to_dict() if len(users) else None
        known = request.user_id in model.known_users
        features = request_features(user, known, found.get(request.user_id, []))
        timings["features"] = time.perf_counter() - clock

        clock = time.perf_counter()
        scored = recommender.score(found, snapshot).sort_values("rank_score", ascending=False, kind="stable")
        ranked = list(
            zip(scored["item_id"].astype(str), scored["rank_score"].astype(float), scored["generator"], strict=True)
        )
        timings["ranking"] = time.perf_counter() - clock

        clock = time.perf_counter()
        recent = user.get("user_recent_items") if user else None
        seen = set(recent) if isinstance(recent, list | np.ndarray) else set()
        final = rerank(ranked, request.k, self.rerank_config, seen=seen, item_category=model.categories)
        timings["reranking"] = time.perf_counter() - clock
        return _Answer(final, features, top_score(ranked, final), timings, known)

    def _shadow(
        self,
        request: RecommendRequest,
        at: datetime,
        request_id: str,
        model: ServingModel[RecsysModel],
        users: pd.DataFrame,
        items: pd.DataFrame,
        features_s: float,
    ) -> None:
        """The challenger's answer to a request already answered, from the same user row and item table.

        Its latency is the shared feature read plus its own candidates, ranking and re-ranking: what serving it
        would have cost.
        """
        started = time.perf_counter()
        answer = self._answer(model.model, request, users, items, at)
        latency_ms = round((features_s + time.perf_counter() - started) * 1000, 3)
        self.deployment.log(_record(request, at, request_id, model, CHALLENGER, False, answer, latency_ms))

    def describe(self) -> dict[str, Any]:
        """What /model shows: both slots, routing, reloads, the prediction log and the item table."""
        return {
            **self.deployment.describe(),
            "item_table": self.item_features.describe(),
            "online_store": self.store_guard.describe(),
        }

    def close(self) -> None:
        self.item_features.stop()
        self.deployment.close()
        self.store_guard.close()


def _record(
    request: RecommendRequest,
    at: datetime,
    request_id: str,
    model: ServingModel[RecsysModel],
    variant: Variant,
    served: bool,
    answer: _Answer,
    latency_ms: float,
) -> PredictionRecord:
    return PredictionRecord(
        design=DESIGN_NAME,
        request_id=request_id,
        entity_id=request.user_id,
        timestamp=at,
        model_name=model.name,
        model_version=model.version,
        variant=variant,
        served=served,
        features=dict(answer.features),
        score=round(answer.score, 6),
        decision="recommend",
        items=[item for item, _, _ in answer.final],
        latency_ms=latency_ms,
    )
