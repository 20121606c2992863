"""Candidate retrieval: the first of the two recommendation stages, a few hundred items per user out of the catalogue.

Three generators, merged with a quota each so that none can crowd the others out:

- ``als``: implicit-feedback matrix factorisation (`implicit` ALS). Confidence is ``1 + alpha * log1p(weight)``
  summed per (user, item), so a purchase counts more than a view without one heavy user dominating. ALS was
  chosen over BPR (both available through `CandidateConfig.algorithm`) by measured recall: on a temporal split of
  ~200k simulated interactions ALS (24 factors, alpha 10) reached recall@100 0.43 in ~1 s of fitting, while the
  best BPR tried (32 factors, 200 epochs, learning rate 0.05) reached 0.31 in ~7.5 s, below plain popularity
  (0.35). Few factors win because the simulated tastes are low-dimensional; 64 factors overfit (0.39).
  Served through a faiss HNSW index (inner product) over item factors, queried with the user factor.
- ``item2item``: the user's most recently seen items → their nearest items in the same index. Helps users with
  few interactions, whose user factor is mostly regularisation.
- ``popular``: the most weighted interactions in a recent window, with a freshness boost for new items. The only
  generator for users unknown at fit time (cold start), and the way brand-new items get in at all.

Nothing is pickled: `CandidateModel.save` writes numpy arrays (``model.npz``), the faiss index (``items.faiss``)
and the settings (``config.json``), so a service can load it from an MLflow artifact directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

GENERATORS = ("als", "item2item", "popular")
SECONDS_PER_DAY = 86_400.0
Candidate = tuple[str, float, str]


@dataclass(frozen=True)
class CandidateConfig:
    """Settings of the candidate stage; the same settings and data (seed included) give the same candidates."""

    algorithm: str = "als"  # "als" or "bpr"
    factors: int = 24
    iterations: int = 15
    regularization: float = 1.0
    alpha: float = 10.0  # ALS confidence per unit of log1p(summed weight)
    learning_rate: float = 0.05  # BPR only
    seed: int = 7
    num_threads: int = 2  # implicit's own threads; BLAS is held to one thread during the fit
    # faiss HNSW over item factors
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 256  # ~0.93 of the exact top-200 at 15k items, ~1 ms per user
    # popularity / recency
    recent_days: float = 7.0
    fresh_days: float = 3.0
    fresh_boost: float = 3.0  # a brand-new item's score is multiplied by (1 + fresh_boost)
    # item-to-item
    recent_items: int = 5  # seen items per user used as seeds, most recent first
    neighbours: int = 50  # neighbours per seed item
    # share of the n candidates each generator is guaranteed (before the rest is filled by rank)
    quotas: tuple[tuple[str, float], ...] = (("als", 0.6), ("item2item", 0.2), ("popular", 0.2))

    def __post_init__(self) -> None:
        if self.algorithm not in ("als", "bpr"):
            raise ValueError(f"algorithm must be 'als' or 'bpr', got {self.algorithm!r}.")
        for name in ("factors", "iterations", "hnsw_m", "ef_construction", "ef_search", "recent_items", "neighbours"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name, share in self.quotas:
            if name not in GENERATORS:
                raise ValueError(f"unknown generator {name!r} in quotas; choose from {', '.join(GENERATORS)}.")
            if not 0 <= share <= 1:
                raise ValueError(f"the quota of {name} must lie between 0 and 1, got {share}.")
        if sum(share for _, share in self.quotas) > 1 + 1e-9:
            raise ValueError("the quotas add up to more than 1; lower them so they share the n candidates.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CandidateConfig:
        values = dict(values)
        values["quotas"] = tuple((str(name), float(share)) for name, share in values.get("quotas", ()))
        return cls(**values)


@dataclass
class Catalogue:
    """user_id / item_id strings ↔ contiguous indices; items come from the item table and the interactions."""

    users: np.ndarray  # index -> user_id (str)
    items: np.ndarray  # index -> item_id (str)
    user_index: dict[str, int] = field(init=False, repr=False)
    item_index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.users = np.asarray(self.users, dtype=str)
        self.items = np.asarray(self.items, dtype=str)
        self.user_index = {user: i for i, user in enumerate(self.users.tolist())}
        self.item_index = {item: i for i, item in enumerate(self.items.tolist())}

    @classmethod
    def build(cls, interactions: pd.DataFrame, items: pd.DataFrame | None = None) -> Catalogue:
        users = np.sort(interactions["user_id"].astype(str).unique())
        known = interactions["item_id"].astype(str)
        if items is not None:
            known = pd.concat([items["item_id"].astype(str), known], ignore_index=True)
        return cls(users=users, items=np.sort(known.unique()))

    def user_codes(self, user_ids: Iterable[str]) -> np.ndarray:
        """Index of each user, -1 for a user unknown at fit time."""
        return np.array([self.user_index.get(str(user), -1) for user in user_ids], dtype=np.int64)


# ----------------------------------------------------------------------------------------------------------
# Fitting


def _check_columns(frame: pd.DataFrame, needed: Sequence[str], what: str) -> None:
    missing = [column for column in needed if column not in frame.columns]
    if missing:
        raise ValueError(f"the {what} lack the column {missing[0]!r}; add it or rename the column that holds it.")


def _user_items(train: pd.DataFrame, catalogue: Catalogue) -> sp.csr_matrix:
    """Summed weight per (user, item) as a users × items CSR matrix."""
    users = train["user_id"].astype(str).map(catalogue.user_index).to_numpy(dtype=np.int64)
    items = train["item_id"].astype(str).map(catalogue.item_index).to_numpy(dtype=np.int64)
    weight = train["weight"].to_numpy(dtype=np.float64) if "weight" in train.columns else np.ones(len(train))
    matrix = sp.csr_matrix(
        (weight, (users, items)), shape=(len(catalogue.users), len(catalogue.items)), dtype=np.float64
    )
    matrix.sum_duplicates()
    matrix.sort_indices()
    return matrix


def _recent_items(train: pd.DataFrame, catalogue: Catalogue, keep: int) -> sp.csr_matrix:
    """Each user's last `keep` distinct items, most recent first, as CSR rows (data holds 1 + position)."""
    frame = pd.DataFrame(
        {
            "user": train["user_id"].astype(str).map(catalogue.user_index).to_numpy(dtype=np.int64),
            "item": train["item_id"].astype(str).map(catalogue.item_index).to_numpy(dtype=np.int64),
            "time": pd.to_datetime(train["timestamp"], utc=True).astype("int64").to_numpy(),
        }
    )
    frame = frame.sort_values(["user", "time"], ascending=[True, False], kind="stable")
    frame = frame.drop_duplicates(["user", "item"], keep="first")
    frame["position"] = frame.groupby("user").cumcount()
    frame = frame[frame["position"] < keep]
    counts = np.bincount(frame["user"].to_numpy(), minlength=len(catalogue.users))
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return sp.csr_matrix(
        (frame["position"].to_numpy(dtype=np.float32) + 1, frame["item"].to_numpy(), indptr),
        shape=(len(catalogue.users), len(catalogue.items)),
    )


def _popularity(
    train: pd.DataFrame, items: pd.DataFrame | None, catalogue: Catalogue, config: CandidateConfig
) -> np.ndarray:
    """Recent weighted interactions × (1 + boost · e^(−age / fresh_days)); −inf for items not yet created."""
    times = pd.to_datetime(train["timestamp"], utc=True)
    now = times.max()
    recent = train[times >= now - pd.Timedelta(days=config.recent_days)]
    codes = recent["item_id"].astype(str).map(catalogue.item_index).to_numpy(dtype=np.int64)
    weight = recent["weight"].to_numpy(dtype=np.float64) if "weight" in recent.columns else np.ones(len(recent))
    score = np.bincount(codes, weights=weight, minlength=len(catalogue.items)) + 1.0
    if items is not None and "created_at" in items.columns:
        created = pd.Series(pd.NaT, index=range(len(catalogue.items)), dtype="datetime64[ns, UTC]")
        codes = items["item_id"].astype(str).map(catalogue.item_index).to_numpy(dtype=np.int64)
        created.iloc[codes] = pd.to_datetime(items["created_at"], utc=True).to_numpy()
        age_days = ((now - created).dt.total_seconds() / SECONDS_PER_DAY).to_numpy(dtype=np.float64)
        fresh = np.where(
            np.isnan(age_days), 0.0, np.exp(-np.clip(np.nan_to_num(age_days), 0, None) / config.fresh_days)
        )
        score = score * (1.0 + config.fresh_boost * fresh)
        score[age_days < 0] = -np.inf  # not created yet at training time
    return score


def _fit_factors(matrix: sp.csr_matrix, config: CandidateConfig) -> tuple[np.ndarray, np.ndarray]:
    from implicit.cpu.als import AlternatingLeastSquares
    from implicit.cpu.bpr import BayesianPersonalizedRanking
    from threadpoolctl import threadpool_limits

    confidence = matrix.copy()
    confidence.data = np.log1p(confidence.data).astype(np.float32)
    model: Any
    limits = threadpool_limits(1, "blas")  # implicit checks the BLAS threads when the model is built
    if config.algorithm == "bpr":
        model = BayesianPersonalizedRanking(
            factors=config.factors,
            learning_rate=config.learning_rate,
            regularization=config.regularization,
            iterations=config.iterations,
            num_threads=config.num_threads,
            random_state=config.seed,
        )
    else:
        model = AlternatingLeastSquares(
            factors=config.factors,
            regularization=config.regularization,
            alpha=config.alpha,
            iterations=config.iterations,
            num_threads=config.num_threads,
            random_state=config.seed,
        )
    try:
        model.fit(confidence.astype(np.float32).tocsr(), show_progress=False)
    finally:
        limits.restore_original_limits()
    return np.ascontiguousarray(model.user_factors, np.float32), np.ascontiguousarray(model.item_factors, np.float32)


def _build_index(vectors: np.ndarray, config: CandidateConfig) -> Any:
    import faiss

    index = faiss.IndexHNSWFlat(vectors.shape[1], config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = config.ef_construction
    index.hnsw.efSearch = config.ef_search
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, np.float32))
    return index


# ----------------------------------------------------------------------------------------------------------
# The model


@dataclass
class CandidateModel:
    """Fitted generators plus what serving needs: factors, the ANN index, popularity, and each user's seen items."""

    config: CandidateConfig
    catalogue: Catalogue
    user_factors: np.ndarray  # (users, factors)
    item_factors: np.ndarray  # (items, factors)
    indexed_items: np.ndarray  # catalogue index of each vector in the ANN index (items seen in training)
    index: Any  # faiss index over item_factors[indexed_items]
    popularity: np.ndarray  # (items,) popularity/recency score, -inf for items that did not exist yet
    seen: sp.csr_matrix  # users × items summed training weight
    recent: sp.csr_matrix  # users × items, 1 + recency position of the last few seen items
    fit_seconds: float = 0.0
    _popular_order: np.ndarray = field(init=False, repr=False)
    _indexed: np.ndarray = field(init=False, repr=False)  # (items,) bool: has a vector in the ANN index

    def __post_init__(self) -> None:
        self._indexed = np.zeros(len(self.catalogue.items), dtype=bool)
        self._indexed[self.indexed_items] = True
        order = np.argsort(-self.popularity, kind="stable")
        self._popular_order = order[np.isfinite(self.popularity[order])]

    @classmethod
    def fit(
        cls, train: pd.DataFrame, items: pd.DataFrame | None = None, config: CandidateConfig | None = None
    ) -> CandidateModel:
        config = config or CandidateConfig()
        _check_columns(train, ["user_id", "item_id", "timestamp"], "training interactions")
        if train.empty:
            raise ValueError("the training interactions are empty; there is nothing to learn candidates from.")
        if items is not None:
            _check_columns(items, ["item_id"], "items")
        started = time.perf_counter()
        catalogue = Catalogue.build(train, items)
        seen = _user_items(train, catalogue)
        user_factors, item_factors = _fit_factors(seen, config)
        indexed = np.flatnonzero(np.diff(seen.tocsc().indptr) > 0)
        return cls(
            config=config,
            catalogue=catalogue,
            user_factors=user_factors,
            item_factors=item_factors,
            indexed_items=indexed,
            index=_build_index(item_factors[indexed], config),
            popularity=_popularity(train, items, catalogue, config),
            seen=seen,
            recent=_recent_items(train, catalogue, config.recent_items),
            fit_seconds=time.perf_counter() - started,
        )

    # -- persistence -----------------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the model into directory `path` (created if needed): config.json, model.npz, items.faiss."""
        import faiss

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        np.savez(
            folder / "model.npz",
            users=self.catalogue.users,
            items=self.catalogue.items,
            user_factors=self.user_factors,
            item_factors=self.item_factors,
            indexed_items=self.indexed_items,
            popularity=self.popularity,
            seen_indptr=self.seen.indptr,
            seen_indices=self.seen.indices,
            seen_data=self.seen.data,
            recent_indptr=self.recent.indptr,
            recent_indices=self.recent.indices,
            recent_data=self.recent.data,
        )
        faiss.write_index(self.index, str(folder / "items.faiss"))
        return folder

    @classmethod
    def load(cls, path: str | Path) -> CandidateModel:
        import faiss

        folder = Path(path)
        for name in ("config.json", "model.npz", "items.faiss"):
            if not (folder / name).is_file():
                raise FileNotFoundError(
                    f"{folder / name} is missing; point to a folder written by CandidateModel.save."
                )
        config = CandidateConfig.from_dict(json.loads((folder / "config.json").read_text()))
        with np.load(folder / "model.npz", allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        catalogue = Catalogue(users=arrays["users"], items=arrays["items"])
        shape = (len(catalogue.users), len(catalogue.items))
        index = faiss.read_index(str(folder / "items.faiss"))
        hnsw: Any = faiss.downcast_index(index)
        hnsw.hnsw.efSearch = config.ef_search
        return cls(
            config=config,
            catalogue=catalogue,
            user_factors=arrays["user_factors"],
            item_factors=arrays["item_factors"],
            indexed_items=arrays["indexed_items"],
            index=index,
            popularity=arrays["popularity"],
            seen=sp.csr_matrix((arrays["seen_data"], arrays["seen_indices"], arrays["seen_indptr"]), shape=shape),
            recent=sp.csr_matrix(
                (arrays["recent_data"], arrays["recent_indices"], arrays["recent_indptr"]), shape=shape
            ),
        )

    # -- generators --------------------------------------------------------------------------------------
    # Each takes catalogue user codes (-1 unknown) and returns, per user, (item codes, scores) best first.

    def _seen_of(self, user: int) -> np.ndarray:
        if user < 0:
            return np.empty(0, dtype=np.int64)
        return self.seen.indices[self.seen.indptr[user] : self.seen.indptr[user + 1]]

    def _max_seen(self, users: np.ndarray) -> int:
        known = users[users >= 0]
        return int(np.diff(self.seen.indptr)[known].max()) if len(known) else 0

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """ANN search; returns catalogue item codes (-1 where fewer than k exist) and inner products."""
        k = max(1, min(k, len(self.indexed_items)))
        if len(queries) == 0 or len(self.indexed_items) == 0:
            return np.full((len(queries), k), -1, dtype=np.int64), np.zeros((len(queries), k), np.float32)
        scores, ids = self.index.search(np.ascontiguousarray(queries, np.float32), k)
        codes = np.where(ids >= 0, self.indexed_items[np.maximum(ids, 0)], -1)
        return codes, scores

    def _finish(
        self, user: int, codes: np.ndarray, scores: np.ndarray, n: int, exclude_seen: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        keep = codes >= 0
        if exclude_seen and user >= 0:
            keep &= ~np.isin(codes, self._seen_of(user))
        return codes[keep][:n], scores[keep][:n]

    def als(self, users: np.ndarray, n: int, exclude_seen: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        out: list[tuple[np.ndarray, np.ndarray]] = [(np.empty(0, np.int64), np.empty(0, np.float32))] * len(users)
        known = np.flatnonzero(users >= 0)
        if len(known) == 0:
            return out
        depth = n + (self._max_seen(users) if exclude_seen else 0)
        codes, scores = self._search(self.user_factors[users[known]], depth)
        for row, position in enumerate(known):
            out[position] = self._finish(int(users[position]), codes[row], scores[row], n, exclude_seen)
        return out

    def item2item(
        self, users: np.ndarray, n: int, exclude_seen: bool, recent: Sequence[Sequence[int]] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Neighbours of the user's recent items, scored by their best similarity to any of them."""
        seeds: list[np.ndarray] = []
        for position, user in enumerate(users):
            if recent is not None and len(recent[position]):
                seed = np.asarray(recent[position], dtype=np.int64)
            elif user >= 0:
                row = slice(self.recent.indptr[user], self.recent.indptr[user + 1])
                seed = self.recent.indices[row][np.argsort(self.recent.data[row], kind="stable")]
            else:
                seed = np.empty(0, dtype=np.int64)
            # an item nobody interacted with has no vector to find neighbours of
            seeds.append(seed[self._indexed[seed]][: self.config.recent_items])
        flat = np.concatenate(seeds) if seeds else np.empty(0, dtype=np.int64)
        depth = self.config.neighbours + (self._max_seen(users) if exclude_seen else 0)
        codes, scores = self._search(self.item_factors[flat], max(depth, n // max(self.config.recent_items, 1)))
        out: list[tuple[np.ndarray, np.ndarray]] = []
        start = 0
        for position, user in enumerate(users):
            count = len(seeds[position])
            block_codes = codes[start : start + count].ravel()
            block_scores = scores[start : start + count].ravel()
            start += count
            drop = np.isin(block_codes, seeds[position])  # the seeds themselves are no news
            block_codes, block_scores = block_codes[~drop], block_scores[~drop]
            order = np.argsort(-block_scores, kind="stable")
            block_codes, block_scores = block_codes[order], block_scores[order]
            _, first = np.unique(block_codes, return_index=True)
            first.sort()
            out.append(self._finish(int(user), block_codes[first], block_scores[first], n, exclude_seen))
        return out

    def popular(self, users: np.ndarray, n: int, exclude_seen: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        depth = n + (self._max_seen(users) if exclude_seen else 0)
        codes = self._popular_order[:depth]
        scores = self.popularity[codes].astype(np.float32)
        return [self._finish(int(user), codes, scores, n, exclude_seen) for user in users]

    def generator(
        self, name: str, users: np.ndarray, n: int, exclude_seen: bool, recent: Sequence[Sequence[int]] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        if name == "als":
            return self.als(users, n, exclude_seen)
        if name == "item2item":
            return self.item2item(users, n, exclude_seen, recent)
        if name == "popular":
            return self.popular(users, n, exclude_seen)
        raise ValueError(f"unknown generator {name!r}; choose from {', '.join(GENERATORS)}.")

    # -- merged candidates ---------------------------------------------------------------------------------

    def generate_candidates(
        self,
        user_ids: Sequence[str],
        n: int,
        exclude_seen: bool = True,
        recent_items: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, list[Candidate]]:
        """Up to n distinct (item_id, score, generator) per user; unknown users get popularity/recency candidates.

        Each generator first places its best items up to its quota (share of n); the remaining places go to the
        best-ranked items left over, ranks compared as a share of each generator's list. An item several generators
        propose appears once, with the generator (and that generator's own score) that ranked it highest.
        `recent_items` (item ids, most recent first) replaces the seeds of the item-to-item generator, e.g. with a
        session's items for a user unknown at fit time.
        """
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}.")
        user_ids = [str(user) for user in user_ids]
        users = self.catalogue.user_codes(user_ids)
        recent = None
        if recent_items is not None:
            index = self.catalogue.item_index
            recent = [[index[item] for item in recent_items.get(user, ()) if item in index] for user in user_ids]
        results = {name: self.generator(name, users, n, exclude_seen, recent) for name in GENERATORS}
        quotas = dict(self.config.quotas)
        merged: dict[str, list[Candidate]] = {}
        items = self.catalogue.items
        for position, user_id in enumerate(user_ids):
            lists = {name: results[name][position] for name in GENERATORS}
            merged[user_id] = [(str(items[code]), float(score), name) for code, score, name in _merge(lists, quotas, n)]
        return merged

    def candidate_lists(
        self, user_ids: Sequence[str], n: int, exclude_seen: bool = True, generator: str | None = None
    ) -> dict[str, list[str]]:
        """Item ids only, from one generator or (None) the merge: what the recall table reads."""
        if generator is None:
            return {
                user: [item for item, _, _ in found]
                for user, found in self.generate_candidates(user_ids, n, exclude_seen).items()
            }
        users = self.catalogue.user_codes(user_ids)
        lists = self.generator(generator, users, n, exclude_seen)
        items = self.catalogue.items
        return {str(user): items[codes].tolist() for user, (codes, _) in zip(user_ids, lists, strict=True)}


def _merge(
    lists: Mapping[str, tuple[np.ndarray, np.ndarray]], quotas: Mapping[str, float], n: int
) -> list[tuple[int, float, str]]:
    """Quota places first (in generator order), then the rest by relative rank; each item once."""
    chosen: dict[int, tuple[float, str, float]] = {}  # code -> (relative rank, generator, score)
    best: dict[int, tuple[float, str, float]] = {}
    for name, (codes, scores) in lists.items():
        length = max(len(codes), 1)
        for rank, (code, score) in enumerate(zip(codes.tolist(), scores.tolist(), strict=True)):
            entry = (rank / length, name, score)
            if code not in best or entry[0] < best[code][0]:
                best[code] = entry
    for name, (codes, _) in lists.items():
        quota = int(round(quotas.get(name, 0.0) * n))
        taken = 0
        for code in codes.tolist():
            if taken >= quota or len(chosen) >= n:
                break
            if code not in chosen:
                chosen[code] = best[code]
                taken += 1
    if len(chosen) < n:
        for code, entry in sorted(best.items(), key=lambda pair: (pair[1][0], GENERATORS.index(pair[1][1]))):
            if len(chosen) >= n:
                break
            chosen.setdefault(code, entry)
    ordered = sorted(chosen.items(), key=lambda pair: (pair[1][0], GENERATORS.index(pair[1][1])))
    return [(code, score, name) for code, (_, name, score) in ordered]


# ----------------------------------------------------------------------------------------------------------
# Offline evaluation


def candidate_recall(
    model: CandidateModel,
    relevant: Mapping[str, Set[str]],
    ns: Sequence[int] = (100, 200),
    exclude_seen: bool = True,
) -> pd.DataFrame:
    """recall@n of each generator alone and of the merge, for users with held-out items.

    Columns: generator, n, users, recall (macro: mean of per-user share of test items found), micro. `relevant`
    is the per-user set of test items (see `pipelines.recsys.splits.test_relevance`).
    """
    from pipelines.platform.ranking import recall_at

    users = [user for user, found in relevant.items() if found]
    rows = []
    for n in ns:
        for name in (*GENERATORS, None):
            lists = model.candidate_lists(users, n, exclude_seen, name)
            result = recall_at(lists, relevant, n)
            rows.append(
                {
                    "generator": name or "merged",
                    "n": n,
                    "users": result.users,
                    "recall": result.macro,
                    "micro": result.micro,
                }
            )
    return pd.DataFrame(rows)


def ann_recall(model: CandidateModel, user_ids: Sequence[str], k: int) -> float:
    """Share of the exact top-k inner-product items (over indexed items) the ANN index also returns."""
    users = model.catalogue.user_codes(user_ids)
    users = users[users >= 0]
    if len(users) == 0:
        return float("nan")
    queries = model.user_factors[users]
    vectors = model.item_factors[model.indexed_items]
    k = min(k, len(model.indexed_items))
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
    _, approx = model.index.search(np.ascontiguousarray(queries, np.float32), k)
    hits = [len(np.intersect1d(a, e)) for a, e in zip(approx, exact, strict=True)]
    return float(np.sum(hits) / (len(users) * k))
