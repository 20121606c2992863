"""What the transaction simulator promises: a reproducible world with three learnable fraud patterns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.fraud.simulate import (
    SCENARIO_COMPROMISED_TERMINAL,
    SCENARIO_GENUINE,
    SCENARIO_LARGE_AMOUNT,
    SCENARIO_STOLEN_CARD,
    TRANSACTION_COLUMNS,
    SimulationConfig,
    config_for_size,
    expected_transactions,
    fraud_summary,
    simulate_transactions,
)

pytestmark = pytest.mark.unit

SMALL = SimulationConfig(n_customers=300, n_terminals=600, days=14, fraud_rate=0.02, seed=3)


@pytest.fixture(scope="module")
def default_run() -> pd.DataFrame:
    return simulate_transactions(SimulationConfig())


@pytest.fixture(scope="module")
def small_run() -> pd.DataFrame:
    return simulate_transactions(SMALL)


def test_same_seed_same_rows_and_other_seed_other_rows(small_run: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(simulate_transactions(SMALL), small_run)
    other = simulate_transactions(SimulationConfig(**{**SMALL.__dict__, "seed": 4}))
    assert not other.equals(small_run)


def test_schema(small_run: pd.DataFrame) -> None:
    frame = small_run
    assert list(frame.columns) == TRANSACTION_COLUMNS
    assert str(frame["timestamp"].dtype) == "datetime64[ns, UTC]"
    assert str(frame["label_timestamp"].dtype) == "datetime64[ns, UTC]"
    assert frame["amount"].dtype == np.float64
    assert frame["is_fraud"].dtype == np.int64 and set(frame["is_fraud"]) == {0, 1}
    assert set(frame["fraud_scenario"]) <= {0, 1, 2, 3}
    assert (frame["is_fraud"] == (frame["fraud_scenario"] > 0)).all()

    assert frame["transaction_id"].is_unique
    assert frame["transaction_id"].iloc[0] == "T00000001"
    assert frame["transaction_id"].str.fullmatch(r"T\d{8}").all()
    assert frame["customer_id"].str.fullmatch(r"C\d{5}").all()
    assert frame["terminal_id"].str.fullmatch(r"M\d{5}").all()

    assert frame["timestamp"].is_monotonic_increasing
    assert frame["timestamp"].min() >= pd.Timestamp("2026-01-01", tz="UTC")
    assert frame["timestamp"].max() < pd.Timestamp("2026-01-15", tz="UTC")
    assert (frame["amount"] > 0).all()
    assert np.allclose(frame["amount"], frame["amount"].round(2))


def test_size_follows_the_expected_count(small_run: pd.DataFrame) -> None:
    assert len(small_run) == pytest.approx(expected_transactions(SMALL), rel=0.1)


def test_fraud_share_is_near_target_at_default_size(default_run: pd.DataFrame) -> None:
    share = default_run["is_fraud"].mean()
    assert 0.005 <= SimulationConfig().fraud_rate <= 0.01
    assert share == pytest.approx(SimulationConfig().fraud_rate, rel=0.3)


def test_every_scenario_contributes(default_run: pd.DataFrame) -> None:
    frauds = default_run.loc[default_run["is_fraud"] == 1, "fraud_scenario"]
    shares = frauds.value_counts(normalize=True)
    for scenario in (SCENARIO_LARGE_AMOUNT, SCENARIO_COMPROMISED_TERMINAL, SCENARIO_STOLEN_CARD):
        assert shares.get(scenario, 0.0) >= 0.15, shares.to_dict()

    summary = fraud_summary(default_run)
    assert summary["rows"].sum() == len(default_run)
    assert summary.loc[summary["scenario"] == "genuine", "share"].item() == pytest.approx(
        1 - default_run["is_fraud"].mean()
    )


def test_label_delays(default_run: pd.DataFrame) -> None:
    delay = default_run["label_timestamp"] - default_run["timestamp"]
    fraud = default_run["is_fraud"] == 1
    assert (delay[~fraud] == pd.Timedelta(days=7)).all()
    assert delay[fraud].between(pd.Timedelta(days=1), pd.Timedelta(days=7)).all()
    assert delay[fraud].dt.total_seconds().std() > 12 * 3600  # chargebacks spread out, not a constant lag


def test_label_delay_follows_config() -> None:
    frame = simulate_transactions(SimulationConfig(**{**SMALL.__dict__, "label_delay_days": 2}))
    delay = frame["label_timestamp"] - frame["timestamp"]
    assert (delay[frame["is_fraud"] == 0] == pd.Timedelta(days=2)).all()
    assert delay[frame["is_fraud"] == 1].between(pd.Timedelta(days=1), pd.Timedelta(days=2)).all()


def _with_customer_habits(frame: pd.DataFrame) -> pd.DataFrame:
    genuine = frame[frame["fraud_scenario"] == SCENARIO_GENUINE]
    habit = genuine.groupby("customer_id")["amount"].median().rename("habit")
    ordered = frame.sort_values(["customer_id", "timestamp"])
    gap = ordered.groupby("customer_id")["timestamp"].diff().dt.total_seconds() / 3600
    return ordered.assign(gap_hours=gap).join(habit, on="customer_id")


def test_large_amount_frauds_are_several_times_the_habit(default_run: pd.DataFrame) -> None:
    frame = _with_customer_habits(default_run)
    ratio = frame["amount"] / frame["habit"]
    assert ratio[frame["fraud_scenario"] == SCENARIO_LARGE_AMOUNT].median() > 4
    assert ratio[frame["fraud_scenario"] == SCENARIO_GENUINE].median() == pytest.approx(1, abs=0.1)


def test_stolen_card_bursts_are_quick_at_night_and_away_from_usual_terminals(
    default_run: pd.DataFrame,
) -> None:
    frame = _with_customer_habits(default_run)
    burst = frame["fraud_scenario"] == SCENARIO_STOLEN_CARD
    genuine = frame["fraud_scenario"] == SCENARIO_GENUINE
    assert frame.loc[burst, "gap_hours"].median() < 1 < frame.loc[genuine, "gap_hours"].median()
    night = frame["timestamp"].dt.hour < 6
    assert night[burst].mean() > 3 * night[genuine].mean()
    assert (frame["amount"] / frame["habit"])[burst].median() > 2

    usual = set(zip(frame.loc[genuine, "customer_id"], frame.loc[genuine, "terminal_id"], strict=True))
    pairs = zip(frame.loc[burst, "customer_id"], frame.loc[burst, "terminal_id"], strict=True)
    assert np.mean([pair in usual for pair in pairs]) < 0.05


def test_compromised_terminal_frauds_cluster_on_few_terminals(default_run: pd.DataFrame) -> None:
    compromised = default_run[default_run["fraud_scenario"] == SCENARIO_COMPROMISED_TERMINAL]
    n_terminals = compromised["terminal_id"].nunique()
    assert 0 < n_terminals < 0.05 * SimulationConfig().n_terminals
    # Within a terminal's compromised period (first to last fraud there) a large share of payments is fraud.
    spans = compromised.groupby("terminal_id")["timestamp"].agg(["min", "max"])
    at = default_run.join(spans, on="terminal_id", how="inner")
    inside = at[(at["timestamp"] >= at["min"]) & (at["timestamp"] <= at["max"])]
    assert (inside["fraud_scenario"] == SCENARIO_COMPROMISED_TERMINAL).mean() > 0.3
    assert default_run["is_fraud"].mean() < 0.02


def test_daily_and_weekly_rhythm(default_run: pd.DataFrame) -> None:
    genuine = default_run[default_run["fraud_scenario"] == SCENARIO_GENUINE]
    by_hour = np.bincount(genuine["timestamp"].dt.hour, minlength=24)
    assert by_hour[2:5].mean() * 5 < by_hour[11:14].mean()
    assert by_hour[18:21].mean() > by_hour[8:10].mean()

    per_day = genuine.groupby(genuine["timestamp"].dt.floor("D")).size()
    weekend = pd.DatetimeIndex(per_day.index).dayofweek >= 5
    ratio = per_day[weekend].mean() / per_day[~weekend].mean()
    assert ratio == pytest.approx(SimulationConfig().weekend_factor, rel=0.05)


def test_config_for_size_hits_the_target() -> None:
    config = config_for_size(40_000, days=20, seed=11)
    assert config.days == 20 and config.seed == 11
    assert expected_transactions(config) == pytest.approx(40_000, rel=0.02)
    assert len(simulate_transactions(config)) == pytest.approx(40_000, rel=0.1)

    by_days = config_for_size(40_000, n_customers=500)
    assert by_days.n_customers == 500
    assert expected_transactions(by_days) == pytest.approx(40_000, rel=0.1)


def test_config_for_size_keeps_the_default_world_at_default_size() -> None:
    default = SimulationConfig()
    config = config_for_size(round(expected_transactions(default)))
    assert config.n_customers == default.n_customers
    assert config.n_terminals == default.n_terminals
    assert config.radius == pytest.approx(default.radius)


def test_tiny_worlds_still_work() -> None:
    frame = simulate_transactions(SimulationConfig(n_customers=3, n_terminals=2, days=1, fraud_rate=0.3, seed=1))
    assert frame["transaction_id"].is_unique
    assert (frame["amount"] > 0).all()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"fraud_rate": 0.0}, "fraud_rate"),
        ({"fraud_rate": 0.5}, "fraud_rate"),
        ({"days": 0}, "days"),
        ({"n_customers": 0}, "n_customers"),
        ({"label_delay_days": 0}, "label_delay_days"),
        ({"start": "not a date"}, "start"),
        ({"scenario_shares": (0.0, 0.0, 0.0)}, "scenario_shares"),
        ({"compromised_days": (20, 10)}, "compromised_days"),
        ({"tx_per_day_min": 5.0, "tx_per_day_max": 1.0}, "tx_per_day_min"),
    ],
)
def test_invalid_config_is_refused_with_a_clear_sentence(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        SimulationConfig(**changes)


def test_config_for_size_refuses_unknown_settings() -> None:
    with pytest.raises(ValueError, match="unknown simulation setting 'n_shops'"):
        config_for_size(1000, n_shops=5)
