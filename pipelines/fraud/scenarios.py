"""The fraud design's drift scenarios: a seeded world, the changes injected into its stream, and how the stream is
published as live traffic would be (payments, the service's predictions, chargebacks at their label time).

The harness that monitors, retrains and reports is generic (pipelines/monitoring/scenarios.py, `mlsd drift-test`);
it reaches this module through the Design contract's `ScenarioSuite`.

One seeded world (pipelines/fraud/simulate.py): `history_days` of payments train the world's champion, the days
after them are the stream. Each scenario changes the stream from a known moment (`start`); features come from the
streaming engine over history + stream (the same code as `mlsd fraud stream`; the stale-features scenario stops it
at `start`) and the champion scores every payment as the service would.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.fraud.scenario_specs import SCENARIOS, WorldConfig
from pipelines.platform.design import PreparedScenario
from pipelines.settings import Settings

WORLD_TAG = "drift_test_world"

# ----------------------------------------------------------------------------------------------------------
# The world and the injections (pure)


def simulate_world(config: WorldConfig, stream_days: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history, stream): one seeded simulation cut at `history_days`; the stream holds the next `stream_days`."""
    from pipelines.fraud.simulate import SimulationConfig, simulate_transactions

    days = config.history_days + math.ceil(stream_days) + 1
    world = simulate_transactions(SimulationConfig(n_customers=config.size, days=days, seed=config.seed))
    start = SimulationConfig(seed=config.seed).start_day
    cut = start + pd.Timedelta(days=config.history_days)
    end = cut + pd.Timedelta(days=stream_days)
    times = pd.to_datetime(world["timestamp"], utc=True)
    history = world[(times < cut).to_numpy()].reset_index(drop=True)
    stream = world[((times >= cut) & (times < end)).to_numpy()].reset_index(drop=True)
    return history, stream


def start_time(stream: pd.DataFrame, window_size: int, after_windows: float) -> pd.Timestamp:
    position = min(int(window_size * after_windows), len(stream) - 1)
    return pd.Timestamp(pd.to_datetime(stream["timestamp"], utc=True).iloc[position])


def _rows(frame: pd.DataFrame) -> list[Any]:
    """Rows as named tuples, typed loosely (their fields are whatever the columns hold)."""
    return list(frame.itertuples(index=False))


def _from(stream: pd.DataFrame, start: pd.Timestamp) -> np.ndarray:
    return (pd.to_datetime(stream["timestamp"], utc=True) >= start).to_numpy()


def shift_amounts(stream: pd.DataFrame, start: pd.Timestamp, delta: float) -> pd.DataFrame:
    out = stream.copy()
    after = _from(out, start)
    out.loc[after, "amount"] = out.loc[after, "amount"] + delta
    return out


def breach_terminals(
    stream: pd.DataFrame,
    start: pd.Timestamp,
    seed: int,
    terminal_share: float = 0.03,
    fraud_share: float = 0.4,
    max_delay_days: float = 7,
) -> pd.DataFrame:
    """Concept drift: genuine-looking payments at a few terminals become fraud; their features stay as they were."""
    rng = np.random.default_rng(seed)
    out = stream.copy()
    terminals = out["terminal_id"].astype(str).unique()
    breached = set(rng.choice(terminals, size=max(1, int(len(terminals) * terminal_share)), replace=False))
    candidates = (
        _from(out, start) & out["terminal_id"].astype(str).isin(breached).to_numpy() & (out["is_fraud"] == 0).to_numpy()
    )
    hit = candidates & (rng.random(len(out)) < fraud_share)
    out.loc[hit, "is_fraud"] = 1
    delays = pd.to_timedelta(rng.uniform(1, max_delay_days, int(hit.sum())), unit="D")
    out.loc[hit, "label_timestamp"] = pd.to_datetime(out.loc[hit, "timestamp"], utc=True) + delays
    if "fraud_scenario" in out:
        out.loc[hit, "fraud_scenario"] = 4
    return out


def repeat_frauds(stream: pd.DataFrame, start: pd.Timestamp, seed: int, copies: int = 2) -> pd.DataFrame:
    """Prior shift: every fraud after `start` is repeated `copies` more times within two hours, same card and kind."""
    rng = np.random.default_rng(seed)
    frauds = stream[_from(stream, start) & (stream["is_fraud"] == 1).to_numpy()]
    extra = []
    for copy in range(copies):
        repeat = frauds.copy()
        offset = pd.to_timedelta(rng.uniform(60, 7200, len(repeat)), unit="s")
        repeat["timestamp"] = pd.to_datetime(repeat["timestamp"], utc=True) + offset
        repeat["label_timestamp"] = pd.to_datetime(repeat["label_timestamp"], utc=True) + offset
        repeat["transaction_id"] = repeat["transaction_id"].astype(str) + f"-r{copy + 1}"
        extra.append(repeat)
    out = pd.concat([stream, *extra], ignore_index=True)
    out = out[pd.to_datetime(out["timestamp"], utc=True) < pd.to_datetime(stream["timestamp"], utc=True).max()]
    return out.sort_values(["timestamp", "transaction_id"], kind="stable").reset_index(drop=True)


def break_schema(
    stream: pd.DataFrame, start: pd.Timestamp, seed: int, renamed_share: float = 0.05
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """(stream with amounts in cents, events whose `customer_id` was renamed: the service and processor refuse them)."""
    rng = np.random.default_rng(seed)
    out = stream.copy()
    after = _from(out, start)
    out.loc[after, "amount"] = out.loc[after, "amount"] * 100
    renamed = after & (rng.random(len(out)) < renamed_share)
    bad = [
        {
            "transaction_id": row.transaction_id,
            "timestamp": pd.Timestamp(row.timestamp).isoformat(),
            "customerId": row.customer_id,
            "terminal_id": row.terminal_id,
            "amount": float(row.amount),
        }
        for row in _rows(out[renamed])
    ]
    return out[~renamed].reset_index(drop=True), bad


# ----------------------------------------------------------------------------------------------------------
# Features and scores for the stream


def stream_features(
    history: pd.DataFrame,
    stream: pd.DataFrame,
    label_delay_days: float,
    workdir: Path,
    stale_from: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Stream rows joined with the feature rows stored before each (up to `stale_from` when the processor stops)."""
    from pipelines.fraud.backtest import join_feature_rows, write_feature_rows

    everything = pd.concat([history, stream], ignore_index=True).sort_values(
        ["timestamp", "transaction_id"], kind="stable"
    )
    end = stale_from if stale_from is not None else pd.to_datetime(everything["timestamp"], utc=True).max()
    paths = write_feature_rows(everything, label_delay_days, end + pd.Timedelta(microseconds=1), workdir)
    return join_feature_rows(stream.reset_index(drop=True), *paths)


def prediction_records(frame: pd.DataFrame, model: Any, settings: Settings) -> list[Any]:
    """What the scoring service logs for each payment: features, score, decision, version (pipelines/fraud/scoring)."""
    from pipelines.fraud.features import MODEL_FEATURES, model_matrix
    from pipelines.fraud.rules import decide
    from pipelines.platform.predictions import PredictionRecord

    matrix = model_matrix(frame).astype(np.float32)
    scores = model.model.booster.inplace_predict(matrix.to_numpy())
    rules = model.model.rules
    records = []
    values = matrix.to_numpy(dtype=float)
    for i, row in enumerate(_rows(frame)):
        outcome, _ = decide(float(scores[i]), float(row.amount), str(row.customer_id), str(row.terminal_id), rules)
        records.append(
            PredictionRecord(
                design="fraud",
                request_id=f"drift-test-{row.transaction_id}",
                entity_id=str(row.transaction_id),
                timestamp=pd.Timestamp(row.timestamp).to_pydatetime(),
                model_name=model.name,
                model_version=model.version,
                variant="champion",
                served=True,
                features=dict(zip(MODEL_FEATURES, values[i].tolist(), strict=True)),
                score=round(float(scores[i]), 6),
                decision=outcome,
                latency_ms=0.0,
            )
        )
    return records


def publish_events(
    settings: Settings, stream: pd.DataFrame, records: list[Any], bad_events: list[dict[str, Any]]
) -> dict[str, int]:
    """Payments, predictions and bad events at their event time, chargebacks at their label time, in one order."""
    from pipelines.fraud.events import LABELS_TOPIC, PREDICTIONS_TOPIC, TRANSACTIONS_TOPIC
    from pipelines.fraud.stream import replay_events
    from pipelines.platform.stream import encode, make_producer

    events = replay_events(stream)
    by_id = {r.entity_id: r for r in records}
    producer = make_producer(settings)
    sent = {"transactions": 0, "labels": 0, "predictions": 0, "bad_events": 0}
    bad = sorted(bad_events, key=lambda e: e["timestamp"])
    b = 0
    try:
        for row in _rows(events):
            while b < len(bad) and bad[b]["timestamp"] <= pd.Timestamp(row.at).isoformat():
                producer.send(TRANSACTIONS_TOPIC, encode(bad[b]), key=str(bad[b]["customerId"]).encode())
                sent["bad_events"] += 1
                b += 1
            key = str(row.customer_id).encode()
            if row.topic == TRANSACTIONS_TOPIC:
                payload = {
                    "transaction_id": row.transaction_id,
                    "timestamp": pd.Timestamp(row.timestamp).isoformat(),
                    "customer_id": row.customer_id,
                    "terminal_id": row.terminal_id,
                    "amount": float(row.amount),
                }
                producer.send(TRANSACTIONS_TOPIC, encode(payload), key=key)
                sent["transactions"] += 1
                record = by_id.get(str(row.transaction_id))
                if record is not None:
                    producer.send(PREDICTIONS_TOPIC, encode(record), key=key)
                    sent["predictions"] += 1
            else:
                payload = {
                    "transaction_id": row.transaction_id,
                    "customer_id": row.customer_id,
                    "terminal_id": row.terminal_id,
                    "timestamp": pd.Timestamp(row.timestamp).isoformat(),
                    "label_timestamp": pd.Timestamp(row.label_timestamp).isoformat(),
                    "is_fraud": 1,
                }
                producer.send(LABELS_TOPIC, encode(payload), key=key)
                sent["labels"] += 1
        for event in bad[b:]:
            producer.send(TRANSACTIONS_TOPIC, encode(event), key=str(event["customerId"]).encode())
            sent["bad_events"] += 1
        producer.flush()
    finally:
        producer.close()
    return sent


def world_champion(settings: Settings, world: WorldConfig, history: pd.DataFrame, say: Callable[[str], None]) -> str:
    """The world's champion: trained once (one strategy, class weighting) into the world's registry."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines.fraud.model import MODEL_NAME
    from pipelines.fraud.train import EXPERIMENT, train_fraud
    from pipelines.platform.registry import alias_version, connect_mlflow, model_exists

    connect_mlflow(settings)
    if model_exists(MODEL_NAME) and (version := alias_version(MODEL_NAME, "champion")) is not None:
        return version
    if MlflowClient().get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, (settings.home / "artifacts").resolve().as_uri())
    say(f"training the world's champion on {len(history):,} payments (done once per world)")
    report = train_fraud(settings, history, strategies=("class_weight",))
    MlflowClient().set_model_version_tag(MODEL_NAME, report.model_version, WORLD_TAG, world.key)
    return report.model_version


def prepare(
    settings: Settings, name: str, world: WorldConfig, window_size: int, say: Callable[[str], None]
) -> PreparedScenario:
    """The world simulated, the change injected from the middle of the third window, the champion trained once."""
    scenario = SCENARIOS[name]
    say(f"simulating the world ({world.size:,} customers, {world.history_days} + {scenario.stream_days} days)")
    history, stream = simulate_world(world, scenario.stream_days)
    start = start_time(stream, window_size, world.start_after_windows) if scenario.expect else None
    bad_events: list[dict[str, Any]] = []
    injection = start or pd.Timestamp(stream["timestamp"].iloc[0])
    if name == "covariate-shift":
        stream = shift_amounts(stream, injection, world.shift_sigma * float(history["amount"].std()))
    elif name == "new-fraud-pattern":
        stream = breach_terminals(stream, injection, world.seed)
    elif name == "prior-shift":
        stream = repeat_frauds(stream, injection, world.seed)
    elif name == "schema-break":
        stream, bad_events = break_schema(stream, injection, world.seed)
    world_champion(settings, world, history, say)
    return PreparedScenario(
        history,
        stream,
        start,
        {"bad_events": bad_events, "stale_from": injection if name == "stale-features" else None},
    )


def publish(settings: Settings, prepared: PreparedScenario, say: Callable[[str], None]) -> dict[str, int]:
    """Features and the champion's scores for every stream payment, then everything on the topics in event order."""
    from pipelines.fraud.model import MODEL_NAME, TRAIN_HINT
    from pipelines.fraud.scoring import load_fraud_model
    from pipelines.platform.registry import CHAMPION, require_alias

    say(f"features for {len(prepared.stream):,} stream payments through the streaming engine")
    with tempfile.TemporaryDirectory(prefix="mlsd-drift-") as tmp:
        frame = stream_features(
            prepared.history,
            prepared.stream,
            settings.fraud_label_delay_days,
            Path(tmp),
            prepared.extras.get("stale_from"),
        )
    records = prediction_records(
        frame, load_fraud_model(settings, require_alias(MODEL_NAME, CHAMPION, TRAIN_HINT)), settings
    )
    say(f"publishing {len(records):,} predictions with their payments and chargebacks")
    return publish_events(settings, prepared.stream, records, prepared.extras.get("bad_events", []))
