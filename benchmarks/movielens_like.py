"""A MovieLens-shaped interactions file from the simulator: explicit 1–5 ratings, one rating per (user, item),
about a hundred ratings per user (at least 20), and a dense head of popular items.

No dataset can be downloaded here, so the public tables' shape is imitated instead: MovieLens-100k has 943 users,
1,682 items and 100k ratings (density 6.3 %, every user at least 20 ratings, the most rated item seen by 62 % of
users). The ratings follow the simulated event type (a purchase is a high rating, most views are middling), so a
liked item tends to rate higher, as in the public data. Columns: user_id, item_id, timestamp, rating.

Usage: python -m benchmarks.movielens_like --out .mlsd/data/movielens_like.csv [--users 1000] [--items 1700]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.platform.dataio import write_table
from pipelines.recsys.simulate import InteractionConfig, simulate_interactions

MIN_RATINGS = 20  # MovieLens keeps users with at least 20 ratings
# P(rating = 1..5) given the simulated event type: view, click, purchase
RATING_GIVEN_EVENT = {
    "view": (0.08, 0.17, 0.35, 0.30, 0.10),
    "click": (0.02, 0.05, 0.23, 0.45, 0.25),
    "purchase": (0.0, 0.02, 0.08, 0.35, 0.55),
}


def movielens_like(users: int = 1_000, items: int = 1_700, seed: int = 3) -> pd.DataFrame:
    """user_id, item_id, timestamp, rating: ~110 ratings per user over 60 days, first rating of a pair kept."""
    config = InteractionConfig(
        n_users=users,
        n_items=items,
        n_categories=18,  # as many as MovieLens genres
        days=60,
        sessions_per_user_day=0.7,
        items_per_session=6,
        taste_concentration=0.3,  # film tastes are broader than shopping tastes
        popularity_exponent=0.8,
        new_user_share=0.0,
        new_item_share=0.05,
        seed=seed,
    )
    frame, _ = simulate_interactions(config)
    frame = frame.drop_duplicates(["user_id", "item_id"], keep="first")
    counts = frame.groupby("user_id")["item_id"].transform("size")
    frame = frame[counts >= MIN_RATINGS]
    rng = np.random.default_rng(seed)
    rating = np.empty(len(frame), dtype=np.int64)
    kinds = frame["event_type"].to_numpy()
    for kind, shares in RATING_GIVEN_EVENT.items():
        rows = np.flatnonzero(kinds == kind)
        rating[rows] = rng.choice(np.arange(1, 6), size=len(rows), p=shares)
    return pd.DataFrame(
        {
            "user_id": frame["user_id"].to_numpy(),
            "item_id": frame["item_id"].to_numpy(),
            "timestamp": frame["timestamp"].to_numpy(),
            "rating": rating.astype(np.float64),
        }
    ).reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(".mlsd/data/movielens_like.csv"))
    parser.add_argument("--users", type=int, default=1_000)
    parser.add_argument("--items", type=int, default=1_700)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    frame = movielens_like(args.users, args.items, args.seed)
    write_table(frame, args.out)
    per_user = frame.groupby("user_id").size()
    print(
        f"wrote {len(frame):,} ratings by {len(per_user):,} users on {frame['item_id'].nunique():,} items "
        f"({per_user.median():.0f} per user, median) to {args.out}"
    )


if __name__ == "__main__":
    main()
