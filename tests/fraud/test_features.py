"""Fraud window features: what each row means, checked by hand, and the same rows in batch and in micro-batches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from feature_repo.fraud import CUSTOMER_FEATURES, TERMINAL_FEATURES, WINDOWS_DAYS
from pipelines.fraud.features import (
    DAY,
    MODEL_FEATURES,
    NO_HISTORY_SECONDS,
    REQUEST_FEATURES,
    STORED_MODEL_FEATURES,
    FraudFeatureEngine,
    backfill_features,
    epoch_seconds,
    feature_frames,
    model_matrix,
    request_features,
)
from pipelines.fraud.simulate import SimulationConfig, simulate_transactions

pytestmark = pytest.mark.unit

HOUR = 3600.0
DELAY_DAYS = 2
DELAY = DELAY_DAYS * DAY


def customer_row(row: tuple) -> dict[str, float]:
    return dict(zip(CUSTOMER_FEATURES, row, strict=True))


def terminal_row(row: tuple) -> dict[str, float]:
    return dict(zip(TERMINAL_FEATURES, row, strict=True))


def counts(row: dict[str, float], prefix: str) -> tuple:
    return tuple(row[f"{prefix}_tx_count_{w}d"] for w in WINDOWS_DAYS)


def risks(row: dict[str, float]) -> tuple:
    return tuple(row[f"terminal_risk_{w}d"] for w in WINDOWS_DAYS)


def terminal_view_at(
    probe_day: float, tx_days: list[float], labels: list[tuple[float, float]] = ()
) -> dict[str, float]:
    """The terminal row that a new payment at `probe_day` sees, after payments at `tx_days` on terminal 'm'.

    `labels` are (payment day, label day) chargebacks. A fresh engine per probe keeps the probe itself out of
    the history of other probes.
    """
    engine = FraudFeatureEngine(label_delay_days=DELAY_DAYS)
    for tx_day, label_day in labels:
        engine.add_label("m", tx_day * DAY, label_day * DAY)
    for i, day in enumerate(tx_days):
        engine.add_transaction(f"c{i}", "m", day * DAY, 10.0)
    _, row = engine.add_transaction("probe", "m", probe_day * DAY, 10.0)
    return terminal_row(row)


# ---------------------------------------------------------------- customer windows


def test_customer_counts_and_means_by_hand() -> None:
    """Windows include the current payment; a payment exactly w days old has left the w-day window."""
    engine = FraudFeatureEngine(label_delay_days=DELAY_DAYS)
    rows = [
        customer_row(engine.add_transaction("c", "m1", day * DAY, amount)[0])
        for day, amount in [(0, 10.0), (0.5, 20.0), (1.0, 30.0), (7.0, 40.0), (30.5, 50.0)]
    ]
    first, half_day, one_day, seven_days, last = rows

    assert counts(first, "customer") == (1, 1, 1)
    assert first["customer_avg_amount_1d"] == 10.0

    assert counts(half_day, "customer") == (2, 2, 2)
    assert half_day["customer_avg_amount_30d"] == 15.0

    # day 1.0: the payment of day 0 is exactly one day old and has left the 1-day window only
    assert counts(one_day, "customer") == (2, 3, 3)
    assert one_day["customer_avg_amount_1d"] == 25.0
    assert one_day["customer_avg_amount_7d"] == 20.0

    # day 7.0: day 0 has left the 7-day window; days 0.5 and 1.0 are still inside it
    assert counts(seven_days, "customer") == (1, 3, 4)
    assert seven_days["customer_avg_amount_1d"] == 40.0
    assert seven_days["customer_avg_amount_7d"] == 30.0
    assert seven_days["customer_avg_amount_30d"] == 25.0

    # day 30.5: days 0 and 0.5 are 30 days old or more; 1.0, 7.0 and 30.5 remain
    assert counts(last, "customer") == (1, 1, 3)
    assert last["customer_avg_amount_30d"] == pytest.approx(40.0)
    assert last["customer_last_tx_epoch"] == 30.5 * DAY


@pytest.mark.parametrize("window", WINDOWS_DAYS)
@pytest.mark.parametrize(("age", "expected"), [(-1.0, 2), (0.0, 1), (1.0, 1)], ids=["w-1s", "w", "w+1s"])
def test_customer_window_edge(window: int, age: float, expected: int) -> None:
    engine = FraudFeatureEngine()
    engine.add_transaction("c", "m", 0.0, 5.0)
    row = customer_row(engine.add_transaction("c", "m", window * DAY + age, 15.0)[0])
    assert row[f"customer_tx_count_{window}d"] == expected
    assert row[f"customer_avg_amount_{window}d"] == (10.0 if expected == 2 else 15.0)


def test_customers_do_not_share_windows() -> None:
    engine = FraudFeatureEngine()
    engine.add_transaction("a", "m", 0.0, 100.0)
    engine.add_transaction("a", "m", HOUR, 100.0)
    row = customer_row(engine.add_transaction("b", "m", 2 * HOUR, 7.0)[0])
    assert counts(row, "customer") == (1, 1, 1)
    assert row["customer_avg_amount_30d"] == 7.0


# ---------------------------------------------------------------- terminal windows (delayed by the label delay)


@pytest.mark.parametrize(
    ("probe_day", "expected"),
    [
        (DELAY_DAYS - 1 / 86_400, (0, 0, 0)),  # not yet `delay` old: its label could still be unknown
        (DELAY_DAYS, (1, 1, 1)),  # enters every window at tx_time + delay
        (DELAY_DAYS + 1 - 1 / 86_400, (1, 1, 1)),
        (DELAY_DAYS + 1, (0, 1, 1)),  # leaves the 1-day window at tx_time + delay + 1 day
        (DELAY_DAYS + 7 - 1 / 86_400, (0, 1, 1)),
        (DELAY_DAYS + 7, (0, 0, 1)),
        (DELAY_DAYS + 30 - 1 / 86_400, (0, 0, 1)),
        (DELAY_DAYS + 30, (0, 0, 0)),
    ],
)
def test_terminal_counts_appear_after_the_delay_and_leave_after_delay_plus_window(
    probe_day: float, expected: tuple
) -> None:
    assert counts(terminal_view_at(probe_day, [0.0]), "terminal") == expected


def test_the_current_payment_is_not_in_its_own_terminal_row() -> None:
    engine = FraudFeatureEngine(label_delay_days=DELAY_DAYS)
    _, row = engine.add_transaction("c", "m", 10 * DAY, 1.0)
    assert counts(terminal_row(row), "terminal") == (0, 0, 0)
    assert risks(terminal_row(row)) == (0.0, 0.0, 0.0)


def test_terminals_do_not_share_windows() -> None:
    engine = FraudFeatureEngine(label_delay_days=DELAY_DAYS)
    engine.add_label("m", 0.0, DAY)
    engine.add_transaction("c", "m", 0.0, 1.0)
    _, row = engine.add_transaction("c", "other", 3 * DAY, 1.0)
    assert counts(terminal_row(row), "terminal") == (0, 0, 0)
    assert risks(terminal_row(row)) == (0.0, 0.0, 0.0)


def test_a_label_known_before_the_delay_counts_as_soon_as_the_payment_enters() -> None:
    labels = [(0.0, DELAY_DAYS - 1)]
    assert risks(terminal_view_at(DELAY_DAYS - 0.5, [0.0], labels)) == (0.0, 0.0, 0.0)
    assert risks(terminal_view_at(DELAY_DAYS, [0.0], labels)) == (1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("probe_day", "expected_counts", "expected_risks"),
    [
        (DELAY_DAYS, (1, 1, 1), (0.0, 0.0, 0.0)),  # in the windows, chargeback not arrived yet
        (DELAY_DAYS + 1.5, (0, 1, 1), (0.0, 0.0, 0.0)),
        (DELAY_DAYS + 2 - 1 / 86_400, (0, 1, 1), (0.0, 0.0, 0.0)),
        (DELAY_DAYS + 2, (0, 1, 1), (0.0, 1.0, 1.0)),  # label time passed; it has already left the 1-day window
        (DELAY_DAYS + 7, (0, 0, 1), (0.0, 0.0, 1.0)),
        (DELAY_DAYS + 30, (0, 0, 0), (0.0, 0.0, 0.0)),
    ],
)
def test_a_late_label_counts_only_once_its_label_time_has_passed(
    probe_day: float, expected_counts: tuple, expected_risks: tuple
) -> None:
    row = terminal_view_at(probe_day, [0.0], [(0.0, DELAY_DAYS + 2)])
    assert counts(row, "terminal") == expected_counts
    assert risks(row) == expected_risks


def test_risk_is_known_frauds_over_payments_in_the_window() -> None:
    tx_days = [0.0, 0.25, 0.5]
    labels = [(0.25, 1.0)]
    row = terminal_view_at(DELAY_DAYS + 0.75, tx_days, labels)
    assert counts(row, "terminal") == (3, 3, 3)
    assert risks(row) == pytest.approx((1 / 3, 1 / 3, 1 / 3), abs=1e-6)

    # two more frauds, one labelled in time and one whose label is still in the future
    labels += [(0.0, 1.5), (0.5, DELAY_DAYS + 5)]
    row = terminal_view_at(DELAY_DAYS + 0.75, tx_days, labels)
    assert risks(row) == pytest.approx((2 / 3, 2 / 3, 2 / 3), abs=1e-6)


# ---------------------------------------------------------------- ordering and duplicates


def tx_frame(rows: list[tuple[str, str, str, str, float, int, str | None]]) -> pd.DataFrame:
    frame = pd.DataFrame(
        rows, columns=["transaction_id", "timestamp", "customer_id", "terminal_id", "amount", "is_fraud", "label"]
    )
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    frame["label_timestamp"] = pd.to_datetime(frame.pop("label"), utc=True)
    frame["label_timestamp"] = frame["label_timestamp"].fillna(frame["timestamp"] + pd.Timedelta(days=DELAY_DAYS))
    return frame


def test_backfill_orders_rows_by_time_then_transaction_id() -> None:
    frame = tx_frame(
        [
            ("t3", "2026-01-02T12:00:00Z", "c1", "m1", 30.0, 0, None),
            ("b", "2026-01-01T12:00:00Z", "c1", "m1", 20.0, 0, None),
            ("a", "2026-01-01T12:00:00Z", "c1", "m1", 10.0, 0, None),
        ]
    )
    customers, terminals = backfill_features(frame, DELAY_DAYS)
    assert customers["event_timestamp"].is_monotonic_increasing
    # ties on time are broken by id: 'a' comes first, so 'b' sees both payments of that instant
    assert customers["customer_tx_count_1d"].tolist() == [1, 2, 1]
    assert customers["customer_avg_amount_1d"].tolist() == [10.0, 15.0, 30.0]
    assert customers["customer_avg_amount_7d"].tolist() == [10.0, 15.0, 20.0]
    assert list(customers.columns) == ["customer_id", "event_timestamp", *CUSTOMER_FEATURES]
    assert list(terminals.columns) == ["terminal_id", "event_timestamp", *TERMINAL_FEATURES]


def test_backfill_of_a_shuffled_file_equals_backfill_of_the_sorted_file(simulated: pd.DataFrame) -> None:
    expected = backfill_features(simulated, DELAY_DAYS)
    shuffled = simulated.sample(frac=1.0, random_state=5)
    assert not shuffled["timestamp"].is_monotonic_increasing
    for got, want in zip(backfill_features(shuffled, DELAY_DAYS), expected, strict=True):
        pd.testing.assert_frame_equal(got, want)


def test_the_engine_does_not_deduplicate_a_repeated_payment() -> None:
    """Dropping repeated transaction ids is the stream sink's job; the engine counts what it is given."""
    engine = FraudFeatureEngine()
    engine.add_transaction("c", "m", 0.0, 10.0)
    row = customer_row(engine.add_transaction("c", "m", 0.0, 10.0)[0])
    assert counts(row, "customer") == (2, 2, 2)


def test_a_late_payment_does_not_linger_in_windows_it_is_older_than() -> None:
    engine = FraudFeatureEngine()
    engine.add_transaction("c", "m", 10 * DAY, 10.0)
    engine.add_transaction("c", "m", 1 * DAY, 20.0)  # arrives late: nine days old already
    row = customer_row(engine.add_transaction("c", "m", 10 * DAY + HOUR, 30.0)[0])
    assert counts(row, "customer") == (2, 2, 3)


# ---------------------------------------------------------------- one implementation for batch and stream


@pytest.fixture(scope="module")
def simulated() -> pd.DataFrame:
    """Simulated payments whose chargebacks arrive from half a day to six days later: before and after the delay."""
    frame = simulate_transactions(
        SimulationConfig(
            n_customers=150, n_terminals=200, days=40, fraud_rate=0.05, label_delay_days=DELAY_DAYS, seed=5
        )
    )
    lag = np.random.default_rng(6).uniform(0.5, 6.0, size=len(frame))
    frame["label_timestamp"] = frame["timestamp"] + pd.to_timedelta(lag, unit="D")
    return frame


def reference_rows(frame: pd.DataFrame, positions: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A direct, slow reading of the window definitions for some rows of a time-ordered frame."""
    times = epoch_seconds(frame["timestamp"])
    label_times = epoch_seconds(frame["label_timestamp"])
    customers = frame["customer_id"].to_numpy()
    terminals = frame["terminal_id"].to_numpy()
    amounts = frame["amount"].to_numpy(dtype=float)
    fraud = frame["is_fraud"].to_numpy() == 1
    customer_rows, terminal_rows = [], []
    for i in positions:
        t = times[i]
        mine = (customers == customers[i]) & (np.arange(len(frame)) <= i)
        customer = {}
        for w in WINDOWS_DAYS:
            inside = mine & (times > t - w * DAY)
            customer[f"customer_tx_count_{w}d"] = int(inside.sum())
            customer[f"customer_avg_amount_{w}d"] = amounts[inside].mean()
        customer_rows.append(customer)
        here = terminals == terminals[i]
        terminal = {}
        for w in WINDOWS_DAYS:
            inside = here & (times + DELAY <= t) & (times + DELAY + w * DAY > t)
            known = inside & fraud & (label_times <= t)
            terminal[f"terminal_tx_count_{w}d"] = int(inside.sum())
            terminal[f"terminal_risk_{w}d"] = known.sum() / inside.sum() if inside.any() else 0.0
        terminal_rows.append(terminal)
    return pd.DataFrame(customer_rows), pd.DataFrame(terminal_rows)


def test_backfill_rows_match_a_direct_reading_of_the_definitions(simulated: pd.DataFrame) -> None:
    customers, terminals = backfill_features(simulated, DELAY_DAYS)
    positions = np.random.default_rng(1).choice(len(simulated), size=300, replace=False)
    want_customers, want_terminals = reference_rows(simulated, positions)
    got_customers = customers.iloc[positions].reset_index(drop=True)
    got_terminals = terminals.iloc[positions].reset_index(drop=True)
    for column in want_customers:
        np.testing.assert_allclose(got_customers[column], want_customers[column], atol=1e-6, err_msg=column)
    for column in want_terminals:
        np.testing.assert_allclose(got_terminals[column], want_terminals[column], atol=1e-6, err_msg=column)
    assert (terminals["terminal_risk_30d"] > 0).any()  # the sample data exercises the risk path


def run_in_micro_batches(frame: pd.DataFrame, sizes: list[int], labels_up_front: bool) -> list[pd.DataFrame]:
    """Feed the engine chunk by chunk, as the stream processor does, with labels registered as backfill does."""
    engine = FraudFeatureEngine(DELAY_DAYS)
    frauds = frame[frame["is_fraud"] == 1]
    fraud_labels = list(
        zip(
            frauds["terminal_id"].astype(str),
            epoch_seconds(frauds["timestamp"]),
            epoch_seconds(frauds["label_timestamp"]),
            strict=True,
        )
    )
    if labels_up_front:
        for label in fraud_labels:
            engine.add_label(*label)
        fraud_labels = []
    customer_parts, terminal_parts = [], []
    bounds = np.cumsum([0, *sizes])
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        chunk = frame.iloc[start:stop]
        times = epoch_seconds(chunk["timestamp"])
        # labels whose chargeback time falls before the chunk's end arrive with it, as on the labels topic
        arrived = [label for label in fraud_labels if label[2] <= times[-1]]
        fraud_labels = [label for label in fraud_labels if label[2] > times[-1]]
        for label in arrived:
            engine.add_label(*label)
        customer_rows, terminal_rows = engine.run(
            chunk["customer_id"].astype(str).tolist(),
            chunk["terminal_id"].astype(str).tolist(),
            times.tolist(),
            chunk["amount"].astype(float).tolist(),
        )
        customers, terminals = feature_frames(chunk, customer_rows, terminal_rows)
        customer_parts.append(customers)
        terminal_parts.append(terminals)
    return [pd.concat(parts, ignore_index=True) for parts in (customer_parts, terminal_parts)]


@pytest.mark.parametrize("labels_up_front", [True, False], ids=["labels-up-front", "labels-as-they-arrive"])
def test_micro_batches_give_exactly_the_backfill_rows(simulated: pd.DataFrame, labels_up_front: bool) -> None:
    ordered = simulated.sort_values(["timestamp", "transaction_id"], kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(2)
    sizes: list[int] = []
    while sum(sizes) < len(ordered):
        sizes.append(int(min(rng.integers(1, 2500), len(ordered) - sum(sizes))))
    assert len(sizes) > 5

    batch_customers, batch_terminals = backfill_features(simulated, DELAY_DAYS)
    stream_customers, stream_terminals = run_in_micro_batches(ordered, sizes, labels_up_front)
    pd.testing.assert_frame_equal(stream_customers, batch_customers)
    pd.testing.assert_frame_equal(stream_terminals, batch_terminals)


# ---------------------------------------------------------------- request-time features and the model matrix


def stored_columns(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    start = pd.Timestamp("2026-01-01", tz="UTC").value / 1e9
    epoch = start + rng.uniform(0, 30 * DAY, size=n)
    columns: dict[str, np.ndarray] = {
        "timestamp_epoch": epoch,
        "amount": rng.uniform(1, 500, size=n),
        "customer_last_tx_epoch": epoch - rng.uniform(0, 5 * DAY, size=n),
    }
    for name in STORED_MODEL_FEATURES:
        columns[name] = rng.uniform(0, 100, size=n)
    columns["customer_last_tx_epoch"][::3] = np.nan
    columns["customer_avg_amount_7d"][1::4] = np.nan
    columns["customer_avg_amount_30d"][2::5] = 0.0
    return columns


def test_request_features_of_one_row_equal_that_row_in_a_batch() -> None:
    columns = stored_columns(40, np.random.default_rng(3))
    batch = request_features(columns)
    assert set(batch) == set(REQUEST_FEATURES)
    for i in range(40):
        single = request_features({name: values[i : i + 1] for name, values in columns.items()})
        for name in REQUEST_FEATURES:
            assert single[name].shape == (1,)
            assert single[name][0] == batch[name][i], name


def test_request_features_by_hand() -> None:
    saturday_noon = pd.Timestamp("2026-01-03T12:00:00Z").value / 1e9
    monday_night = pd.Timestamp("2026-01-05T03:30:00Z").value / 1e9
    out = request_features(
        {
            "timestamp_epoch": np.array([saturday_noon, monday_night, monday_night]),
            "amount": np.array([100.0, 30.0, 30.0]),
            "customer_last_tx_epoch": np.array([np.nan, monday_night - 600, monday_night + 60]),
            "customer_avg_amount_7d": np.array([50.0, np.nan, 0.0]),
            "customer_avg_amount_30d": np.array([25.0, 60.0, np.nan]),
        }
    )
    assert out["hour_of_day"].tolist() == [12, 3, 3]
    assert out["is_weekend"].tolist() == [1.0, 0.0, 0.0]
    assert out["is_night"].tolist() == [0.0, 1.0, 1.0]
    # no history looks like a long silence; a stored row from the future is clipped to zero
    assert out["seconds_since_last_tx"].tolist() == [NO_HISTORY_SECONDS, 600.0, 0.0]
    # a missing or zero average reads as "a usual amount"
    assert out["amount_to_avg_7d"].tolist() == [2.0, 1.0, 1.0]
    assert out["amount_to_avg_30d"].tolist() == [4.0, 0.5, 1.0]


def test_model_matrix_has_the_model_columns_in_order_and_no_missing_values() -> None:
    rng = np.random.default_rng(4)
    columns = stored_columns(6, rng)
    frame = pd.DataFrame({name: columns[name] for name in STORED_MODEL_FEATURES})
    frame["customer_last_tx_epoch"] = columns["customer_last_tx_epoch"]
    frame["amount"] = columns["amount"]
    frame["timestamp"] = pd.to_datetime(columns["timestamp_epoch"], unit="s", utc=True)
    frame["transaction_id"] = [f"t{i}" for i in range(6)]  # extra columns are left out
    frame.loc[0, STORED_MODEL_FEATURES] = np.nan  # a customer and terminal with no stored row yet
    frame.index = pd.Index([10, 11, 12, 13, 14, 15])

    matrix = model_matrix(frame)
    assert list(matrix.columns) == MODEL_FEATURES
    assert matrix.index.equals(frame.index)
    assert not matrix.isna().any().any()
    assert (matrix.loc[10, STORED_MODEL_FEATURES] == 0.0).all()
    assert matrix.loc[10, "seconds_since_last_tx"] == NO_HISTORY_SECONDS
    np.testing.assert_allclose(matrix["amount"], frame["amount"])
    np.testing.assert_allclose(matrix.loc[11:, "terminal_risk_7d"], frame.loc[11:, "terminal_risk_7d"])
