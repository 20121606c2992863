"""A seeded, vectorised simulator of user-item interactions with tastes, a long tail and cold starts.

The world: items belong to categories and carry latent vectors that cluster around their category's centre.
Each user has a taste over categories (a sparse Dirichlet draw, so most users care about a few of them) and a
latent vector built from those categories' centres plus personal noise. Items have a Zipf-like popularity.

Users come back over the days in sessions (Poisson counts over the days they are around, a daily rhythm for
the hour). A session sticks to one category, sometimes two, drawn from the user's taste. Every event in a
session picks a category of the session, draws a small candidate pool from the items of that category that
exist at that moment (weighted by popularity, which gives the long tail), and chooses one item from the pool
by a softmax over the user's affinity to it plus a freshness bonus for recently added items. A share of
events follows popularity only (browsing the front page): a popular category, and the pool's best-sellers.

Cold start, both sides: `new_user_share` of the users arrive during the period and start with
popularity-driven sessions, their own taste taking over within a few sessions; `new_item_share` of the items
are added during the period and cannot be seen before their `created_at`.

Event types: each event is a view, click or purchase (`event_mix`), with clicks and purchases more likely when
the user's affinity to the item is high; `event_weights` turns the type into the `weight` column.

Sizing: rows are about sessions_per_user_day x items_per_session x user-days, where existing users count all
`days` and new users half of them on average. `expected_interactions(config)` gives the figure and
`config_for_size(n)` picks the number of users (and items) for a target row count.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import pandas as pd

from pipelines.platform.errors import InvalidInput

SECONDS_PER_DAY = 86_400
EVENT_TYPES = ("view", "click", "purchase")
INTERACTION_COLUMNS = ["interaction_id", "user_id", "item_id", "timestamp", "event_type", "weight", "session_id"]
ITEM_COLUMNS = ["item_id", "category", "created_at", "price"]

# Relative share of sessions by hour of day (UTC): quiet nights, a lunch bump and a long evening peak.
HOURLY_WEIGHTS = np.array(
    [1.2, 0.7, 0.4, 0.3, 0.3, 0.5, 1.0, 2.0, 2.8, 3.0, 3.2, 3.6]
    + [4.5, 4.2, 3.6, 3.5, 3.8, 4.5, 5.5, 6.5, 7.0, 6.5, 4.5, 2.5]
)

_EXISTING_ITEM_AGE_DAYS = (1.0, 365.0)  # items present at the start were added this long before it
_SESSION_GAP_SECONDS = 45.0  # mean time between two events of a session
_SECOND_CATEGORY_PICK = 0.4  # in a two-category session, share of events in the second category
_BLOCK = 65_536  # events per block when scoring candidate pools


@dataclass(frozen=True)
class InteractionConfig:
    """Everything that shapes a simulated interaction log; the same config (seed included) gives the same rows."""

    n_users: int = 10_000
    n_items: int = 5_000
    n_categories: int = 30
    days: int = 30
    start: str = "2026-01-01"  # first simulated day (UTC date)
    seed: int = 11

    # Tastes
    latent_dim: int = 16
    taste_concentration: float = 0.1  # Dirichlet concentration of users' category tastes; smaller is narrower
    item_spread: float = 1.0  # how far item vectors sit from their category centre
    user_spread: float = 0.7  # personal noise on top of a user's category mix
    preference_strength: float = 5.0  # softmax sharpness over affinity within a candidate pool
    popularity_exponent: float = 1.0  # Zipf exponent of item popularity; larger is a longer head

    # Sessions
    sessions_per_user_day: float = 0.3
    items_per_session: float = 4.0  # mean events per session (at least one)
    second_category_share: float = 0.3  # sessions that mix in a second category
    explore_share: float = 0.05  # events that follow popularity only
    candidates: int = 20  # candidate pool per event

    # Cold start and freshness
    new_user_share: float = 0.2  # users who arrive during the period
    new_item_share: float = 0.15  # items added during the period
    warmup_sessions: float = 3.0  # a new user's taste takes over within about this many sessions
    recency_boost: float = 2.0  # log-score bonus of a brand-new item
    fresh_days: float = 3.0  # the bonus decays with this time constant

    # Event types (view, click, purchase)
    event_mix: tuple[float, float, float] = (0.75, 0.2, 0.05)
    event_weights: tuple[float, float, float] = (1.0, 3.0, 10.0)

    def __post_init__(self) -> None:
        problems = _config_problems(self)
        if problems:
            raise InvalidInput(problems[0])

    @property
    def start_day(self) -> pd.Timestamp:
        return _start_day(self.start)

    @property
    def n_new_users(self) -> int:
        """New users get the highest ids: U numbers above n_users - n_new_users, in order of arrival."""
        return round(self.n_users * self.new_user_share)

    @property
    def n_new_items(self) -> int:
        return round(self.n_items * self.new_item_share)


def _start_day(start: str) -> pd.Timestamp:
    stamp = pd.Timestamp(start)
    if stamp is pd.NaT:
        raise InvalidInput("start is empty")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.normalize()


def _config_problems(c: InteractionConfig) -> list[str]:
    problems: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    need(c.n_users >= 1, f"n_users must be at least 1, got {c.n_users}.")
    need(c.n_categories >= 1, f"n_categories must be at least 1, got {c.n_categories}.")
    need(
        c.n_items >= c.n_categories,
        f"n_items must be at least n_categories ({c.n_categories}) so every category has an item, got {c.n_items}.",
    )
    need(c.days >= 1, f"days must be at least 1, got {c.days}.")
    need(c.seed >= 0, f"seed must be zero or a positive integer, got {c.seed}.")
    try:
        _start_day(c.start)
    except (ValueError, TypeError):
        problems.append(f"start must be a date such as '2026-01-01', got {c.start!r}.")
    need(c.latent_dim >= 1, f"latent_dim must be at least 1, got {c.latent_dim}.")
    need(c.taste_concentration > 0, f"taste_concentration must be positive, got {c.taste_concentration}.")
    need(c.item_spread >= 0, f"item_spread must be zero or more, got {c.item_spread}.")
    need(c.user_spread >= 0, f"user_spread must be zero or more, got {c.user_spread}.")
    need(c.preference_strength >= 0, f"preference_strength must be zero or more, got {c.preference_strength}.")
    need(
        0 <= c.popularity_exponent <= 3,
        f"popularity_exponent must lie between 0 and 3, got {c.popularity_exponent}; around 1 gives a long tail.",
    )
    need(c.sessions_per_user_day > 0, f"sessions_per_user_day must be positive, got {c.sessions_per_user_day}.")
    need(c.items_per_session >= 1, f"items_per_session must be at least 1, got {c.items_per_session}.")
    for name in ("second_category_share", "explore_share", "new_item_share"):
        value = getattr(c, name)
        need(0 <= value <= 1, f"{name} must lie between 0 and 1, got {value}.")
    need(
        0 <= c.new_user_share < 1,
        f"new_user_share must be at least 0 and below 1, got {c.new_user_share}.",
    )
    need(
        c.new_user_share == 0 or c.days >= 2,
        f"new users need at least 2 days to arrive in, got days={c.days}; set new_user_share=0 or add days.",
    )
    need(c.candidates >= 1, f"candidates must be at least 1, got {c.candidates}.")
    need(c.warmup_sessions > 0, f"warmup_sessions must be positive, got {c.warmup_sessions}.")
    need(c.recency_boost >= 0, f"recency_boost must be zero or more, got {c.recency_boost}.")
    need(c.fresh_days > 0, f"fresh_days must be positive, got {c.fresh_days}.")
    need(
        len(c.event_mix) == 3 and min(c.event_mix) >= 0 and c.event_mix[0] > 0,
        f"event_mix must be three non-negative shares (view, click, purchase) with views above 0, got {c.event_mix}.",
    )
    need(
        len(c.event_weights) == 3 and min(c.event_weights) > 0,
        f"event_weights must be three positive weights (view, click, purchase), got {c.event_weights}.",
    )
    return problems


# ----------------------------------------------------------------------------------------------------------
# Sizing


def expected_interactions(config: InteractionConfig) -> float:
    """Expected row count: events per session x sessions over the days each user is around."""
    n_new = config.n_new_users
    user_days = (config.n_users - n_new) * config.days + n_new * config.days / 2
    return float(user_days * config.sessions_per_user_day * config.items_per_session)


def config_for_size(n_interactions: int, **overrides: Any) -> InteractionConfig:
    """A config expected to produce about `n_interactions` rows.

    The number of users is solved for (or the number of days, when n_users is given and days is not). Unless
    given, items follow at one per two users (at least 10 per category).
    """
    if n_interactions < 1:
        raise InvalidInput(f"n_interactions must be at least 1, got {n_interactions}.")
    known = {f.name for f in fields(InteractionConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InvalidInput(f"unknown simulation setting {unknown[0]!r}; known settings are {', '.join(sorted(known))}.")
    base = InteractionConfig(**overrides)
    if "n_users" in overrides and "days" not in overrides:
        per_user_day = expected_interactions(replace(base, days=2)) / 2
        return replace(base, days=max(2 if base.new_user_share > 0 else 1, round(n_interactions / per_user_day)))
    per_user = expected_interactions(replace(base, n_users=1_000_000)) / 1_000_000
    n_users = max(1, round(n_interactions / per_user))
    n_items = overrides.get("n_items", max(10 * base.n_categories, n_users // 2))
    return replace(base, n_users=n_users, n_items=n_items)


# ----------------------------------------------------------------------------------------------------------
# Simulation


@dataclass(frozen=True)
class _World:
    category: np.ndarray  # (n_items,) category index
    created: np.ndarray  # (n_items,) seconds after the start (negative for items present at the start)
    popularity: np.ndarray  # (n_items,) Zipf weights
    item_vec: np.ndarray  # (n_items, latent_dim) float32
    user_vec: np.ndarray  # (n_users, latent_dim) float32
    taste_cdf: np.ndarray  # (n_users, n_categories) cumulative category taste
    category_cdf: np.ndarray  # (n_categories,) cumulative category popularity
    arrival_day: np.ndarray  # (n_users,) first day a user is around
    price: np.ndarray


@dataclass(frozen=True)
class _Sessions:
    user: np.ndarray
    start: np.ndarray  # seconds after the start
    weight: np.ndarray  # how much the user's own taste drives the session (0 popularity only, 1 taste)
    first_category: np.ndarray
    second_category: np.ndarray  # -1 when the session sticks to one category


def simulate_interactions(config: InteractionConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate (interactions, items) for `config`; see the module docstring for the model.

    interactions: user_id ("U000001"), item_id ("I000001"), timestamp (UTC), event_type (view, click,
    purchase), weight (float), session_id (int, numbered by session start); sorted by timestamp.
    items: item_id, category, created_at (UTC; during the period for new items), price.
    """
    rng = np.random.default_rng(config.seed)
    world = _build_world(config, rng)
    sessions = _sessions(config, world, rng)
    session, seconds = _events(config, sessions, rng)
    item, affinity = _choose_items(config, world, sessions, session, rng)
    event_type = _event_types(config, affinity, rng)

    order = np.argsort(seconds, kind="stable")
    start_ns = config.start_day.value
    user_ids = _ids("U", config.n_users, 6)
    item_ids = _ids("I", config.n_items, 6)
    types = np.array(EVENT_TYPES, dtype=object)
    interactions = pd.DataFrame(
        {
            "user_id": user_ids[sessions.user[session[order]]],
            "item_id": item_ids[item[order]],
            "timestamp": _utc(start_ns, seconds[order]),
            "event_type": types[event_type[order]],
            "weight": np.asarray(config.event_weights, dtype="float64")[event_type[order]],
            "session_id": session[order] + 1,
        }
    )
    interactions["interaction_id"] = _ids("E", len(interactions), 8)
    width = len(str(config.n_categories))
    items = pd.DataFrame(
        {
            "item_id": item_ids,
            "category": np.array([f"cat_{c + 1:0{width}d}" for c in range(config.n_categories)], dtype=object)[
                world.category
            ],
            "created_at": _utc(start_ns, world.created),
            "price": world.price,
        }
    )
    return interactions[INTERACTION_COLUMNS], items[ITEM_COLUMNS]


def _build_world(config: InteractionConfig, rng: np.random.Generator) -> _World:
    n_items, n_users, n_cat, dim = config.n_items, config.n_users, config.n_categories, config.latent_dim

    # Items: category sizes are uneven (a few big categories), every category has at least one item.
    category_size = rng.gamma(2.0, 1.0, size=n_cat)
    category = np.concatenate(
        [np.arange(n_cat), rng.choice(n_cat, size=n_items - n_cat, p=category_size / category_size.sum())]
    )
    rng.shuffle(category)
    ranks = rng.permutation(n_items) + 1
    popularity = ranks.astype("float64") ** -config.popularity_exponent

    # New items: any item but the first of each category, so every category has something from day one.
    new = rng.random(n_items) < config.new_item_share
    _, first_of_category = np.unique(category, return_index=True)
    new[first_of_category] = False
    extra = config.n_new_items - int(new.sum())
    if extra > 0:
        pool = np.flatnonzero(~new)
        pool = pool[~np.isin(pool, first_of_category)]
        new[rng.choice(pool, size=min(extra, len(pool)), replace=False)] = True
    elif extra < 0:
        new[rng.choice(np.flatnonzero(new), size=-extra, replace=False)] = False
    period = config.days * SECONDS_PER_DAY
    low, high = _EXISTING_ITEM_AGE_DAYS
    age = rng.uniform(low, high, size=n_items) * SECONDS_PER_DAY
    created = np.where(new, rng.integers(0, period, size=n_items), -age.astype("int64")).astype("int64")

    centres = rng.standard_normal((n_cat, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    item_vec = centres[category] + config.item_spread * rng.standard_normal((n_items, dim)) / np.sqrt(dim)

    taste = rng.dirichlet(np.full(n_cat, config.taste_concentration), size=n_users)
    mix = taste @ centres
    mix /= np.maximum(np.linalg.norm(mix, axis=1, keepdims=True), 1e-9)
    user_vec = mix + config.user_spread * rng.standard_normal((n_users, dim)) / np.sqrt(dim)
    taste_cdf = np.cumsum(taste, axis=1)
    taste_cdf /= taste_cdf[:, -1:]

    category_mass = np.bincount(category, weights=popularity, minlength=n_cat)
    category_cdf = np.cumsum(category_mass) / category_mass.sum()

    n_new_users = config.n_new_users
    arrival_day = np.zeros(n_users, dtype="int64")
    if n_new_users:
        arrival_day[n_users - n_new_users :] = np.sort(rng.integers(1, config.days, size=n_new_users))

    category_price = np.exp(rng.normal(3.0, 0.8, size=n_cat))
    price = np.round(category_price[category] * np.exp(0.4 * rng.standard_normal(n_items)), 2)
    return _World(
        category=category,
        created=created,
        popularity=popularity,
        item_vec=item_vec.astype("float32"),
        user_vec=user_vec.astype("float32"),
        taste_cdf=taste_cdf,
        category_cdf=category_cdf,
        arrival_day=arrival_day,
        price=np.maximum(price, 0.01),
    )


def _draw(cdf: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), len(cdf) - 1)


def _draw_rows(cdf_rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One index per row of a matrix of cumulative distributions."""
    picks = (cdf_rows < rng.random(len(cdf_rows))[:, None]).sum(axis=1)
    return np.minimum(picks, cdf_rows.shape[1] - 1)


def _sessions(config: InteractionConfig, world: _World, rng: np.random.Generator) -> _Sessions:
    n_users = config.n_users
    # Users differ in how often they come back (gamma with mean sessions_per_user_day).
    rate = rng.gamma(2.0, config.sessions_per_user_day / 2.0, size=n_users)
    active_days = config.days - world.arrival_day
    counts = rng.poisson(rate * active_days)
    user = np.repeat(np.arange(n_users), counts)
    n = len(user)
    day = world.arrival_day[user] + (rng.random(n) * active_days[user]).astype("int64")
    cumulative = np.cumsum(HOURLY_WEIGHTS) / HOURLY_WEIGHTS.sum()
    hour = np.minimum(np.searchsorted(cumulative, rng.random(n), side="right"), 23)
    start = day * SECONDS_PER_DAY + hour * 3600 + rng.integers(0, 3600, size=n)

    # Number each user's sessions in time order; new users lean on popularity for their first few.
    order = np.lexsort((start, user))
    user, start = user[order], start[order]
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    index = np.arange(n) - np.repeat(first, counts)
    is_new = user >= n_users - config.n_new_users
    weight = np.where(is_new, 1.0 - np.exp(-index / config.warmup_sessions), 1.0)

    # Sessions in time order from here on; session ids follow it.
    by_time = np.argsort(start, kind="stable")
    user, start, weight = user[by_time], start[by_time], weight[by_time]
    personal = rng.random(n) < weight
    taste_rows = world.taste_cdf[user]
    first_category = np.where(personal, _draw_rows(taste_rows, rng), _draw(world.category_cdf, n, rng))
    second = np.where(personal, _draw_rows(taste_rows, rng), _draw(world.category_cdf, n, rng))
    mixed = (rng.random(n) < config.second_category_share) & (second != first_category)
    return _Sessions(
        user=user,
        start=start,
        weight=weight,
        first_category=first_category,
        second_category=np.where(mixed, second, -1),
    )


def _events(config: InteractionConfig, sessions: _Sessions, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Session index and time (seconds after the start) of every event."""
    n_sessions = len(sessions.user)
    length = 1 + rng.poisson(config.items_per_session - 1, size=n_sessions)
    session = np.repeat(np.arange(n_sessions), length)
    gaps = rng.exponential(_SESSION_GAP_SECONDS, size=len(session)).astype("int64") + 1
    first = np.cumsum(length) - length
    gaps[first] = 0
    elapsed = np.cumsum(gaps)
    offset = elapsed - np.repeat(elapsed[first], length)
    seconds = np.minimum(sessions.start[session] + offset, config.days * SECONDS_PER_DAY - 1)
    return session, seconds


def _choose_items(
    config: InteractionConfig,
    world: _World,
    sessions: _Sessions,
    session: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """The chosen item of every event and the user's affinity to it."""
    n = len(session)
    n_cat = config.n_categories
    # Each event's category: the session's first, sometimes its second, or (exploring) a popular category.
    second = sessions.second_category[session]
    category = np.where(
        (second >= 0) & (rng.random(n) < _SECOND_CATEGORY_PICK), second, sessions.first_category[session]
    )
    explore = rng.random(n) < config.explore_share
    category = np.where(explore, _draw(world.category_cdf, n, rng), category)
    taste_weight = np.where(explore, 0.0, sessions.weight[session])

    # Items sorted by (category, creation time): the items of a category that exist at time t are a prefix of
    # its segment, so popularity-weighted candidates come from inverting a cumulative sum over that prefix.
    order = np.lexsort((world.created, world.category))
    shift = int(-world.created.min()) + 1
    key = world.category[order] * (1 << 40) + world.created[order] + shift
    cumulative = np.concatenate([[0.0], np.cumsum(world.popularity[order])])
    segment_start = np.searchsorted(key, np.arange(n_cat) * (1 << 40), side="left")

    event_time = sessions.start[session]
    low = segment_start[category]
    high = np.searchsorted(key, category * (1 << 40) + event_time + shift, side="right")
    base, span = cumulative[low], cumulative[high] - cumulative[low]

    user = sessions.user[session]
    chosen = np.empty(n, dtype="int64")
    affinity = np.empty(n, dtype="float64")
    strength = config.preference_strength
    log_popularity = np.log(world.popularity)
    for begin in range(0, n, _BLOCK):
        block = slice(begin, min(begin + _BLOCK, n))
        size = block.stop - block.start
        draws = base[block, None] + rng.random((size, config.candidates)) * span[block, None]
        position = np.searchsorted(cumulative, draws, side="right") - 1
        position = np.clip(position, low[block, None], high[block, None] - 1)
        candidates = order[position]
        aff = np.einsum("nkd,nd->nk", world.item_vec[candidates], world.user_vec[user[block]])
        age_days = (event_time[block, None] - world.created[candidates]) / SECONDS_PER_DAY
        # Without taste to go on (exploring, or a new user) the best-sellers in the pool win more often.
        cold = 1.0 - taste_weight[block, None]
        score = (
            strength * taste_weight[block, None] * aff
            + cold * log_popularity[candidates]
            + config.recency_boost * np.exp(-age_days / config.fresh_days)
        )
        pick = np.argmax(score + rng.gumbel(size=score.shape), axis=1)
        rows = np.arange(size)
        chosen[block] = candidates[rows, pick]
        affinity[block] = aff[rows, pick]
    return chosen, affinity


def _event_types(config: InteractionConfig, affinity: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """0 view, 1 click, 2 purchase; clicks and purchases lean towards items the user likes."""
    mix = np.asarray(config.event_mix, dtype="float64")
    mix = mix / mix.sum()
    spread = affinity.std() if len(affinity) else 1.0
    z = (affinity - affinity.mean()) / max(spread, 1e-9) if len(affinity) else affinity
    lift = 2.0 / (1.0 + np.exp(-z))  # between 0 and 2, about 1 on average
    click = np.minimum(mix[1] * lift, 1.0)
    purchase = np.minimum(mix[2] * lift, 1.0 - click)
    draw = rng.random(len(affinity))
    return np.where(draw < purchase, 2, np.where(draw < purchase + click, 1, 0)).astype("int64")


def _ids(prefix: str, count: int, width: int) -> np.ndarray:
    """prefix + zero-padded 1..count, e.g. 'U000042'; more digits when count needs them."""
    width = max(width, len(str(count)))
    return np.array([f"{prefix}{number:0{width}d}" for number in range(1, count + 1)], dtype=object)


def _utc(start_ns: int, seconds: np.ndarray) -> pd.Series:
    return pd.Series(pd.to_datetime(start_ns + seconds.astype("int64") * 1_000_000_000, unit="ns", utc=True))
