"""Candidate retrieval: the first of the two recommendation stages, a few hundred items per user out of the catalogue.

Three generators, merged by weighted reciprocal-rank fusion:

- ``als``: implicit-feedback matrix factorisation (`implicit` ALS). Confidence is ``1 + alpha * log1p(weight)``
  summed per (user, item), so a purchase counts more than a view without one heavy user dominating. ALS was
  chosen over BPR (both available through `CandidateConfig.algorithm`) by measured recall: on a temporal split of
  ~200k simulated interactions ALS reached recall@100 0.43 in ~1 s of fitting, while the best BPR tried (32
  factors, 200 epochs, learning rate 0.05) reached 0.31 in ~7.5 s, below plain popularity (0.35). 32 factors with
  regularisation 3 were the best of a grid on the same 200k rows under both the temporal and the random-by-item
  split (nDCG@10 of ALS alone 0.112 and 0.179; the earlier 24 factors, regularisation 1: 0.111 and 0.170; 48+
  factors overfit). How far to trust weights (alpha, and summed weights or plain counts) depends on the data,
  so training picks them on its own held-out cut (`tune_als`). Served through a faiss HNSW index (inner
  product) over item factors.
- ``item2item``: items that go with the user's items, from a sparse item × item table (the ``neighbours``
  strongest per item), so a user's scores are one sparse row sum over all their items. The table is EASE
  (Steck, 2019: the ridge regression that rebuilds each item's column from the other items, closed form) over
  the ``ease_max_items`` most interacted items; RP3beta (a two-step random walk item → user → item with the
  target's popularity damped) remains as ``item_similarity="rp3beta"``. Under random-by-item, nDCG@10 of
  item-to-item alone: 200k simulated rows EASE 0.171 against RP3beta 0.169, a MovieLens-shaped ratings file
  0.401 against 0.269 (RP3beta's best setting there 0.276); temporal 200k: 0.112 both. Both replaced nearest
  neighbours of the 5 latest items in the ALS space (0.079 temporal, 0.128 random-by-item).
- ``popular``: the most weighted interactions in a recent window, with a freshness boost for new items. The only
  generator for users unknown at fit time (cold start), and the way brand-new items get in at all.

Merging: each generator ranks its own list, and an item's merged score is the sum over generators of
``weight / (fusion_offset + rank)``. Ranks, not scores, because the generators' scores share no scale; a sum,
because an item that two generators propose is more likely right than one only one of them does. The earlier
fixed quotas (60 % ALS, 20 % each for the others) gave popularity and item-to-item places ALS would fill better:
merged recall@200 fell below ALS alone under the random-by-item split (0.749 against 0.761).

Nothing is pickled: `CandidateModel.save` writes numpy arrays (``model.npz``), the faiss index (``items.faiss``)
and the settings (``config.json``), so a service can load it from an MLflow artifact directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines.platform.errors import InvalidInput

GENERATORS = ("als", "item2item", "popular")
SECONDS_PER_DAY = 86_400.0
Candidate = tuple[str, float, str]


@dataclass(frozen=True)
class CandidateConfig:
    """Settings of the candidate stage; the same settings and data (seed included) give the same candidates."""

    algorithm: str = "als"  # "als" or "bpr"
    factors: int = 32
    iterations: int = 15
    regularization: float = 3.0
    alpha: float = 10.0  # ALS confidence per unit of log1p(summed weight), or of log1p(count)
    confidence: str = "weight"  # what ALS trusts: the summed "weight" of a pair, or its interaction "count"
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
    # item-to-item: EASE (a learned item × item weight matrix) or RP3beta (a random walk on the interaction graph)
    item_similarity: str = "ease"  # or "rp3beta"
    neighbours: int = 100  # most similar items kept per item
    ease_lambda: float = 300.0  # L2 penalty of EASE
    ease_max_items: int = 10_000  # EASE inverts an items × items matrix: beyond this, the most interacted items
    walk_power: float = 0.8  # RP3beta only
    popularity_penalty: float = 0.4  # RP3beta only
    # merge: weighted reciprocal-rank fusion
    merge_weights: tuple[tuple[str, float], ...] = (("als", 1.0), ("item2item", 1.0), ("popular", 0.3))
    fusion_offset: float = 20.0

    def __post_init__(self) -> None:
        for name, allowed in (
            ("algorithm", ("als", "bpr")),
            ("confidence", ("weight", "count")),
            ("item_similarity", ("ease", "rp3beta")),
        ):
            if getattr(self, name) not in allowed:
                raise InvalidInput(f"{name} must be {' or '.join(map(repr, allowed))}, got {getattr(self, name)!r}.")
        if not self.ease_lambda > 0:
            raise InvalidInput(f"ease_lambda must be positive, got {self.ease_lambda}.")
        for name in ("factors", "iterations", "hnsw_m", "ef_construction", "ef_search", "neighbours", "ease_max_items"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("walk_power", "popularity_penalty"):
            if not 0 <= getattr(self, name) <= 2:
                raise InvalidInput(f"{name} must lie between 0 and 2, got {getattr(self, name)}.")
        if not self.fusion_offset > 0:
            raise InvalidInput(f"fusion_offset must be positive, got {self.fusion_offset}.")
        for name, weight in self.merge_weights:
            if name not in GENERATORS:
                raise InvalidInput(f"unknown generator {name!r} in merge_weights; choose from {', '.join(GENERATORS)}.")
            if not weight >= 0:
                raise InvalidInput(f"the merge weight of {name} must be zero or more, got {weight}.")
        if not any(weight > 0 for _, weight in self.merge_weights):
            raise InvalidInput("every merge weight is zero; give at least one generator a positive weight.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CandidateConfig:
        values = dict(values)
        if "merge_weights" in values:
            values["merge_weights"] = tuple((str(name), float(weight)) for name, weight in values["merge_weights"])
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
        raise InvalidInput(f"the {what} lack the column {missing[0]!r}; add it or rename the column that holds it.")


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


def _rp3beta(seen: sp.csr_matrix, config: CandidateConfig, block: int = 1024) -> sp.csr_matrix:
    """items × items RP3beta similarity, the `neighbours` largest per row (an item is not its own neighbour).

    Walk item → user → item on the binary interaction graph with each step's probabilities raised to
    `walk_power`, then divide by the target item's degree to the power `popularity_penalty`. Computed in blocks of
    rows, so memory stays at block × items whatever the catalogue size (15k items: ~3 s, ~120 MB).
    """
    binary = seen.copy()
    binary.data = np.ones_like(binary.data, dtype=np.float64)
    user_degree = np.asarray(binary.sum(axis=1)).ravel()
    item_degree = np.asarray(binary.sum(axis=0)).ravel()
    to_item = (sp.diags(1.0 / np.maximum(user_degree, 1.0)) @ binary).tocsr()
    to_user = (sp.diags(1.0 / np.maximum(item_degree, 1.0)) @ binary.T).tocsr()
    to_item.data **= config.walk_power
    to_user.data **= config.walk_power
    damp = 1.0 / np.maximum(item_degree, 1.0) ** config.popularity_penalty
    n_items = binary.shape[1]
    blocks = []
    for start in range(0, n_items, block):
        stop = min(start + block, n_items)
        dense = (to_user[start:stop] @ to_item).toarray()
        dense *= damp[None, :]
        blocks.append(_strongest(dense, np.arange(start, stop), config.neighbours))
    return _neighbour_table(blocks, n_items)


def _strongest(dense: np.ndarray, rows: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, columns, values) of the `keep` largest positive values of each row of `dense` (rows × items), the
    row's own item (dense[i, rows[i]]) left out."""
    dense[np.arange(len(rows)), rows] = 0.0
    keep = min(keep, dense.shape[1] - 1)
    if keep < 1:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    top = np.argpartition(-dense, keep - 1, axis=1)[:, :keep]
    values = np.take_along_axis(dense, top, axis=1)
    positive = values > 0
    return np.repeat(rows, keep)[positive.ravel()], top[positive], values[positive].astype(np.float32)


def _neighbour_table(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_items: int) -> sp.csr_matrix:
    """items × items sparse similarity from (rows, columns, values) parts."""
    if not parts:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    rows, cols, values = (np.concatenate(arrays) for arrays in zip(*parts, strict=True))
    table = sp.csr_matrix((values.astype(np.float32), (rows, cols)), shape=(n_items, n_items))
    table.sort_indices()
    return table


def _ease(seen: sp.csr_matrix, config: CandidateConfig) -> sp.csr_matrix:
    """items × items EASE weights (Steck, 2019), the `neighbours` largest positive ones per row.

    EASE learns the item × item matrix B that best rebuilds each user's binary row from their other items:
    ridge regression with a zero diagonal, in closed form B = I − P / diag(P) with P = (XᵀX + λI)⁻¹. A user's
    score for an item is then the sum of B's rows over their items, as with any item-to-item table. The inverse
    is dense in the number of items (10k items: ~5 s, 400 MB in float32), so past `ease_max_items` only the
    most interacted items take part; the others are left to ALS and popularity.
    """
    binary = seen.copy()
    binary.data = np.ones_like(binary.data, dtype=np.float32)
    n_items = binary.shape[1]
    degree = np.asarray(binary.sum(axis=0)).ravel()
    kept = np.flatnonzero(degree > 0)
    if len(kept) > config.ease_max_items:
        kept = np.sort(kept[np.argsort(-degree[kept], kind="stable")[: config.ease_max_items]])
    if len(kept) < 2:
        return sp.csr_matrix((n_items, n_items), dtype=np.float32)
    columns = binary[:, kept]
    gram = (columns.T @ columns).toarray().astype(np.float32)
    gram[np.diag_indices_from(gram)] += config.ease_lambda
    inverse = _spd_inverse(gram)
    weights = inverse / -np.diag(inverse)[None, :]  # B = I − P / diag(P): the diagonal is zeroed next
    rows, cols, values = _strongest(weights, np.arange(len(kept)), config.neighbours)
    return _neighbour_table([(kept[rows], kept[cols], values)], n_items)


def _spd_inverse(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a symmetric positive definite matrix by Cholesky (LAPACK potrf + potri), overwriting `matrix`:
    for 8,000 items 2.8 s in float32 here, against 23 s for `numpy.linalg.inv`."""
    from scipy.linalg import lapack

    potrf, potri = lapack.get_lapack_funcs(("potrf", "potri"), (matrix,))
    factor, info = potrf(matrix, lower=False, overwrite_a=True)
    if info != 0:
        raise InvalidInput(f"the EASE matrix is not positive definite (LAPACK info {info}); raise ease_lambda.")
    upper, info = potri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise InvalidInput(f"the EASE matrix could not be inverted (LAPACK info {info}); raise ease_lambda.")
    return np.triu(upper) + np.triu(upper, 1).T


def _item_similarity(seen: sp.csr_matrix, config: CandidateConfig) -> sp.csr_matrix:
    if config.item_similarity == "rp3beta":
        return _rp3beta(seen, config)
    return _ease(seen, config)


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
    similar: sp.csr_matrix  # items × items co-occurrence similarity (item2item), a few neighbours per item
    fit_seconds: float = 0.0
    _popular_order: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        order = np.argsort(-self.popularity, kind="stable")
        self._popular_order = order[np.isfinite(self.popularity[order])]

    @classmethod
    def fit(
        cls, train: pd.DataFrame, items: pd.DataFrame | None = None, config: CandidateConfig | None = None
    ) -> CandidateModel:
        config = config or CandidateConfig()
        _check_columns(train, ["user_id", "item_id", "timestamp"], "training interactions")
        if train.empty:
            raise InvalidInput("the training interactions are empty; there is nothing to learn candidates from.")
        if items is not None:
            _check_columns(items, ["item_id"], "items")
        started = time.perf_counter()
        catalogue = Catalogue.build(train, items)
        seen = _user_items(train, catalogue)
        counts = _user_items(train.assign(weight=1.0), catalogue) if config.confidence == "count" else seen
        user_factors, item_factors = _fit_factors(counts, config)
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
            similar=_item_similarity(seen, config),
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
            similar_indptr=self.similar.indptr,
            similar_indices=self.similar.indices,
            similar_data=self.similar.data,
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
            similar=sp.csr_matrix(
                (arrays["similar_data"], arrays["similar_indices"], arrays["similar_indptr"]),
                shape=(len(catalogue.items), len(catalogue.items)),
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

    def seed_rows(self, users: np.ndarray, recent: Sequence[Sequence[int]] | None = None) -> sp.csr_matrix:
        """users × items, 1 where an item seeds the user's item-to-item scores: all their items, or `recent`."""
        rows: list[np.ndarray] = []
        for position, user in enumerate(users):
            if recent is not None and len(recent[position]):
                rows.append(np.unique(np.asarray(recent[position], dtype=np.int64)))
            else:
                rows.append(self._seen_of(int(user)))
        lengths = np.fromiter((len(row) for row in rows), dtype=np.int64, count=len(rows))
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        indices = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
        return sp.csr_matrix(
            (np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(users), len(self.catalogue.items))
        )

    def cooccurrence_scores(self, users: np.ndarray, recent: Sequence[Sequence[int]] | None = None) -> sp.csr_matrix:
        """users × items item-to-item score: the sum of the similarity rows of each user's seed items."""
        return (self.seed_rows(users, recent) @ self.similar).tocsr()

    def item2item(
        self, users: np.ndarray, n: int, exclude_seen: bool, recent: Sequence[Sequence[int]] | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Items that co-occur with the user's items (or with `recent`, a session's items), best summed score first."""
        scores = self.cooccurrence_scores(users, recent)
        out: list[tuple[np.ndarray, np.ndarray]] = []
        for position, user in enumerate(users):
            row = slice(scores.indptr[position], scores.indptr[position + 1])
            codes, values = scores.indices[row].astype(np.int64), scores.data[row]
            if recent is not None and len(recent[position]):
                keep = ~np.isin(codes, recent[position])  # the session's own items are no news
                codes, values = codes[keep], values[keep]
            order = np.lexsort((codes, -values))  # best first; ties by catalogue order, so runs repeat
            out.append(self._finish(int(user), codes[order], values[order], n, exclude_seen))
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
        raise InvalidInput(f"unknown generator {name!r}; choose from {', '.join(GENERATORS)}.")

    # -- merged candidates ---------------------------------------------------------------------------------

    def generate_candidates(
        self,
        user_ids: Sequence[str],
        n: int,
        exclude_seen: bool = True,
        recent_items: Mapping[str, Sequence[str]] | None = None,
    ) -> dict[str, list[Candidate]]:
        """Up to n distinct (item_id, score, generator) per user; unknown users get popularity/recency candidates.

        The generators' lists (each up to n long) are fused by rank (see the module docstring); an item several
        generators propose appears once, with the fused score and the generator whose rank gave it the most.
        `recent_items` (item ids, most recent first) replaces the seeds of the item-to-item generator, e.g. with a
        session's items for a user unknown at fit time.
        """
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
            raise InvalidInput(f"n must be a positive integer, got {n!r}.")
        user_ids = [str(user) for user in user_ids]
        users = self.catalogue.user_codes(user_ids)
        recent = None
        if recent_items is not None:
            index = self.catalogue.item_index
            recent = [[index[item] for item in recent_items.get(user, ()) if item in index] for user in user_ids]
        weights = dict(self.config.merge_weights)
        used = [name for name in GENERATORS if weights.get(name, 0.0) > 0]
        results = {name: self.generator(name, users, n, exclude_seen, recent) for name in used}
        merged: dict[str, list[Candidate]] = {}
        items = self.catalogue.items
        for position, user_id in enumerate(user_ids):
            lists = {name: results[name][position][0] for name in used}
            codes, scores, names = fuse(lists, weights, n, self.config.fusion_offset)
            merged[user_id] = [
                (str(items[code]), float(score), GENERATORS[name])
                for code, score, name in zip(codes.tolist(), scores.tolist(), names.tolist(), strict=True)
            ]
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


def fuse(
    lists: Mapping[str, np.ndarray], weights: Mapping[str, float], n: int, offset: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted reciprocal-rank fusion of ranked item-code lists: the n best (codes, fused scores, generator).

    An item's score is the sum over the lists holding it of ``weight / (offset + rank)`` (rank 0 first); its
    generator (an index into GENERATORS) is the list that gave it the largest share. Ties keep the better
    generator's order (GENERATORS order, then rank), so the result is deterministic.
    """
    parts = [
        (GENERATORS.index(name), codes) for name, codes in lists.items() if len(codes) and weights.get(name, 0) > 0
    ]
    if not parts:
        return np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.int64)
    codes = np.concatenate([found for _, found in parts]).astype(np.int64)
    share = np.concatenate(
        [weights[GENERATORS[index]] / (offset + np.arange(len(found), dtype=np.float64)) for index, found in parts]
    )
    source = np.concatenate([np.full(len(found), index, dtype=np.int64) for index, found in parts])
    unique, inverse = np.unique(codes, return_inverse=True)
    total = np.bincount(inverse, weights=share, minlength=len(unique))
    # the largest share per item: sort by (item, -share, generator) and keep each item's first row
    order = np.lexsort((source, -share, inverse))
    first = order[np.r_[True, inverse[order][1:] != inverse[order][:-1]]]
    best_source = source[first]
    best_share = share[first]
    ranking = np.lexsort((best_source, -best_share, -total))[:n]
    return unique[ranking], total[ranking], best_source[ranking]


# ----------------------------------------------------------------------------------------------------------
# Choosing the ALS settings for the data at hand

ALPHA_STEPS = 2  # at most this many doublings (or halvings) of alpha away from the configured one


def tune_als(
    past: pd.DataFrame,
    held_out: pd.DataFrame,
    items: pd.DataFrame | None,
    config: CandidateConfig,
    max_users: int = 2_000,
    k: int = 10,
) -> tuple[CandidateConfig, list[dict[str, Any]]]:
    """The ALS confidence and alpha under which ALS alone ranks `held_out` best, fitted on `past`.

    How much to trust a repeat, a purchase or a rating depends on the data: on ~200k simulated interactions the
    summed event weights with alpha 10 ranked best (nDCG@10 0.179, counts 0.177), on a MovieLens-shaped ratings
    file counts with alpha 5 did (0.427, against 0.346 for ratings as weights with alpha 10). So the ranker's
    training cut, which holds rows out exactly as serving or evaluation will, picks them: both confidences at the
    configured alpha, then alpha doubled or halved while nDCG@10 (seen items removed, a seeded sample of at most
    `max_users` held-out users) improves. Returns the chosen config and one row per trial.
    """
    from pipelines.platform.ranking import evaluate_rankings
    from pipelines.recsys.splits import test_relevance

    catalogue = Catalogue.build(past, items)
    relevant = test_relevance(past, held_out)
    users = sorted(user for user in relevant if user in catalogue.user_index)
    if len(users) > max_users:
        picked = np.random.default_rng(config.seed).choice(len(users), size=max_users, replace=False)
        users = [users[i] for i in np.sort(picked)]
    if not users:
        return config, []
    codes = catalogue.user_codes(users)
    seen = _user_items(past, catalogue)
    matrices = {"weight": seen}
    if "weight" in past.columns and not np.allclose(past["weight"].to_numpy(dtype=np.float64), 1.0):
        matrices["count"] = _user_items(past.assign(weight=1.0), catalogue)
    trials: dict[tuple[str, float], float] = {}

    def trial(confidence: str, alpha: float) -> float:
        if (confidence, alpha) not in trials:
            user_factors, item_factors = _fit_factors(matrices[confidence], replace(config, alpha=alpha))
            scores = user_factors[codes] @ item_factors.T
            rows = seen[codes]
            scores[np.repeat(np.arange(len(codes)), np.diff(rows.indptr)), rows.indices] = -np.inf
            best = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            top = np.take_along_axis(best, np.argsort(-np.take_along_axis(scores, best, axis=1), axis=1), axis=1)
            lists = {user: catalogue.items[row].tolist() for user, row in zip(users, top, strict=True)}
            ndcg = evaluate_rankings(lists, {user: relevant[user] for user in users}, k, len(catalogue.items)).ndcg
            trials[confidence, alpha] = ndcg
        return trials[confidence, alpha]

    confidence = max(matrices, key=lambda name: trial(name, config.alpha))
    alpha = config.alpha
    for factor in (2.0, 0.5):
        for _ in range(ALPHA_STEPS):
            if trial(confidence, alpha * factor) <= trial(confidence, alpha):
                break
            alpha *= factor
    rows = [{"confidence": c, "alpha": a, f"ndcg@{k}": round(v, 4)} for (c, a), v in trials.items()]
    return replace(config, confidence=confidence, alpha=alpha), rows


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
