"""Fraud features, one implementation for the batch backfill and the stream processor.

`FraudFeatureEngine` keeps per-customer and per-terminal window state and turns each transaction into one new
customer row and one new terminal row (the state *including* that transaction). The backfill runs it over a file
in time order; the stream processor runs the same object over Kafka micro-batches. Because both call the same
`add_transaction` / `add_label` in the same order, online rows equal offline rows.

Terminal risk uses only labels already known: a transaction enters the terminal windows `label_delay_days` after
it happened (window (t - delay - w, t - delay]) and counts as fraud only once its chargeback's label time has
passed.

A model input is "the stored rows as of just before the transaction" plus request-time features computed from
the transaction itself (`request_features`), the same function at training and at serving time.
"""

from __future__ import annotations

import heapq
from bisect import insort
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from feature_repo.fraud import CUSTOMER_FEATURES, TERMINAL_FEATURES, WINDOWS_DAYS
from pipelines.platform.features import epoch_seconds

DAY = 86_400.0

REQUEST_FEATURES = [
    "amount",
    "hour_of_day",
    "is_weekend",
    "is_night",
    "seconds_since_last_tx",
    "amount_to_avg_7d",
    "amount_to_avg_30d",
]
STORED_MODEL_FEATURES = [c for c in CUSTOMER_FEATURES if c != "customer_last_tx_epoch"] + TERMINAL_FEATURES
MODEL_FEATURES = REQUEST_FEATURES + STORED_MODEL_FEATURES
# What a customer with no history looks like to the model.
NO_HISTORY_SECONDS = 90 * DAY


@dataclass
class _CustomerState:
    windows: list[deque[tuple[float, float]]] = field(default_factory=lambda: [deque() for _ in WINDOWS_DAYS])
    counts: list[int] = field(default_factory=lambda: [0] * len(WINDOWS_DAYS))
    sums: list[float] = field(default_factory=lambda: [0.0] * len(WINDOWS_DAYS))
    clock: float = float("-inf")


@dataclass
class _TerminalState:
    waiting: deque[float] = field(default_factory=deque)  # transaction times not yet `delay` old
    windows: list[deque[float]] = field(default_factory=lambda: [deque() for _ in WINDOWS_DAYS])
    pending_frauds: list[tuple[float, float]] = field(default_factory=list)  # heap of (enter time, tx time)
    active_frauds: list[list[float]] = field(default_factory=lambda: [[] for _ in WINDOWS_DAYS])  # heaps of leave
    clock: float = float("-inf")


def _append_in_order(window: deque, item: float | tuple[float, float]) -> None:
    """Append, or insert in time order when a transaction arrives late (rare in a stream, never in a backfill)."""
    if window and item < window[-1]:
        insort(window, item)
    else:
        window.append(item)


class FraudFeatureEngine:
    """Window state for every customer and terminal; times are epoch seconds."""

    def __init__(self, label_delay_days: float = 7) -> None:
        self.delay = label_delay_days * DAY
        self.spans = [w * DAY for w in WINDOWS_DAYS]
        self.customers: dict[str, _CustomerState] = {}
        self.terminals: dict[str, _TerminalState] = {}

    def add_label(self, terminal_id: str, tx_time: float, label_time: float) -> None:
        """A chargeback for a transaction at `terminal_id`; it counts from max(tx + delay, label time)."""
        state = self.terminals.setdefault(terminal_id, _TerminalState())
        heapq.heappush(state.pending_frauds, (max(tx_time + self.delay, label_time), tx_time))

    def add_transaction(self, customer_id: str, terminal_id: str, time: float, amount: float) -> tuple[tuple, tuple]:
        """Update state with one transaction; return the new customer row and terminal row (without ids/time)."""
        return self.customer_row(customer_id, time, amount), self.terminal_row(terminal_id, time)

    def customer_row(self, customer_id: str, time: float, amount: float) -> tuple:
        """Add one transaction to its customer's windows; the customer's new row (counts, means, clock)."""
        state = self.customers.get(customer_id)
        if state is None:
            state = self.customers[customer_id] = _CustomerState()
        clock = state.clock = max(state.clock, time)
        counts, sums = state.counts, state.sums
        for i, span in enumerate(self.spans):
            window = state.windows[i]
            horizon = clock - span
            if time > horizon:  # a late transaction already older than the window never enters it
                _append_in_order(window, (time, amount))
                counts[i] += 1
                sums[i] += amount
            while window and window[0][0] <= horizon:
                _, old = window.popleft()
                counts[i] -= 1
                sums[i] -= old
        means = [round(s / c, 6) if c else 0.0 for s, c in zip(sums, counts, strict=True)]
        return (*counts, *means, clock)

    def terminal_row(self, terminal_id: str, time: float) -> tuple:
        """Add one transaction to its terminal's (delayed) windows; the terminal's new row (counts, risks)."""
        state = self.terminals.get(terminal_id)
        if state is None:
            state = self.terminals[terminal_id] = _TerminalState()
        clock = state.clock = max(state.clock, time)
        entered = clock - self.delay  # transactions at or before this time are inside the delayed windows
        while state.waiting and state.waiting[0] <= entered:
            tx_time = state.waiting.popleft()
            for window in state.windows:
                _append_in_order(window, tx_time)
        while state.pending_frauds and state.pending_frauds[0][0] <= clock:
            _, tx_time = heapq.heappop(state.pending_frauds)
            for i, span in enumerate(self.spans):
                leave = tx_time + self.delay + span
                if leave > clock:
                    heapq.heappush(state.active_frauds[i], leave)
        counts, risks = [], []
        for i, span in enumerate(self.spans):
            window, frauds = state.windows[i], state.active_frauds[i]
            while window and window[0] + self.delay + span <= clock:
                window.popleft()
            while frauds and frauds[0] <= clock:
                heapq.heappop(frauds)
            counts.append(len(window))
            risks.append(round(min(len(frauds), len(window)) / len(window), 6) if window else 0.0)
        _append_in_order(state.waiting, time)
        return (*counts, *risks)

    # -- state as bytes, for the stream processors' checkpoints (pipelines/platform/state.py)

    def export_customer(self, customer_id: str) -> bytes:
        """One customer's windows as float64s: clock, then per window its sum, length and (time, amount) pairs."""
        state = self.customers[customer_id]
        values = [state.clock]
        for window, total in zip(state.windows, state.sums, strict=True):
            values += [total, float(len(window))]
            values += [x for pair in window for x in pair]
        return np.asarray(values, dtype=np.float64).tobytes()

    def import_customer(self, customer_id: str, data: bytes) -> None:
        values = np.frombuffer(data, dtype=np.float64).tolist()
        state = _CustomerState(clock=values[0])
        i = 1
        for w in range(len(WINDOWS_DAYS)):
            total, length = values[i], int(values[i + 1])
            pairs = values[i + 2 : i + 2 + 2 * length]
            state.windows[w] = deque(zip(pairs[0::2], pairs[1::2], strict=True))
            state.counts[w], state.sums[w] = length, total
            i += 2 + 2 * length
        self.customers[customer_id] = state

    def export_terminal(self, terminal_id: str) -> bytes:
        """One terminal's state as float64s: clock, waiting times, windows, pending and active frauds (heaps as is)."""
        state = self.terminals[terminal_id]
        values = [state.clock, float(len(state.waiting)), *state.waiting]
        for window in state.windows:
            values += [float(len(window)), *window]
        values += [float(len(state.pending_frauds))] + [x for pair in state.pending_frauds for x in pair]
        for active in state.active_frauds:
            values += [float(len(active)), *active]
        return np.asarray(values, dtype=np.float64).tobytes()

    def import_terminal(self, terminal_id: str, data: bytes) -> None:
        values = np.frombuffer(data, dtype=np.float64).tolist()

        def take(i: int) -> tuple[list[float], int]:
            length = int(values[i])
            return values[i + 1 : i + 1 + length], i + 1 + length

        state = _TerminalState(clock=values[0])
        waiting, i = take(1)
        state.waiting = deque(waiting)
        for w in range(len(WINDOWS_DAYS)):
            window, i = take(i)
            state.windows[w] = deque(window)
        length = int(values[i])
        pairs = values[i + 1 : i + 1 + 2 * length]
        state.pending_frauds = list(zip(pairs[0::2], pairs[1::2], strict=True))
        i += 1 + 2 * length
        for w in range(len(WINDOWS_DAYS)):
            active, i = take(i)
            state.active_frauds[w] = active
        self.terminals[terminal_id] = state

    def run(
        self, customer_ids: Iterable[str], terminal_ids: Iterable[str], times: Iterable[float], amounts: Iterable[float]
    ) -> tuple[list[tuple], list[tuple]]:
        """Process transactions in the given order; return customer rows and terminal rows."""
        customer_rows, terminal_rows = [], []
        for customer_id, terminal_id, time, amount in zip(customer_ids, terminal_ids, times, amounts, strict=True):
            customer_row, terminal_row = self.add_transaction(customer_id, terminal_id, time, amount)
            customer_rows.append(customer_row)
            terminal_rows.append(terminal_row)
        return customer_rows, terminal_rows


def feature_frames(
    transactions: pd.DataFrame, customer_rows: list[tuple], terminal_rows: list[tuple]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Attach ids and event timestamps to engine rows: the shape Feast stores."""
    timestamps = pd.to_datetime(transactions["timestamp"], utc=True).to_numpy()
    customers = pd.DataFrame(customer_rows, columns=CUSTOMER_FEATURES)
    customers.insert(0, "customer_id", transactions["customer_id"].astype(str).to_numpy())
    customers.insert(1, "event_timestamp", pd.to_datetime(timestamps, utc=True))
    terminals = pd.DataFrame(terminal_rows, columns=TERMINAL_FEATURES)
    terminals.insert(0, "terminal_id", transactions["terminal_id"].astype(str).to_numpy())
    terminals.insert(1, "event_timestamp", pd.to_datetime(timestamps, utc=True))
    return customers, terminals


def backfill_features(
    transactions: pd.DataFrame, label_delay_days: float = 7, engine: FraudFeatureEngine | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Customer and terminal feature rows for every transaction of a file, through the streaming engine."""
    engine = engine or FraudFeatureEngine(label_delay_days)
    frauds = transactions[transactions["is_fraud"] == 1]
    for terminal_id, tx_time, label_time in zip(
        frauds["terminal_id"].astype(str),
        epoch_seconds(frauds["timestamp"]),
        epoch_seconds(frauds["label_timestamp"]),
        strict=True,
    ):
        engine.add_label(terminal_id, tx_time, label_time)
    ordered = transactions.sort_values(["timestamp", "transaction_id"], kind="stable")
    customer_rows, terminal_rows = engine.run(
        ordered["customer_id"].astype(str).tolist(),
        ordered["terminal_id"].astype(str).tolist(),
        epoch_seconds(ordered["timestamp"]).tolist(),
        ordered["amount"].astype(float).tolist(),
    )
    return feature_frames(ordered, customer_rows, terminal_rows)


def request_features(columns: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Features computed from the transaction and its fetched rows; works on 1 row (serving) or N (training).

    `columns` holds `timestamp_epoch`, `amount` and the stored features (NaN where an entity has no row yet).
    """
    epoch = np.asarray(columns["timestamp_epoch"], dtype=float)
    amount = np.asarray(columns["amount"], dtype=float)
    hour = (epoch % DAY) // 3600
    weekday = ((epoch // DAY) + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
    last = np.asarray(columns["customer_last_tx_epoch"], dtype=float)
    since_last = np.where(np.isnan(last), NO_HISTORY_SECONDS, np.clip(epoch - last, 0, NO_HISTORY_SECONDS))
    out = {
        "amount": amount,
        "hour_of_day": hour,
        "is_weekend": (weekday >= 5).astype(float),
        "is_night": (hour < 6).astype(float),
        "seconds_since_last_tx": since_last,
    }
    for w in (7, 30):
        avg = np.asarray(columns[f"customer_avg_amount_{w}d"], dtype=float)
        out[f"amount_to_avg_{w}d"] = np.where(np.isnan(avg) | (avg <= 0), 1.0, amount / np.where(avg > 0, avg, 1))
    return out


def model_matrix(frame: pd.DataFrame) -> pd.DataFrame:
    """Model inputs for transactions joined with their stored feature rows (columns may hold NaN)."""
    columns = {name: frame[name].to_numpy(dtype=float) for name in STORED_MODEL_FEATURES}
    columns["customer_last_tx_epoch"] = frame["customer_last_tx_epoch"].to_numpy(dtype=float)
    columns["timestamp_epoch"] = epoch_seconds(frame["timestamp"])
    columns["amount"] = frame["amount"].to_numpy(dtype=float)
    computed = request_features(columns)
    matrix = pd.DataFrame({name: computed[name] for name in REQUEST_FEATURES}, index=frame.index)
    for name in STORED_MODEL_FEATURES:
        matrix[name] = np.nan_to_num(columns[name], nan=0.0)
    return matrix[MODEL_FEATURES]
