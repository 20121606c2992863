"""`mlsd drift-test --scenario NAME`: inject a known change into the fraud stream and see what the loop makes of it.

One seeded world (pipelines/fraud/simulate.py): `history_days` of payments train the world's champion, the days
after them are the stream. Each scenario changes the stream from a known moment (`start`), then:

1. features come from the streaming engine over history + stream (the same code as `mlsd fraud stream`; the
   stale-features scenario stops it at `start`), the champion scores every payment as the service would, and each
   served prediction is published to `fraud.predictions`, each payment to `fraud.transactions` and each chargeback
   to `fraud.labels` — a replay at full speed of what a day of live traffic produces;
2. the real monitor (pipelines/monitoring/monitor.py) consumes the topics in windows and publishes alerts;
3. the real retraining loop (pipelines/monitoring/retrain.py) acts on them: retrain, gate, promote or reject.

The report says whether and when the change was detected (in windows and served predictions after `start`; for
label-based detection, in matured windows after the first affected window's labels arrived), every alert in the
control (false alarms), and what the retraining loop did; JSON and a plot of drift scores per window.

Each run gets its own embedded broker (empty topics) and a copy of the world's MLflow registry under
`<home>/drift-tests/<scenario>/`: the world's champion is trained once (`<home>/drift-tests/world-<key>/`) and every
run starts from it, with an empty audit trail.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.settings import Settings

WORLD_TAG = "drift_test_world"


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    expect: tuple[str, ...]  # alert kinds that count as detecting it (empty: the control)
    stream_days: float  # how much traffic after the history
    label_based: bool = False  # detected from delayed labels: delay counts matured windows


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("control", "no change: the stream continues as the history went", (), 9.5),
        Scenario(
            "covariate-shift",
            "every amount grows by 0.25 standard deviations of the history's amounts (the model's inputs move, "
            "fraud does not)",
            ("data_drift", "prediction_drift"),
            3.0,
        ),
        Scenario(
            "new-fraud-pattern",
            "a breached merchant network: at 3% of terminals, 40% of ordinary-looking payments turn out to be "
            "fraud (charged back 1-7 days later); the inputs do not move, only what they mean",
            ("performance_decay",),
            11.0,
            label_based=True,
        ),
        Scenario(
            "prior-shift",
            "fraud of the known kinds becomes three times as common (each fraud repeated twice more within two "
            "hours); what fraud looks like does not change",
            ("label_shift",),
            11.0,
            label_based=True,
        ),
        Scenario(
            "schema-break",
            "an upstream release sends amounts in cents, and renames customer_id in 5% of events",
            ("data_quality",),
            2.5,
        ),
        Scenario(
            "stale-features",
            "the feature processor stops: the service keeps reading the last customer and terminal rows it wrote",
            ("data_drift", "prediction_drift"),
            3.0,
        ),
    )
}


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 7
    customers: int = 5000
    # Terminal features look back 30 days behind the 7-day label delay: the champion's validation days (the last
    # quarter of the history, its drift reference) must come after that warm-up, as the stream does.
    history_days: int = 52
    start_after_windows: float = 2.5  # the change starts in the middle of the third window
    shift_sigma: float = 0.25

    @property
    def key(self) -> str:
        return f"seed{self.seed}-c{self.customers}-h{self.history_days}"


# ----------------------------------------------------------------------------------------------------------
# The world and the injections (pure)


def simulate_world(config: WorldConfig, stream_days: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(history, stream): one seeded simulation cut at `history_days`; the stream holds the next `stream_days`."""
    from pipelines.fraud.simulate import SimulationConfig, simulate_transactions

    days = config.history_days + math.ceil(stream_days) + 1
    world = simulate_transactions(SimulationConfig(n_customers=config.customers, days=days, seed=config.seed))
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


def publish(
    settings: Settings, stream: pd.DataFrame, records: list[Any], bad_events: list[dict[str, Any]]
) -> dict[str, int]:
    """Payments, predictions and bad events at their event time, chargebacks at their label time, in one order."""
    from pipelines.fraud.events import LABELS_TOPIC, TRANSACTIONS_TOPIC
    from pipelines.fraud.stream import replay_events
    from pipelines.platform.predictions import FRAUD_PREDICTIONS_TOPIC
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
                    producer.send(FRAUD_PREDICTIONS_TOPIC, encode(record), key=key)
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


# ----------------------------------------------------------------------------------------------------------
# Detection


@dataclass
class Detection:
    detected: bool
    kind: str | None = None
    window: int | None = None  # the window whose alert detected it
    start_window: int | None = None  # the window the change starts in
    delay_windows: int | None = None  # 1: detected in the window where it starts
    delay_events: int | None = None  # served predictions from the start to the end of the detecting window
    matured_delay_windows: int | None = None  # label-based: matured windows from the first affected one
    false_alarm_windows: list[int] = field(default_factory=list)  # alerts before the start (or in the control)


def detect(scenario: Scenario, windows: list[dict[str, Any]], start: pd.Timestamp | None) -> Detection:
    """First alert of an expected kind after the change started, from the monitor's per-window results."""
    before = [
        w["window"] for w in windows if w["alerts"] and (start is None or pd.Timestamp(w["event_time_end"]) < start)
    ]
    result = Detection(detected=False, false_alarm_windows=before)
    if start is None or not scenario.expect:
        result.false_alarm_windows = [w["window"] for w in windows if w["alerts"]]
        return result
    start_window = next((w["window"] for w in windows if pd.Timestamp(w["event_time_end"]) >= start), None)
    result.start_window = start_window
    # Alerts in the order they were raised: a window's drift when it closed, its label alerts when it matured.
    raised = sorted(
        (
            (pd.Timestamp(a["stream_time"] or w["event_time_end"]), w["window"], a["kind"])
            for w in windows
            for a in w["alerts"]
            if a["kind"] in scenario.expect and pd.Timestamp(w["event_time_end"]) >= start
        ),
    )
    if not raised or start_window is None:
        return result
    _, window, kind = raised[0]
    result.detected, result.kind, result.window = True, kind, window
    result.delay_windows = window - start_window + 1
    by_number = {w["window"]: w for w in windows}
    served_after = sum(
        w["rows"] if pd.Timestamp(w["event_time_start"]) >= start else w["rows_after_start"]
        for n, w in by_number.items()
        if start_window <= n <= window
    )
    result.delay_events = int(served_after)
    if scenario.label_based:
        result.matured_delay_windows = result.delay_windows
    return result


def window_rows(run: Any, start: pd.Timestamp | None) -> list[dict[str, Any]]:
    """The monitor's windows as plain rows for the report and the plot."""
    rows = []
    for w in run.windows:
        drift = w.drift
        ratios = {n: d.score / d.threshold for n, d in drift.features.items() if d.threshold}
        worst = max(ratios, key=lambda n: ratios[n]) if ratios else None
        after = 0
        if start is not None and w.start is not None and w.end is not None and pd.Timestamp(w.end) >= start:
            share = (pd.Timestamp(w.end) - max(pd.Timestamp(w.start), start)) / max(
                pd.Timestamp(w.end) - pd.Timestamp(w.start), pd.Timedelta(seconds=1)
            )
            after = round(w.rows * float(share))
        perf = w.performance or {}
        rows.append(
            {
                "window": w.window,
                "rows": w.rows,
                "rows_after_start": after,
                "event_time_start": w.start.isoformat() if w.start else None,
                "event_time_end": w.end.isoformat() if w.end else None,
                "worst_feature": worst,
                "worst_feature_score_over_threshold": round(ratios[worst], 3) if worst else None,
                "prediction_score": round(drift.prediction.score, 4) if drift.prediction else None,
                "quality_findings": len(drift.findings),
                "average_precision": perf.get("average_precision"),
                "rolling_average_precision": (w.rolling or {}).get("average_precision"),
                "fraud_rate": perf.get("fraud_rate"),
                "alerts": [
                    {
                        "kind": a.kind,
                        "message": a.message,
                        "stream_time": a.stream_time.isoformat() if a.stream_time else None,
                    }
                    for a in w.alerts
                ],
            }
        )
    return rows


def plot_scenario(result: dict[str, Any], path: Path) -> Path:
    """Drift scores per window (worst feature over its threshold, prediction drift) and AP once labels matured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["windows"]
    x = [r["window"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(
        x, [r["worst_feature_score_over_threshold"] or 0 for r in rows], marker="o", label="worst feature ÷ threshold"
    )
    top.plot(x, [(r["prediction_score"] or 0) / 0.15 for r in rows], marker="s", label="prediction drift ÷ threshold")
    top.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    top.set_ylabel("drift score ÷ threshold")
    bottom.plot(
        x,
        [r["average_precision"] if r["average_precision"] is not None else np.nan for r in rows],
        marker="o",
        label="average precision (labels matured)",
    )
    bottom.plot(
        x,
        [r["fraud_rate"] * 20 if r["fraud_rate"] is not None else np.nan for r in rows],
        marker="^",
        label="fraud rate × 20",
    )
    bottom.set_ylabel("delayed-label metrics")
    bottom.set_xlabel("window")
    start_window = result["detection"].get("start_window")
    for axis in (top, bottom):
        if start_window:
            axis.axvline(start_window, color="red", linestyle=":", label="change starts")
        for r in rows:
            if r["alerts"]:
                axis.axvspan(r["window"] - 0.4, r["window"] + 0.4, color="orange", alpha=0.15)
        axis.legend(loc="upper left", fontsize=8)
    top.set_title(f"drift-test {result['scenario']}: {result['summary']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------
# Running one scenario


def world_settings(settings: Settings, world: WorldConfig) -> Settings:
    """The world's registry (its first champion lives there) under `<home>/drift-tests/world-<key>/`."""
    world_dir = settings.home.resolve() / "drift-tests" / f"world-{world.key}"
    world_dir.mkdir(parents=True, exist_ok=True)
    return settings.model_copy(
        update={
            "home": world_dir,
            "mlflow_tracking_uri": f"sqlite:///{world_dir / 'mlflow.db'}",
            "feast_online_store": "sqlite",
            "feast_registry": "",
            "feast_offline_dir": "",
        }
    )


def scenario_settings(settings: Settings, world: Settings, name: str, window_size: int) -> Settings:
    """Its own broker (empty topics), folder and copy of the world's registry, so each run starts the same."""
    from pipelines.platform.infra import free_port

    home = settings.home.resolve() / "drift-tests" / name
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    shutil.copyfile(world.home / "mlflow.db", home / "mlflow.db")
    port = free_port()
    return world.model_copy(
        update={
            "home": home,
            "kafka_port": port,
            "kafka_bootstrap": f"127.0.0.1:{port}",
            "kafka_embedded": True,
            "mlflow_tracking_uri": f"sqlite:///{home / 'mlflow.db'}",
            "monitor_window_size": window_size,
        }
    )


def world_champion(settings: Settings, world: WorldConfig, history: pd.DataFrame, say: Callable[[str], None]) -> str:
    """The world's champion: trained once (one strategy, class weighting) into the world's registry."""
    import mlflow
    from mlflow import MlflowClient

    from pipelines.fraud.train import EXPERIMENT, MODEL_NAME, train_fraud
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


def run_scenario(
    settings: Settings,
    name: str,
    world: WorldConfig | None = None,
    window_size: int = 5000,
    retrain: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:

    from pipelines.fraud.scoring import load_fraud_model
    from pipelines.monitoring.monitor import run_monitor
    from pipelines.monitoring.retrain import run_retrain_loop
    from pipelines.platform.infra import stack_down, stack_up
    from pipelines.platform.registry import CHAMPION

    if name not in SCENARIOS:
        raise ValueError(f"Unknown scenario '{name}'; choose one of {', '.join(SCENARIOS)}.")
    scenario = SCENARIOS[name]
    world = world or WorldConfig(seed=settings.seed)
    say = progress or (lambda _m: None)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    world_config = world_settings(settings, world)
    say(f"simulating the world ({world.customers:,} customers, {world.history_days} + {scenario.stream_days} days)")
    history, stream = simulate_world(world, scenario.stream_days)
    start = start_time(stream, window_size, world.start_after_windows) if scenario.name != "control" else None
    bad_events: list[dict[str, Any]] = []
    injection = start or pd.Timestamp(stream["timestamp"].iloc[0])
    if name == "covariate-shift":
        delta = world.shift_sigma * float(history["amount"].std())
        stream = shift_amounts(stream, injection, delta)
    elif name == "new-fraud-pattern":
        stream = breach_terminals(stream, injection, world.seed)
    elif name == "prior-shift":
        stream = repeat_frauds(stream, injection, world.seed)
    elif name == "schema-break":
        stream, bad_events = break_schema(stream, injection, world.seed)
    timings["simulate"] = time.perf_counter() - clock

    clock = time.perf_counter()
    world_champion(world_config, world, history, say)
    timings["champion"] = time.perf_counter() - clock
    s = scenario_settings(settings, world_config, name, window_size)
    started = stack_up(s)
    try:
        clock = time.perf_counter()
        say(f"features for {len(stream):,} stream payments through the streaming engine")
        with tempfile.TemporaryDirectory(prefix="mlsd-drift-") as tmp:
            frame = stream_features(
                history, stream, s.fraud_label_delay_days, Path(tmp), injection if name == "stale-features" else None
            )
        champion = load_fraud_model(s, CHAMPION)
        records = prediction_records(frame, champion, s)
        timings["features_and_scores"] = time.perf_counter() - clock
        clock = time.perf_counter()
        say(f"publishing {len(records):,} predictions with their payments and chargebacks")
        sent = publish(s, stream, records, bad_events)
        timings["publish"] = time.perf_counter() - clock

        # The retraining loop follows monitoring.alerts from its own thread while the monitor runs, as in
        # production: alert → Kafka → loop → retrain → gate → decision.
        stop = threading.Event()
        loop_result: dict[str, Any] = {}
        loop_thread = None
        if retrain:
            loop_thread = threading.Thread(
                target=lambda: loop_result.update(
                    run=run_retrain_loop(s, "fraud", history, from_beginning=True, stop=stop)
                ),
                name="retrain-loop",
                daemon=True,
            )
            loop_thread.start()
        clock = time.perf_counter()
        say("monitoring" + (" (the retraining loop acts on its alerts meanwhile)" if retrain else ""))
        run = run_monitor(s, "fraud", window_size, idle_timeout=5.0, from_beginning=True)
        timings["monitor"] = time.perf_counter() - clock
        windows = window_rows(run, start)
        detection = detect(scenario, windows, start)
        retrains: list[dict[str, Any]] = []
        handled_counts: dict[str, int] = {}
        if loop_thread is not None:
            say("waiting for the retraining loop's decisions")
            clock = time.perf_counter()
            stop.set()
            loop_thread.join()
            timings["retrain_after_monitor"] = time.perf_counter() - clock
            if "run" in loop_result:
                retrains = [r.to_dict() for r in loop_result["run"].retrains]
                handled_counts = loop_result["run"].counts()
    finally:
        stack_down(s, [p.name for p in started])

    summary = summarise(scenario, detection, retrains)
    result = {
        "scenario": name,
        "description": scenario.description,
        "expected_alerts": list(scenario.expect),
        "world": asdict(world),
        "window_size": window_size,
        "history_rows": len(history),
        "stream_rows": len(stream),
        "start": start.isoformat() if start is not None else None,
        "sent": sent,
        "windows_evaluated": len(run.windows),
        "windows_awaiting_labels": run.pending,
        "detection": asdict(detection),
        "retraining": {"alerts": handled_counts, "retrains": retrains},
        "summary": summary,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "windows": windows,
        "finished_at": datetime.now().astimezone().isoformat(),
    }
    out = settings.reports_dir / "drift-tests"
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(result, indent=2, default=str))
    result["json"] = str(json_path)
    result["plot"] = str(plot_scenario(result, out / f"{name}.png"))
    return result


def summarise(scenario: Scenario, detection: Detection, retrains: list[dict[str, Any]]) -> str:
    if not scenario.expect:
        text = (
            f"{len(detection.false_alarm_windows)} false alarm window(s)"
            if detection.false_alarm_windows
            else "no false alarm"
        )
    elif detection.detected:
        text = (
            f"detected ({detection.kind}) in window {detection.window}, {detection.delay_windows} window(s) and "
            f"{detection.delay_events:,} predictions after the change started"
        )
    else:
        text = "not detected"
    if retrains:
        decisions = ", ".join(
            "failed" if r["failed"] else f"v{r['challenger_version']} {'promoted' if r['promoted'] else 'rejected'}"
            for r in retrains
        )
        text += f"; retrains: {decisions}"
    else:
        text += "; no retrain"
    return text
