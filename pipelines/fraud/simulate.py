"""A seeded, vectorised simulator of card transactions with three fraud patterns and delayed labels.

The world: customers and payment terminals sit on a 100 x 100 grid. Each customer pays at terminals within
`radius` of home, with a personal spending habit (log-normal amounts) and a personal number of payments per
day, shaped by a daily rhythm (quiet nights, busy lunch and evening) and a weekly one (weekends differ).

Fraud arrives in three ways, each leaving a trace that the usual fraud features can pick up:

1. large amount - a random genuine payment is replaced by one several times the customer's usual amount
   (amount versus the customer's 1/7/30-day mean);
2. compromised terminal - every day a few terminals get compromised for 14-28 days and about half of their
   payments in that period are fraudulent (the terminal's fraud count over windows whose labels have arrived);
3. stolen card burst - a thief adds a burst of payments on a customer's card within a few hours, mostly at
   night, at higher amounts and at terminals far from the customer's home (1-day count, time since the
   previous payment, hour of day).

Labels arrive late: a fraud's chargeback lands 1 to `label_delay_days` days after the payment, and a genuine
payment counts as confirmed `label_delay_days` after it happened.

Sizing: the number of rows is about n_customers x mean payments per day x days (defaults: 5,000 x 2.1 x 60,
about 0.67 million rows). `expected_transactions(config)` gives the figure for any config and
`config_for_size(n)` picks the number of customers (and terminals) for a target row count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import pandas as pd

from pipelines.platform.errors import InvalidInput

GRID_SIZE = 100.0
SECONDS_PER_DAY = 86_400

SCENARIO_GENUINE = 0
SCENARIO_LARGE_AMOUNT = 1
SCENARIO_COMPROMISED_TERMINAL = 2
SCENARIO_STOLEN_CARD = 3
SCENARIO_NAMES = {
    SCENARIO_GENUINE: "genuine",
    SCENARIO_LARGE_AMOUNT: "large amount",
    SCENARIO_COMPROMISED_TERMINAL: "compromised terminal",
    SCENARIO_STOLEN_CARD: "stolen card burst",
}

# Relative share of payments by hour of day (UTC): quiet nights, a lunch peak and an evening peak.
HOURLY_WEIGHTS = np.array(
    [0.6, 0.35, 0.25, 0.2, 0.25, 0.5, 1.2, 2.5, 3.8, 4.5, 4.8, 5.3]
    + [6.5, 6.0, 5.0, 4.8, 5.2, 6.2, 7.0, 6.8, 5.5, 4.0, 2.6, 1.4]
)
# Thieves strike when the cardholder is least likely to notice: late evening and night.
THIEF_HOURLY_WEIGHTS = np.array(
    [6.0, 6.0, 5.5, 5.0, 4.0, 2.5, 1.5, 1.0, 1.0, 1.0, 1.0, 1.0]
    + [1.0, 1.0, 1.0, 1.0, 1.0, 1.2, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0]
)

TRANSACTION_COLUMNS = [
    "transaction_id",
    "timestamp",
    "customer_id",
    "terminal_id",
    "amount",
    "is_fraud",
    "label_timestamp",
    "fraud_scenario",
]


@dataclass(frozen=True)
class SimulationConfig:
    """Everything that shapes a simulated data set; the same config (seed included) gives the same rows."""

    n_customers: int = 5000
    n_terminals: int = 10000
    days: int = 60
    start: str = "2026-01-01"  # first simulated day (UTC date)
    fraud_rate: float = 0.008  # target share of fraudulent rows
    label_delay_days: int = 7
    seed: int = 7

    # Geography and habits
    radius: float = 5.0  # customers pay at terminals within this distance of home
    min_terminals: int = 3  # customers with fewer terminals in reach use this many nearest ones
    tx_per_day_min: float = 0.2  # customers' mean payments per day are uniform in [min, max]
    tx_per_day_max: float = 4.0
    amount_median: float = 40.0  # median over customers of their mean amount
    amount_spread: float = 0.6  # log-scale spread of customers' mean amounts
    weekend_factor: float = 1.2  # payment rate on Saturday and Sunday relative to weekdays

    # Fraud mix: share of frauds coming from (large amount, compromised terminal, stolen card burst)
    scenario_shares: tuple[float, float, float] = (0.3, 0.35, 0.35)
    large_amount_factor: tuple[float, float] = (4.0, 10.0)  # times the customer's mean amount
    compromised_days: tuple[int, int] = (14, 28)  # how long a terminal stays compromised
    compromised_fraud_share: float = 0.5  # share of a compromised terminal's payments that are fraud
    burst_size: tuple[int, int] = (3, 10)  # payments per stolen-card burst
    burst_hours: float = 4.0  # a burst lasts between half an hour and this many hours
    burst_amount_factor: tuple[float, float] = (2.0, 6.0)  # times the customer's mean amount
    card_test_share: float = 0.5  # bursts that open with a small "does the card work" payment
    far_distance: float = 20.0  # thieves pay at terminals at least this far from the customer's home

    def __post_init__(self) -> None:
        problems = list(_config_problems(self))
        if problems:
            raise InvalidInput(problems[0])

    @property
    def start_day(self) -> pd.Timestamp:
        return _start_day(self.start)


def _start_day(start: str) -> pd.Timestamp:
    stamp = pd.Timestamp(start)
    if stamp is pd.NaT:
        raise InvalidInput("start is empty")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return stamp.normalize()


def _config_problems(c: SimulationConfig) -> list[str]:
    problems: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    need(c.n_customers >= 1, f"n_customers must be at least 1, got {c.n_customers}.")
    need(c.n_terminals >= 1, f"n_terminals must be at least 1, got {c.n_terminals}.")
    need(c.days >= 1, f"days must be at least 1, got {c.days}.")
    need(
        0 < c.fraud_rate < 0.5,
        f"fraud_rate must lie strictly between 0 and 0.5, got {c.fraud_rate}; a realistic value is 0.005-0.01.",
    )
    need(c.label_delay_days >= 1, f"label_delay_days must be at least 1, got {c.label_delay_days}.")
    need(c.seed >= 0, f"seed must be zero or a positive integer, got {c.seed}.")
    try:
        _start_day(c.start)
    except (ValueError, TypeError):
        problems.append(f"start must be a date such as '2026-01-01', got {c.start!r}.")
    need(c.radius > 0, f"radius must be positive, got {c.radius}.")
    need(c.min_terminals >= 1, f"min_terminals must be at least 1, got {c.min_terminals}.")
    need(
        0 <= c.tx_per_day_min <= c.tx_per_day_max and c.tx_per_day_max > 0,
        f"tx_per_day_min and tx_per_day_max must satisfy 0 <= min <= max and max > 0, "
        f"got {c.tx_per_day_min} and {c.tx_per_day_max}.",
    )
    need(c.amount_median > 0, f"amount_median must be positive, got {c.amount_median}.")
    need(c.amount_spread >= 0, f"amount_spread must be zero or more, got {c.amount_spread}.")
    need(c.weekend_factor > 0, f"weekend_factor must be positive, got {c.weekend_factor}.")
    need(
        len(c.scenario_shares) == 3 and min(c.scenario_shares) >= 0 and sum(c.scenario_shares) > 0,
        f"scenario_shares must be three non-negative numbers with a positive sum, got {c.scenario_shares}.",
    )
    for name in ("large_amount_factor", "compromised_days", "burst_size", "burst_amount_factor"):
        low, high = getattr(c, name)
        need(0 < low <= high, f"{name} must be a (low, high) pair with 0 < low <= high, got {(low, high)}.")
    need(c.large_amount_factor[0] > 1, f"large_amount_factor must start above 1, got {c.large_amount_factor}.")
    need(
        0 < c.compromised_fraud_share <= 1,
        f"compromised_fraud_share must be in (0, 1], got {c.compromised_fraud_share}.",
    )
    need(c.burst_hours >= 0.5, f"burst_hours must be at least 0.5, got {c.burst_hours}.")
    need(0 <= c.card_test_share <= 1, f"card_test_share must be in [0, 1], got {c.card_test_share}.")
    need(c.far_distance >= 0, f"far_distance must be zero or more, got {c.far_distance}.")
    return problems


# ----------------------------------------------------------------------------------------------------------
# Sizing


def _day_factors(config: SimulationConfig) -> np.ndarray:
    weekday = (config.start_day.dayofweek + np.arange(config.days)) % 7
    return np.where(weekday >= 5, config.weekend_factor, 1.0)


def _shares(config: SimulationConfig) -> np.ndarray:
    shares = np.asarray(config.scenario_shares, dtype="float64")
    return shares / shares.sum()


def expected_transactions(config: SimulationConfig) -> float:
    """Expected row count: genuine payments plus the stolen-card rows added on top of them."""
    per_customer_day = (config.tx_per_day_min + config.tx_per_day_max) / 2
    genuine = config.n_customers * per_customer_day * _day_factors(config).sum()
    return float(genuine / (1 - config.fraud_rate * _shares(config)[2]))


def config_for_size(n_transactions: int, **overrides: Any) -> SimulationConfig:
    """A config expected to produce about `n_transactions` rows.

    The number of customers is solved for (or the number of days, when n_customers is given and days is not).
    Unless given, terminals follow at two per customer and the radius shrinks with their density, so a
    customer keeps about as many terminals in reach as in the default world.
    """
    if n_transactions < 1:
        raise InvalidInput(f"n_transactions must be at least 1, got {n_transactions}.")
    known = {f.name for f in fields(SimulationConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise InvalidInput(f"unknown simulation setting {unknown[0]!r}; known settings are {', '.join(sorted(known))}.")
    base = SimulationConfig(**overrides)
    per_customer = expected_transactions(replace(base, n_customers=1))
    if "n_customers" in overrides and "days" not in overrides:
        per_customer_day = per_customer / base.days
        days = max(1, round(n_transactions / (base.n_customers * per_customer_day)))
        return replace(base, days=days)
    n_customers = max(1, round(n_transactions / per_customer))
    changes: dict[str, Any] = {"n_customers": n_customers}
    if "n_terminals" not in overrides:
        changes["n_terminals"] = max(10, 2 * n_customers)
        if "radius" not in overrides:
            defaults = SimulationConfig()
            changes["radius"] = defaults.radius * math.sqrt(defaults.n_terminals / changes["n_terminals"])
    return replace(base, **changes)


# ----------------------------------------------------------------------------------------------------------
# Simulation


@dataclass(frozen=True)
class _World:
    customer_xy: np.ndarray  # (n_customers, 2)
    terminal_xy: np.ndarray  # (n_terminals, 2)
    amount_mu: np.ndarray  # log-normal parameters of each customer's amounts
    amount_sigma: np.ndarray
    amount_mean: np.ndarray
    tx_per_day: np.ndarray
    reach_start: np.ndarray  # customer c pays at reach_terminals[reach_start[c]:reach_start[c] + reach_count[c]]
    reach_count: np.ndarray
    reach_terminals: np.ndarray


def simulate_transactions(config: SimulationConfig) -> pd.DataFrame:
    """Simulate payments for `config`; see the module docstring for the world and the fraud patterns.

    Columns: transaction_id, timestamp (UTC), customer_id, terminal_id, amount, is_fraud (0/1),
    label_timestamp (UTC), fraud_scenario (0 genuine, 1 large amount, 2 compromised terminal, 3 stolen card
    burst). Rows are sorted by timestamp and numbered in that order.
    """
    rng = np.random.default_rng(config.seed)
    world = _build_world(config, rng)
    customer, terminal, seconds, amount = _genuine_payments(config, world, rng)
    n_genuine = len(customer)
    scenario = np.zeros(n_genuine, dtype="int64")

    shares = _shares(config)
    n_frauds = config.fraud_rate * n_genuine / (1 - config.fraud_rate * shares[2])
    _compromise_terminals(config, terminal, seconds, scenario, shares[1] * n_frauds, rng)
    _inflate_amounts(config, world, customer, amount, scenario, round(shares[0] * n_frauds), rng)
    burst = _stolen_card_bursts(config, world, shares[2] * n_frauds, rng)

    customer = np.concatenate([customer, burst[0]])
    terminal = np.concatenate([terminal, burst[1]])
    seconds = np.concatenate([seconds, burst[2]])
    amount = np.concatenate([amount, burst[3]])
    scenario = np.concatenate([scenario, np.full(len(burst[0]), SCENARIO_STOLEN_CARD, dtype="int64")])

    is_fraud = (scenario != SCENARIO_GENUINE).astype("int64")
    delay_days = config.label_delay_days
    fraud_delay = rng.integers(SECONDS_PER_DAY, delay_days * SECONDS_PER_DAY + 1, size=len(seconds))
    label_seconds = seconds + np.where(is_fraud == 1, fraud_delay, delay_days * SECONDS_PER_DAY)

    order = np.argsort(seconds, kind="stable")
    start_ns = config.start_day.value
    n_rows = len(order)
    frame = pd.DataFrame(
        {
            "transaction_id": _ids("T", np.arange(1, n_rows + 1), 8),
            "timestamp": _utc(start_ns, seconds[order]),
            "customer_id": _ids("C", np.arange(1, config.n_customers + 1), 5)[customer[order]],
            "terminal_id": _ids("M", np.arange(1, config.n_terminals + 1), 5)[terminal[order]],
            "amount": amount[order],
            "is_fraud": is_fraud[order],
            "label_timestamp": _utc(start_ns, label_seconds[order]),
            "fraud_scenario": scenario[order],
        }
    )
    return frame[TRANSACTION_COLUMNS]


def _build_world(config: SimulationConfig, rng: np.random.Generator) -> _World:
    from scipy.spatial import cKDTree

    customer_xy = rng.uniform(0, GRID_SIZE, size=(config.n_customers, 2))
    terminal_xy = rng.uniform(0, GRID_SIZE, size=(config.n_terminals, 2))
    amount_mean = config.amount_median * np.exp(config.amount_spread * rng.standard_normal(config.n_customers))
    amount_mean = np.clip(amount_mean, 1.0, None)
    amount_cv = rng.uniform(0.3, 0.8, size=config.n_customers)
    sigma2 = np.log1p(amount_cv**2)
    tx_per_day = rng.uniform(config.tx_per_day_min, config.tx_per_day_max, size=config.n_customers)

    # Terminals in reach, as one flat array sliced per customer.
    terminals = cKDTree(terminal_xy)
    pairs = cKDTree(customer_xy).sparse_distance_matrix(terminals, config.radius, output_type="ndarray")
    who = pairs["i"].astype("int64")
    where = pairs["j"].astype("int64")
    counts = np.bincount(who, minlength=config.n_customers)
    few = np.flatnonzero(counts < config.min_terminals)
    if len(few):
        k = min(config.min_terminals, config.n_terminals)
        _, nearest = terminals.query(customer_xy[few], k=k)
        nearest = np.asarray(nearest, dtype="int64").reshape(len(few), k)
        keep = ~np.isin(who, few)
        who = np.concatenate([who[keep], np.repeat(few, k)])
        where = np.concatenate([where[keep], nearest.ravel()])
        counts = np.bincount(who, minlength=config.n_customers)
    order = np.lexsort((where, who))
    reach_start = np.concatenate([[0], np.cumsum(counts)[:-1]])

    return _World(
        customer_xy=customer_xy,
        terminal_xy=terminal_xy,
        amount_mu=np.log(amount_mean) - sigma2 / 2,
        amount_sigma=np.sqrt(sigma2),
        amount_mean=amount_mean,
        tx_per_day=tx_per_day,
        reach_start=reach_start,
        reach_count=counts,
        reach_terminals=where[order],
    )


def _times_of_day(weights: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Seconds after midnight, with hours drawn from `weights` and a uniform second within the hour."""
    cumulative = np.cumsum(weights) / weights.sum()
    hours = np.minimum(np.searchsorted(cumulative, rng.random(size), side="right"), 23)
    return hours * 3600 + rng.integers(0, 3600, size=size)


def _genuine_payments(
    config: SimulationConfig, world: _World, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rates = world.tx_per_day[:, None] * _day_factors(config)[None, :]
    counts = rng.poisson(rates).ravel()
    cell = np.repeat(np.arange(counts.size), counts)
    customer, day = np.divmod(cell, config.days)
    n = len(cell)

    seconds = day * SECONDS_PER_DAY + _times_of_day(HOURLY_WEIGHTS, n, rng)
    pick = (rng.random(n) * world.reach_count[customer]).astype("int64")
    terminal = world.reach_terminals[world.reach_start[customer] + pick]
    amount = np.exp(world.amount_mu[customer] + world.amount_sigma[customer] * rng.standard_normal(n))
    return customer, terminal, seconds, np.maximum(np.round(amount, 2), 0.01)


def _compromise_terminals(
    config: SimulationConfig,
    terminal: np.ndarray,
    seconds: np.ndarray,
    scenario: np.ndarray,
    target: float,
    rng: np.random.Generator,
) -> None:
    """Pick compromise periods at random until they are expected to hold `target` frauds, then mark them."""
    if target <= 0 or len(terminal) == 0:
        return
    days, n_terminals = config.days, config.n_terminals
    day = seconds // SECONDS_PER_DAY
    traffic = np.bincount(terminal * days + day, minlength=n_terminals * days).reshape(n_terminals, days)
    cumulative = np.zeros((n_terminals, days + 1), dtype="int64")
    np.cumsum(traffic, axis=1, out=cumulative[:, 1:])

    shortest, longest = config.compromised_days
    share = config.compromised_fraud_share
    # Periods start uniformly from `longest` days before the first day, so the first days already see some.
    per_period = share * len(terminal) / (n_terminals * days) * (shortest + longest) / 2 * days / (days + longest)
    n_candidates = int(min(3 * target / max(per_period, 1e-9) + 20, 50 * n_terminals * (days + longest) / shortest))
    period_terminal = rng.integers(0, n_terminals, size=n_candidates)
    period_start = rng.integers(-longest + 1, days, size=n_candidates)
    period_end = period_start + rng.integers(shortest, longest + 1, size=n_candidates)
    first = np.clip(period_start, 0, days)
    last = np.clip(period_end, 0, days)
    expected = share * np.cumsum(cumulative[period_terminal, last] - cumulative[period_terminal, first])
    n_periods = min(int(np.searchsorted(expected, target)) + 1, n_candidates)

    lengths = (last - first)[:n_periods]
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    compromised = np.zeros((n_terminals, days), dtype=bool)
    compromised[np.repeat(period_terminal[:n_periods], lengths), np.repeat(first[:n_periods], lengths) + offsets] = True
    hit = compromised[terminal, day] & (rng.random(len(terminal)) < share)
    scenario[hit] = SCENARIO_COMPROMISED_TERMINAL


def _inflate_amounts(
    config: SimulationConfig,
    world: _World,
    customer: np.ndarray,
    amount: np.ndarray,
    scenario: np.ndarray,
    count: int,
    rng: np.random.Generator,
) -> None:
    genuine = np.flatnonzero(scenario == SCENARIO_GENUINE)
    count = min(count, len(genuine))
    if count <= 0:
        return
    chosen = np.sort(rng.choice(genuine, size=count, replace=False))
    low, high = config.large_amount_factor
    factor = rng.uniform(low, high, size=count)
    amount[chosen] = np.round(world.amount_mean[customer[chosen]] * factor, 2)
    scenario[chosen] = SCENARIO_LARGE_AMOUNT


def _stolen_card_bursts(
    config: SimulationConfig, world: _World, target: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """New rows (customer, terminal, seconds, amount) for thieves' bursts, about `target` of them."""
    low, high = config.burst_size
    n_cards = round(target / ((low + high) / 2))
    if n_cards <= 0:
        empty = np.zeros(0, dtype="int64")
        return empty, empty.copy(), empty.copy(), np.zeros(0, dtype="float64")

    victim = rng.choice(config.n_customers, size=n_cards, replace=n_cards > config.n_customers)
    theft = rng.integers(0, config.days, size=n_cards) * SECONDS_PER_DAY
    theft = theft + _times_of_day(THIEF_HOURLY_WEIGHTS, n_cards, rng)
    span = rng.uniform(0.5, config.burst_hours, size=n_cards) * 3600
    size = rng.integers(low, high + 1, size=n_cards)

    burst = np.repeat(np.arange(n_cards), size)
    n = len(burst)
    position = np.arange(n) - np.repeat(np.cumsum(size) - size, size)
    # Sorted offsets inside each burst, the first payment at the moment of theft.
    offset = rng.random(n) * span[burst]
    offset = offset[np.lexsort((offset, burst))]
    offset[position == 0] = 0
    period_end = config.days * SECONDS_PER_DAY - 1
    seconds = np.minimum(theft[burst] + offset.astype("int64"), period_end)

    customer = victim[burst]
    terminal = _far_terminals(config, world, customer, rng)
    a_low, a_high = config.burst_amount_factor
    amount = world.amount_mean[customer] * rng.uniform(a_low, a_high, size=n)
    card_test = (position == 0) & (rng.random(n_cards) < config.card_test_share)[burst]
    amount = np.where(card_test, rng.uniform(0.5, 5.0, size=n), amount)
    return customer, terminal, seconds, np.maximum(np.round(amount, 2), 0.01)


def _far_terminals(
    config: SimulationConfig, world: _World, customer: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Random terminals, redrawn (a few times) while they are within `far_distance` of the customer's home."""
    terminal = rng.integers(0, config.n_terminals, size=len(customer))
    home = world.customer_xy[customer]
    for _ in range(10):
        gap = world.terminal_xy[terminal] - home
        near = np.flatnonzero(np.hypot(gap[:, 0], gap[:, 1]) < config.far_distance)
        if len(near) == 0:
            break
        terminal[near] = rng.integers(0, config.n_terminals, size=len(near))
    return terminal


def _ids(prefix: str, numbers: np.ndarray, width: int) -> np.ndarray:
    """'C00042'-style identifiers built digit by digit in numpy; wider numbers get more digits."""
    numbers = np.asarray(numbers, dtype="int64")
    if len(numbers) == 0:
        return np.zeros(0, dtype=object)
    width = max(width, len(str(int(numbers.max()))))
    powers = 10 ** np.arange(width - 1, -1, -1, dtype="int64")
    digits = (numbers[:, None] // powers[None, :]) % 10 + ord("0")
    head = np.frombuffer(prefix.encode("ascii"), dtype="uint8")
    chars = np.concatenate([np.broadcast_to(head, (len(numbers), len(head))), digits.astype("uint8")], axis=1)
    text = np.ascontiguousarray(chars).view(f"S{chars.shape[1]}").ravel()
    return text.astype(str).astype(object)


def _utc(start_ns: int, seconds: np.ndarray) -> pd.Series:
    return pd.Series(pd.to_datetime(start_ns + seconds.astype("int64") * 1_000_000_000, unit="ns", utc=True))


def fraud_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows and share of all rows per fraud scenario, for reports and sanity checks."""
    counts = frame["fraud_scenario"].value_counts().reindex(list(SCENARIO_NAMES), fill_value=0)
    return pd.DataFrame(
        {
            "scenario": [SCENARIO_NAMES[s] for s in counts.index],
            "rows": counts.to_numpy(),
            "share": counts.to_numpy() / max(len(frame), 1),
        }
    )
