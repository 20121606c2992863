"""The monitor (pipelines/monitoring/monitor.py): its pure window evaluation, and the loop on the real broker with a
real MLflow registry — prediction records scored by a small model through the fraud feature code, delayed labels."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipelines.fraud.events import LABELS_TOPIC, LabelEvent
from pipelines.fraud.events import PREDICTIONS_TOPIC as FRAUD_PREDICTIONS_TOPIC
from pipelines.fraud.monitoring import fraud_spec
from pipelines.monitoring.monitor import run_monitor
from pipelines.monitoring.window import WindowResult, evaluate_window, judge_performance, records_frame
from pipelines.platform.predictions import ALERTS_TOPIC, PredictionRecord
from pipelines.platform.stream import encode, make_producer
from pipelines.recsys.monitoring import recsys_spec
from pipelines.settings import Settings
from tests.conftest import unique

LABEL_DELAY = pd.Timedelta(days=7)


@dataclass
class World:
    """A fraud model, its training reference and the later traffic it scores, all from the simulator."""

    model: Any
    reference: pd.DataFrame  # model features + score + label, the shape the training run logs
    stream: pd.DataFrame  # model features + score + transaction facts, in time order
    features: list[str]


@pytest.fixture(scope="module")
def world() -> World:
    from pipelines.fraud import modeling
    from pipelines.fraud.backtest import point_in_time_frame
    from pipelines.fraud.features import MODEL_FEATURES, model_matrix
    from pipelines.fraud.simulate import config_for_size, simulate_transactions

    # 60 days so that the 30-day windows (plus the 7-day label delay) are warm before the reference starts.
    config = config_for_size(60_000, days=60, seed=11)
    transactions = simulate_transactions(config)
    day0 = config.start_day
    with tempfile.TemporaryDirectory() as tmp:
        frame = point_in_time_frame(
            transactions, 7, day0 + pd.Timedelta(days=14), day0 + pd.Timedelta(days=60), Path(tmp)
        )
    features = model_matrix(frame)
    day = ((pd.to_datetime(frame["timestamp"], utc=True) - day0) // pd.Timedelta(days=1)).to_numpy()
    labels = frame["is_fraud"].to_numpy(dtype=int)
    model = modeling.fit_classifier(
        features[day < 36], labels[day < 36], "class_weight", modeling.XGBParams(n_estimators=40, max_depth=4), 0.1, 7
    )
    scored = features.assign(score=model.predict_proba(features)[:, 1])
    reference = scored.assign(label=labels)[(day >= 40) & (day < 47)].reset_index(drop=True)
    facts = frame[["transaction_id", "customer_id", "terminal_id", "timestamp", "is_fraud", "label_timestamp"]]
    stream = pd.concat([scored, facts], axis=1)[day >= 47].sort_values("timestamp", kind="stable")
    return World(model, reference, stream.reset_index(drop=True), list(MODEL_FEATURES))


def window_frame(world: World, rows: pd.DataFrame) -> pd.DataFrame:
    """What the monitor builds from prediction records, built directly (the pure entry point's input)."""
    return rows[[*world.features, "score"]].assign(
        entity_id=rows["transaction_id"].astype(str).to_numpy(),
        timestamp=pd.to_datetime(rows["timestamp"], utc=True).to_numpy(),
        model_version="1",
    )


def chargebacks(rows: pd.DataFrame) -> pd.DataFrame:
    frauds = rows[rows["is_fraud"] == 1]
    return pd.DataFrame({"transaction_id": frauds["transaction_id"].astype(str), "is_fraud": 1})


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(labels, scores))


# ----------------------------------------------------------------------------------------------------------
# The pure core


@pytest.mark.unit
def test_evaluate_window_reports_drift_and_labelled_performance_without_kafka(world: World) -> None:
    spec = fraud_spec()
    rows = world.stream.iloc[:2000]
    clean = evaluate_window(spec, world.reference, window_frame(world, rows), chargebacks(rows))
    assert not clean.drift.data_drift and clean.drift.quality_ok, clean.drift.to_dict()
    assert clean.performance is not None
    assert clean.performance["average_precision"] == pytest.approx(
        average_precision(rows["is_fraud"].to_numpy(), rows["score"].to_numpy())
    )
    top = rows.nlargest(50, "score", keep="first")["is_fraud"].mean()
    assert clean.performance["precision_at_50"] == pytest.approx(top)
    assert clean.baseline["average_precision"] == pytest.approx(
        average_precision(world.reference["label"].to_numpy(), world.reference["score"].to_numpy())
    )
    assert clean.performance["average_precision"] >= 0.7 * clean.baseline["average_precision"]
    assert not clean.performance_decay and clean.kinds == []

    moved = window_frame(world, rows)
    moved["terminal_risk_7d"] += 0.5 * world.reference["terminal_risk_7d"].std()
    moved["score"] = np.random.default_rng(0).permutation(moved["score"].to_numpy())  # a model gone blind
    broken = evaluate_window(spec, world.reference, moved, chargebacks(rows), window=7)
    assert broken.drift.drifted_features == ["terminal_risk_7d"]
    assert broken.performance_decay
    assert broken.kinds == ["data_drift", "performance_decay"]  # permuted scores keep their distribution
    alert = broken.alerts[0]
    assert alert.window == 7 and alert.model_version == "1" and "terminal_risk_7d" in alert.scores
    assert alert.event_time_start == pd.Timestamp(rows["timestamp"].min()).to_pydatetime()


@pytest.mark.unit
def test_recsys_hits_count_only_interactions_within_the_horizon() -> None:
    spec = recsys_spec(horizon_hours=24, k=2)
    at = pd.Timestamp("2026-03-01T12:00:00Z")
    window = pd.DataFrame(
        {
            "entity_id": ["u1", "u2", "u3"],
            "timestamp": [at, at, at],
            "items": [["a", "b"], ["c", "d"], ["e", "f"]],
            "score": [0.9, 0.8, 0.7],
            "user_recent_count": [3.0, 5.0, 4.0],
        }
    )
    interactions = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u2", "u3"],
            "item_id": ["b", "c", "d", "e"],
            "timestamp": [at + pd.Timedelta(hours=1), at - pd.Timedelta(hours=1), at + pd.Timedelta(hours=30), at],
        }
    )
    result = evaluate_window(spec, window, window, interactions)
    # u1 clicked its second item an hour later; u2's clicks were before and after the horizon; u3's at request time.
    assert result.performance == pytest.approx(
        {"precision_at_2": 1 / 6, "hit_rate_at_2": 1 / 3, "ndcg_at_2": (1 / np.log2(3)) / 3}
    )
    assert not result.drift.data_drift and result.baseline == {}
    assert not judge_performance(spec, result.performance or {}, result.baseline)  # no baseline, no verdict


# ----------------------------------------------------------------------------------------------------------
# The loop on the real broker


def register_with_reference(settings: Settings, world: World, tmp_path: Path) -> tuple[str, float]:
    """Log the model and its reference as the fraud training run does, register a version; return it and its AP."""
    import mlflow
    import mlflow.xgboost
    from mlflow import MlflowClient

    from pipelines.fraud.model import MODEL_NAME
    from pipelines.platform.registry import connect_mlflow

    connect_mlflow(settings)
    experiment = mlflow.create_experiment(unique("monitor"), (settings.home / "artifacts").resolve().as_uri())
    validation_ap = average_precision(world.reference["label"].to_numpy(), world.reference["score"].to_numpy())
    with mlflow.start_run(experiment_id=experiment) as run:
        world.reference.to_parquet(tmp_path / "reference.parquet", index=False)
        mlflow.log_artifact(str(tmp_path / "reference.parquet"), "reference")
        info = mlflow.xgboost.log_model(world.model, name="model", model_format="ubj", pip_requirements=["xgboost"])
    version = str(mlflow.register_model(info.model_uri, MODEL_NAME).version)
    client = MlflowClient()
    client.set_model_version_tag(MODEL_NAME, version, "average_precision", f"{validation_ap:.6f}")
    client.set_model_version_tag(MODEL_NAME, version, "training_run_id", run.info.run_id)
    return version, validation_ap


def prediction_records(rows: pd.DataFrame, features: list[str], version: str, **changes: Any) -> list[PredictionRecord]:
    return [
        PredictionRecord(
            design="fraud",
            request_id=f"r-{row['transaction_id']}",
            entity_id=str(row["transaction_id"]),
            timestamp=row["timestamp"],
            model_name="fraud-xgboost",
            model_version=version,
            features={name: (None if pd.isna(row[name]) else float(row[name])) for name in features},
            score=float(row["score"]),
            decision="approve",
            latency_ms=1.0,
            **changes,
        )
        for _, row in rows.iterrows()
    ]


def chargeback(row: pd.Series) -> LabelEvent:
    return LabelEvent(
        transaction_id=str(row["transaction_id"]),
        customer_id=str(row["customer_id"]),
        terminal_id=str(row["terminal_id"]),
        timestamp=pd.Timestamp(row["timestamp"]).to_pydatetime(),
        label_timestamp=pd.Timestamp(row["label_timestamp"]).to_pydatetime(),
    )


def read_alerts(settings: Settings, since: datetime) -> list[dict[str, Any]]:
    """Every alert published since `since` (read until a poll comes back empty)."""
    from pipelines.platform.stream import make_consumer, place_consumer

    consumer = make_consumer(settings, [ALERTS_TOPIC], unique("alerts-reader"))
    place_consumer(consumer, [ALERTS_TOPIC], True, since)
    alerts: list[dict[str, Any]] = []
    for _ in range(20):
        polled = consumer.poll(timeout_ms=1000)
        batch = [json.loads(r.value) for records in polled.values() for r in records]
        if not batch and alerts:
            break
        alerts += batch
    consumer.close()
    return alerts


@pytest.mark.integration
def test_monitor_windows_reports_alerts_and_performance_once_labels_mature(
    kafka_settings: Settings, world: World, tmp_path: Path
) -> None:
    from pipelines.platform.infra import free_port

    settings = kafka_settings.model_copy(update={"monitor_performance_windows": 1})
    version, validation_ap = register_with_reference(settings, world, tmp_path)
    size = 1000
    w1, w2, w3 = (world.stream.iloc[i * size : (i + 1) * size] for i in range(3))
    features = world.features

    # window 2: a broken upstream join leaves a feature empty in 15% of rows, and the model has gone blind
    w2 = w2.copy()
    w2.loc[w2.index[::7], "terminal_risk_7d"] = np.nan
    w2["score"] = np.random.default_rng(1).permutation(w2["score"].to_numpy())
    # window 3: one feature moves by one reference standard deviation
    w3 = w3.copy()
    w3["amount_to_avg_30d"] += world.reference["amount_to_avg_30d"].std()
    served = [r for rows in (w1, w2, w3) for r in prediction_records(rows, features, version)]
    # shadow answers of a wild challenger: they would trip every check if they leaked into the windows
    wild = w1.iloc[:50].assign(amount=1e6, amount_to_avg_30d=1e3)
    shadow = prediction_records(wild, features, "99", variant="challenger", served=False)
    # answers given while the online store was down: no features, no score; in a window they would be all missing
    degraded = [
        r.model_copy(update={"features": {}, "score": None, "degraded": "online store took longer than 20 ms"})
        for r in prediction_records(w1.iloc[:40], features, version)
    ]

    # chargebacks of all frauds (later traffic included) known by a cut-off that completes window 2 but not 3
    cut = pd.Timestamp(w2["timestamp"].max()) + LABEL_DELAY + pd.Timedelta(hours=12)
    frauds = world.stream[(world.stream["is_fraud"] == 1) & (world.stream["label_timestamp"] <= cut)]
    watermark = frauds["label_timestamp"].max()
    assert pd.Timestamp(w2["timestamp"].max()) + LABEL_DELAY <= watermark < w3["timestamp"].max() + LABEL_DELAY
    labels = [chargeback(row) for _, row in frauds.sort_values("label_timestamp").iterrows()]

    since = datetime.now(UTC) - timedelta(milliseconds=5)
    producer = make_producer(settings)
    for record in [*served[:500], *shadow, *degraded, *served[500:]]:
        producer.send(FRAUD_PREDICTIONS_TOPIC, encode(record))
    producer.send(FRAUD_PREDICTIONS_TOPIC, b"{not json")
    year_one = json.loads(encode(served[0]))  # a request dated year 1: refused with its reason, the monitor goes on
    producer.send(FRAUD_PREDICTIONS_TOPIC, json.dumps({**year_one, "timestamp": "0001-01-01T00:00:00Z"}).encode())
    for label in labels:
        producer.send(LABELS_TOPIC, encode(label))
    producer.flush()
    producer.close()

    port = free_port()
    scrapes: dict[tuple[str, int], str] = {}
    local = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # straight to the port, never a proxy

    def scrape(event: str) -> Callable[[WindowResult], None]:
        def read(result: WindowResult) -> None:
            with local.open(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
                scrapes[event, result.window] = response.read().decode()

        return read

    run = run_monitor(
        settings,
        "fraud",
        window_size=size,
        idle_timeout=3,
        metrics_port=port,
        since=since,
        on_window=scrape("window"),
        on_matured=scrape("matured"),
    )

    # windows: served records only, in arrival order
    assert [w.rows for w in run.windows] == [size, size, size]
    assert run.shadow_records == 50 and run.served_records == 3 * size and run.dead_lettered == 2
    assert run.degraded_records == 40
    assert all(w.model_version == version and w.reference.startswith(f"fraud-xgboost v{version}") for w in run.windows)
    first, second, third = run.windows
    assert first.kinds == []  # served by the model as trained: no drift, no decay
    assert [f.column for f in second.drift.findings] == ["terminal_risk_7d"]
    assert second.drift.findings[0].kind == "missing_values"
    assert third.drift.drifted_features == ["amount_to_avg_30d"]

    # performance: reported for the windows whose labels are complete, equal to a direct computation
    assert first.performance is not None and second.performance is not None and third.performance is None
    assert run.pending == [3]
    fraud_ids = set(frauds["transaction_id"].astype(str))
    truth = w1["transaction_id"].astype(str).isin(fraud_ids).to_numpy(dtype=int)
    assert first.performance["average_precision"] == pytest.approx(average_precision(truth, w1["score"].to_numpy()))
    assert first.baseline["average_precision"] == pytest.approx(validation_ap, abs=1e-6)  # from the registry tag
    assert first.performance["average_precision"] >= 0.7 * validation_ap and not first.performance_decay
    assert second.performance_decay  # the blind model

    # files: one HTML page and one JSON per window, a summary line per window and per matured window
    out = settings.reports_dir / "monitoring" / "fraud"
    for n in (1, 2, 3):
        assert (out / f"window-{n:05d}.html").stat().st_size > 100_000
    assert "Dataset Drift" in (out / "window-00003.html").read_text()
    saved = [json.loads((out / f"window-{n:05d}.json").read_text()) for n in (1, 2, 3)]
    assert saved[0]["performance"]["average_precision"] == pytest.approx(first.performance["average_precision"])
    assert saved[2]["performance"] is None and saved[2]["drift"]["drifted_features"] == ["amount_to_avg_30d"]
    lines = [json.loads(line) for line in (out / "summary.jsonl").read_text().splitlines()]
    assert [x["window"] for x in lines if x["event"] == "window"] == [1, 2, 3]
    matured = [x for x in lines if x["event"] == "performance"]
    assert sorted(x["window"] for x in matured) == [1, 2]
    for line in matured:
        assert pd.Timestamp(line["label_watermark"]) >= pd.Timestamp(line["event_time_end"]) + LABEL_DELAY

    # alerts on the topic, with the model version and the window's event-time range
    alerts = read_alerts(settings, since)
    kinds = sorted((a["window"], a["kind"]) for a in alerts)
    assert kinds == [(2, "data_quality"), (2, "performance_decay"), (3, "data_drift")]
    drift_alert = next(a for a in alerts if a["kind"] == "data_drift")
    assert set(drift_alert["scores"]) == {"amount_to_avg_30d"} and drift_alert["model_version"] == version
    assert pd.Timestamp(drift_alert["event_time_start"]) == pd.Timestamp(w3["timestamp"].min())
    assert pd.Timestamp(drift_alert["event_time_end"]) == pd.Timestamp(w3["timestamp"].max())
    assert "terminal_risk_7d" in next(a for a in alerts if a["kind"] == "data_quality")["message"]
    assert run.alerts_published == len(alerts)

    # Prometheus series as scraped while the monitor ran: right after window 3, and after window 2's labels matured
    assert sorted(scrapes) == [("matured", 1), ("matured", 2), ("window", 1), ("window", 2), ("window", 3)]
    third_scrape = scrapes["window", 3]

    def windows_counted(scrape: str) -> float:
        line = next(x for x in scrape.splitlines() if x.startswith('mlsd_monitor_windows_total{design="fraud"}'))
        return float(line.rsplit(" ", 1)[1])

    # Two windows more than after the first. Not "3": once Feast is imported before prometheus_client, the process
    # keeps values in multiprocess files keyed by series name, so an earlier monitor in this process counts too.
    assert windows_counted(third_scrape) == windows_counted(scrapes["window", 1]) + 2
    assert 'mlsd_drift_score{design="fraud",feature="amount_to_avg_30d"}' in third_scrape
    assert 'mlsd_drift_detected{design="fraud",kind="data_drift"} 1.0' in third_scrape
    assert 'mlsd_window_performance{design="fraud",metric="average_precision"}' in scrapes["matured", 2]


@pytest.mark.integration
def test_recsys_windows_are_judged_on_later_interactions_against_the_first_window(kafka_settings: Settings) -> None:
    from pipelines.recsys.events import INTERACTIONS_TOPIC, InteractionEvent
    from pipelines.recsys.events import PREDICTIONS_TOPIC as RECSYS_PREDICTIONS_TOPIC

    settings = kafka_settings.model_copy(update={"monitor_performance_windows": 1})
    rng = np.random.default_rng(3)
    start = datetime(2026, 4, 1, tzinfo=UTC)
    records, interactions = [], []
    size = 1000  # windows this small are noisy already: thresholds are set for thousands of rows
    for i in range(2 * size):
        at = start + timedelta(minutes=1.2 * i)  # window 1 on the first day, window 2 on the second
        user, items = f"u{i}", [f"i{i}-{rank}" for rank in range(10)]
        records.append(
            PredictionRecord(
                design="recsys",
                request_id=f"q{i}",
                entity_id=user,
                timestamp=at,
                model_name="recsys-ranker",
                model_version="1",
                features={"user_events_7d": float(rng.poisson(12)), "candidate_recency_h": float(rng.gamma(2, 10))},
                score=float(rng.beta(2, 5)),
                decision="recommend",
                items=items,
                latency_ms=3.0,
            )
        )
        if i < size and i % 2 == 0:  # in window 1 every other user takes the first item two hours later
            interactions.append(InteractionEvent(user_id=user, item_id=items[0], timestamp=at + timedelta(hours=2)))
        if i >= size and i % 2 == 0:  # in window 2 they come back for it, but two days later: past the horizon
            interactions.append(InteractionEvent(user_id=user, item_id=items[0], timestamp=at + timedelta(days=2)))
    since = datetime.now(UTC) - timedelta(milliseconds=5)
    producer = make_producer(settings)
    for record in records:
        producer.send(RECSYS_PREDICTIONS_TOPIC, encode(record))
    for event in sorted(interactions, key=lambda e: e.timestamp):
        producer.send(INTERACTIONS_TOPIC, encode(event))
    producer.flush()
    producer.close()

    run = run_monitor(settings, "recsys", window_size=size, idle_timeout=3, since=since)

    first, second = run.windows
    assert first.reference == "recsys-ranker v1 window 1 (the registry has no such version)"
    assert not first.drift.data_drift and not second.drift.data_drift
    assert first.performance == pytest.approx({"precision_at_10": 0.05, "hit_rate_at_10": 0.5, "ndcg_at_10": 0.5})
    assert second.performance == pytest.approx({"precision_at_10": 0.0, "hit_rate_at_10": 0.0, "ndcg_at_10": 0.0})
    assert second.baseline == {"hit_rate_at_10": 0.5}  # set by the first matured window
    assert not first.performance_decay and second.performance_decay
    assert second.kinds == ["performance_decay"]


@pytest.mark.unit
def test_records_become_one_row_each_with_the_features_spread_out() -> None:
    record = PredictionRecord(
        design="fraud",
        request_id="r1",
        entity_id="t1",
        timestamp=datetime(2026, 3, 1, tzinfo=UTC),
        model_name="fraud-xgboost",
        model_version="3",
        features={"amount": 12.5, "terminal_risk_7d": None},
        score=0.2,
        decision="approve",
        latency_ms=2.0,
    )
    frame = records_frame([record])
    assert frame["amount"].tolist() == [12.5] and frame["terminal_risk_7d"].isna().all()
    assert frame.loc[0, "entity_id"] == "t1" and frame.loc[0, "model_version"] == "3"


def run_cli(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *args: str) -> int | str | None:
    from pipelines.cli import main

    monkeypatch.chdir(env.get("MLSD_HOME", "."))  # no stray .env file
    for key in [key for key in os.environ if key.startswith("MLSD_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(sys, "argv", ["mlsd", "monitor", *args])
    with pytest.raises(SystemExit) as stopped:
        main()
    return stopped.value.code


@pytest.mark.unit
def test_cli_mistakes_end_in_one_sentence(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from pipelines.platform.infra import free_port

    home = {"MLSD_HOME": str(tmp_path)}
    assert run_cli(monkeypatch, home, "--window-size", "1") == 2  # a usage error, refused before anything runs
    usage = " ".join(capsys.readouterr().err.replace("│", " ").split())
    assert "Invalid value for '--window-size': Input should be greater than or equal to 2" in usage
    nobody = {**home, "MLSD_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"}
    assert run_cli(monkeypatch, nobody, "--idle-timeout", "1") == 1
    message = " ".join(capsys.readouterr().err.split())
    assert message.startswith("error: No Kafka broker answers at") and message.endswith("MLSD_KAFKA_BOOTSTRAP.")


@pytest.mark.integration
def test_cli_prints_a_table_and_stops_after_max_windows(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], world: World, tmp_path: Path
) -> None:
    """The command on a broker of its own (its log holds only this test's records), with --max-windows."""
    from pipelines.designs import all_topics
    from pipelines.platform.infra import free_port, start_broker, stop_process

    port = free_port()
    settings = Settings(
        home=tmp_path / "home",
        mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        kafka_port=port,
        kafka_bootstrap=f"127.0.0.1:{port}",
    )
    start_broker(settings, all_topics())
    try:
        version, _ = register_with_reference(settings, world, tmp_path)
        rows = world.stream.iloc[:900]
        producer = make_producer(settings)
        for record in prediction_records(rows, world.features, version):
            producer.send(FRAUD_PREDICTIONS_TOPIC, encode(record))
        # a chargeback far enough in event time to complete the first window
        frauds = world.stream[world.stream["is_fraud"] == 1]
        late = frauds[frauds["label_timestamp"] > rows["timestamp"].max() + LABEL_DELAY].iloc[0]
        producer.send(LABELS_TOPIC, encode(chargeback(late)))
        producer.flush()
        producer.close()
        settings.home.mkdir(parents=True, exist_ok=True)
        env = {
            "MLSD_HOME": str(settings.home),
            "MLSD_MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
            "MLSD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        }
        out = tmp_path / "run.json"
        args = ("--design", "fraud", "--window-size", "400", "--max-windows", "1", "--json-out", str(out))
        code = run_cli(monkeypatch, env, *args, "--idle-timeout", "20")
    finally:
        stop_process(settings, "kafka")
    printed = capsys.readouterr().out
    assert code in (0, None)
    assert "fraud monitor: 1 windows" in printed and "window 1 labels matured" in printed
    result = json.loads(out.read_text())
    assert result["windows"] == 1 and result["windows_awaiting_labels"] == []
    assert result["results"][0]["rows"] == 400 and result["results"][0]["performance"] is not None
    assert (settings.reports_dir / "monitoring" / "fraud" / "window-00001.html").exists()
    assert not (settings.reports_dir / "monitoring" / "fraud" / "window-00002.html").exists()
