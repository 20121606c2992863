"""Request payloads for recommendation load tests: users drawn as often as they are active, plus cold starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.platform.errors import InvalidInput
from pipelines.settings import Settings

COLD_START_SHARE = 0.1  # share of requests for users nobody has seen (they get popular/fresh items)


def recommend_payloads(
    settings: Settings, path: Path | None, k: int = 10, limit: int = 20_000, cold_share: float = COLD_START_SHARE
) -> list[dict[str, Any]]:
    """JSON bodies for POST /recommend: active users from `path` (default: the demo's interactions), seeded."""
    if path is None:
        path = settings.data_dir / "interactions.parquet"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; pass --interactions with the file the model was trained on "
            "(or run `mlsd recsys simulate` first)."
        )
    from pipelines.recsys.data import read_interactions

    return payloads_from_interactions(read_interactions(path), k, limit, cold_share, settings.seed)


def payloads_from_interactions(
    frame: pd.DataFrame, k: int, limit: int, cold_share: float, seed: int
) -> list[dict[str, Any]]:
    """Users sampled in proportion to their interactions (busy users ask more often), some never seen."""
    if not 0 <= cold_share <= 1:
        raise InvalidInput(f"the cold-start share must lie between 0 and 1, got {cold_share!r}.")
    rng = np.random.default_rng(seed)
    users = frame["user_id"].astype(str).to_numpy()
    picked = users[rng.integers(0, len(users), size=limit)]
    cold = rng.random(limit) < cold_share
    ids = [f"cold-{i}" if is_cold else str(user) for i, (user, is_cold) in enumerate(zip(picked, cold, strict=True))]
    return [{"user_id": user_id, "k": k} for user_id in ids]
