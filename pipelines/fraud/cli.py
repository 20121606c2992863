"""`mlsd fraud ...`: the fraud design's stages as commands — simulate, split, replay, stream, train, backtest, serve,
loadtest.

Every command builds one Settings from MLSD_* variables (and `.env`) and imports what it needs only once its inputs
are known to be good, so a bad file fails in a second, not after the heavy imports.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.table import Table

from pipelines.platform.console import console, warn, write_json_out
from pipelines.platform.deployment import ServingMode
from pipelines.settings import Settings

app = typer.Typer(
    help="Fraud detection: simulate, split, replay, stream, train, backtest, serve, loadtest.", no_args_is_help=True
)


@app.command("simulate")
def fraud_simulate(
    out: Annotated[Path, typer.Option(help="Output file (.parquet or .csv)")] = Path(".mlsd/data/transactions.parquet"),
    transactions: Annotated[int, typer.Option(help="Approximate number of transactions")] = 300_000,
    fraud_rate: Annotated[float, typer.Option(help="Share of fraudulent transactions")] = 0.008,
    days: Annotated[int | None, typer.Option(help="Days to simulate (default: chosen from the size)")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (default MLSD_SEED)")] = None,
) -> None:
    """Simulate customers, terminals and three fraud patterns with delayed labels; write the transaction file."""
    from pipelines.fraud.simulate import config_for_size, fraud_summary, simulate_transactions
    from pipelines.platform.dataio import write_table

    s = Settings()
    overrides: dict = {
        "fraud_rate": fraud_rate,
        "seed": seed if seed is not None else s.seed,
        "label_delay_days": s.fraud_label_delay_days,
    }
    if days is not None:
        overrides["days"] = days
    frame = simulate_transactions(config_for_size(transactions, **overrides))
    write_table(frame, out)
    console.print(f"wrote {len(frame):,} transactions to {out}")
    console.print(fraud_summary(frame).to_string())


@app.command("split")
def fraud_split(
    transactions: Annotated[Path, typer.Option(help="Transaction file (.parquet or .csv)")],
    live_days: Annotated[int, typer.Option(help="Last calendar days that go to the live file")] = 2,
    history_out: Annotated[Path, typer.Option(help="Where the history goes")] = Path(".mlsd/data/history.parquet"),
    live_out: Annotated[Path, typer.Option(help="Where the live days go")] = Path(".mlsd/data/live.parquet"),
) -> None:
    """Split a file into history (train on it, warm the stream with it) and the last days (replay them live)."""
    from pipelines.fraud.data import read_transactions
    from pipelines.platform.dataio import write_split

    frame = read_transactions(transactions, Settings().fraud_label_delay_days)
    history, live = write_split(frame, live_days, history_out, live_out)
    console.print(f"history: {len(history):,} transactions → {history_out}; live: {len(live):,} → {live_out}")


@app.command("replay")
def fraud_replay(
    transactions: Annotated[Path, typer.Option(help="Transaction file (.parquet or .csv)")],
    rate: Annotated[float, typer.Option(help="Events per second (0 = as fast as possible)")] = 1000.0,
    limit: Annotated[int | None, typer.Option(help="Replay only the first N transactions")] = None,
) -> None:
    """Send a transaction file to `fraud.transactions` (and chargebacks to `fraud.labels`) at a given rate."""
    from rich.progress import Progress

    from pipelines.fraud.data import read_transactions
    from pipelines.fraud.events import TOPICS
    from pipelines.fraud.stream import replay_transactions
    from pipelines.platform.stream import ensure_topics, make_producer

    s = Settings()
    frame = read_transactions(transactions, s.fraud_label_delay_days)
    if limit:
        frame = frame.head(limit)
    ensure_topics(s, TOPICS)
    producer = make_producer(s)
    with Progress(console=console) as progress:
        task = progress.add_task("replaying", total=None)
        result = replay_transactions(
            producer, frame, rate, lambda done, total: progress.update(task, completed=done, total=total)
        )
    producer.close()
    console.print(f"sent {result['events']:,} events in {result['seconds']:.1f} s ({result['rate']:,.0f}/s)")


@app.command("stream")
def fraud_stream(
    history: Annotated[
        Path | None, typer.Option(help="Transactions already processed (warms the window state)")
    ] = None,
    group: Annotated[str, typer.Option(help="Consumer group id")] = "fraud-features",
    idle_stop: Annotated[float | None, typer.Option(help="Stop after this many seconds without events")] = None,
    max_events: Annotated[int | None, typer.Option(help="Stop after this many events")] = None,
    json_out: Annotated[Path | None, typer.Option(help="Write throughput and freshness figures here")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus /metrics and /healthz here")] = None,
) -> None:
    """Consume transactions and chargebacks; customer features, then terminal features after a repartition by
    terminal; Feast online + offline; state checkpointed with the offsets (run several with the same --group)."""
    from feature_repo.fraud import fraud_feature_objects
    from pipelines.fraud.data import read_transactions
    from pipelines.fraud.events import BY_TERMINAL_TOPIC, LABELS_TOPIC, PARTITIONED_TOPICS, TOPICS, TRANSACTIONS_TOPIC
    from pipelines.fraud.features import FraudFeatureEngine
    from pipelines.fraud.stream import SCHEMAS, FraudFeatureSink, seed_state
    from pipelines.platform.features import apply_feature_definitions
    from pipelines.platform.processor import run_feature_processor
    from pipelines.platform.repartition import EventTimeBuffer, Forwarder, broker_log_ends, origin_name
    from pipelines.platform.state import StateStore, state_url
    from pipelines.platform.stream import ensure_topics, partition_count, percentile_summary

    s = Settings()
    state = StateStore(state_url(s), group)
    resuming = state.has_state()  # then the checkpoint is newer than any history file: it is not read
    past = read_transactions(history, s.fraud_label_delay_days) if history and not resuming else None
    store = apply_feature_definitions(s, [fraud_feature_objects])
    ensure_topics(s, TOPICS, {topic: s.stream_partitions for topic in PARTITIONED_TOPICS})
    counts = {topic: partition_count(s, topic) for topic in PARTITIONED_TOPICS}  # the broker's, if they existed
    if past is not None:
        seeded = seed_state(
            state, past, s.fraud_label_delay_days, counts[TRANSACTIONS_TOPIC], counts[BY_TERMINAL_TOPIC]
        )
        resuming = not seeded  # another replica seeded it first
        if seeded:
            console.print(f"seeded the state with the history in {history}")
    if resuming and history:
        console.print(f"resuming from the checkpoint; did not read the history in {history}")
    origins = [origin_name(t, p) for t in (TRANSACTIONS_TOPIC, LABELS_TOPIC) for p in range(counts[t])]
    built: list[FraudFeatureSink] = []

    def make_sink(producer: Any) -> FraudFeatureSink:
        forwarder = Forwarder(producer, BY_TERMINAL_TOPIC, counts[BY_TERMINAL_TOPIC], s.stream_idle_origin_ms)
        sink = FraudFeatureSink(
            s,
            store,
            FraudFeatureEngine(s.fraud_label_delay_days),
            forwarder,
            EventTimeBuffer(BY_TERMINAL_TOPIC, origins, broker_log_ends(s)),
        )
        built.append(sink)
        return sink

    def figures() -> dict[str, Any]:
        stats = built[0].stats
        return {
            "transactions": stats.transactions,
            "labels": stats.labels,
            "terminal_rows": stats.terminal_rows,
            "duplicates": stats.duplicates,
            "late": stats.late,
            "freshness_ms": percentile_summary(stats.freshness_ms),
        }

    run_feature_processor(
        s, "fraud", SCHEMAS, make_sink, group, idle_stop, max_events, json_out, figures, metrics_port, state
    )


@app.command("train")
def fraud_train(
    transactions: Annotated[Path, typer.Option(help="Transaction file (.parquet or .csv)")],
    backfill: Annotated[bool, typer.Option(help="Rebuild the offline/online feature rows from this file first")] = True,
    json_out: Annotated[Path | None, typer.Option(help="Write the comparison here")] = None,
    alias: Annotated[
        Literal["champion", "challenger"], typer.Option(help="challenger: leave it to `mlsd registry promote`")
    ] = "champion",
) -> None:
    """Train XGBoost with four imbalance strategies on Feast point-in-time features; register the best."""
    from pipelines.fraud.data import read_transactions

    s = Settings()
    frame = read_transactions(transactions, s.fraud_label_delay_days)
    from pipelines.fraud.train import train_fraud  # heavy imports only once the file is known to be good

    with console.status("training") as spinner:
        report = train_fraud(s, frame, backfill=backfill, progress=lambda m: spinner.update(m), alias=alias)
    print_strategy_table(report)
    write_json_out(json_out, report.to_dict())


def print_strategy_table(report: Any) -> None:
    """The four imbalance strategies side by side; the registered one is starred."""
    from pipelines.fraud.model import MODEL_NAME

    table = Table(title=f"imbalance strategies on {report.valid_rows:,} validation transactions (time-ordered)")
    for column in (
        "strategy",
        "avg precision",
        "ROC-AUC",
        "precision",
        "recall",
        "card P@100",
        "threshold",
        "cost",
        "fit s",
    ):
        table.add_column(column)
    for r in report.strategies:
        mark = " *" if r.strategy == report.best_strategy else ""
        table.add_row(
            r.strategy + mark,
            f"{r.average_precision:.3f}",
            f"{r.roc_auc:.3f}",
            f"{r.precision:.3f}",
            f"{r.recall:.3f}",
            f"{r.card_precision_at_100:.3f}",
            f"{r.threshold:.3f}",
            f"{r.cost:,.0f}",
            f"{r.fit_seconds:.1f}",
        )
    console.print(table)
    console.print(
        f"registered {MODEL_NAME} v{report.model_version} ({report.best_strategy}) as {report.alias}; "
        f"threshold {report.threshold:.3f}; timings {json.dumps({k: round(v, 1) for k, v in report.seconds.items()})}"
    )


@app.command("backtest")
def fraud_backtest(
    transactions: Annotated[Path, typer.Option(help="Transaction file (.parquet or .csv)")],
    train_start: Annotated[str | None, typer.Option(help="First training day (default: first day of the file)")] = None,
    train_days: Annotated[int, typer.Option(help="Days in each training window")] = 7,
    delay_days: Annotated[int, typer.Option(help="Days skipped between training and test (label delay)")] = 7,
    test_days: Annotated[int, typer.Option(help="Days in each test window")] = 7,
    folds: Annotated[int, typer.Option(help="Number of folds, each shifted by 7 days")] = 4,
    json_out: Annotated[Path | None, typer.Option(help="Write per-fold and summary metrics here")] = None,
) -> None:
    """Prequential backtest with delayed labels: ROC-AUC, average precision, card precision@100 per strategy."""
    from pipelines.fraud.backtest import BacktestConfig, run_backtest
    from pipelines.fraud.data import read_transactions

    s = Settings()
    frame = read_transactions(transactions, s.fraud_label_delay_days)
    config = BacktestConfig(
        train_start=train_start,
        train_days=train_days,
        delay_days=delay_days,
        test_days=test_days,
        folds=folds,
        seed=s.seed,
        smote_ratio=s.fraud_smote_ratio,
    )
    with console.status("backtesting") as spinner:
        result = run_backtest(frame, config, progress=lambda m: spinner.update(m))
    table = Table(title=f"prequential backtest, {folds} folds (mean ± std)")
    for column in ("strategy", "ROC-AUC", "average precision", "card precision@100"):
        table.add_column(column)
    for strategy, m in result["summary"].items():
        table.add_row(
            strategy,
            *(
                f"{m[k]['mean']:.3f} ± {m[k]['std']:.3f}"
                for k in ("roc_auc", "average_precision", "card_precision_at_100")
            ),
        )
    console.print(table)
    write_json_out(json_out, result)
    if json_out:
        console.print(f"wrote {json_out}")


@app.command("serve")
def fraud_serve(
    port: Annotated[int | None, typer.Option(help="Port (default MLSD_FRAUD_SERVICE_PORT)")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    mode: Annotated[ServingMode | None, typer.Option(help="Serving mode (default MLSD_SERVING_MODE)")] = None,
    canary_share: Annotated[float | None, typer.Option(help="Challenger share in canary (MLSD_CANARY_SHARE)")] = None,
) -> None:
    """Serve the champion model with BentoML: POST /score, /model, /metrics, /readyz, /livez, OpenAPI at /docs."""
    from pipelines.fraud.model import MODEL_NAME, TRAIN_HINT
    from pipelines.platform.infra import require_free_port
    from pipelines.platform.registry import check_servable
    from pipelines.platform.serving import exec_service

    # Deployment options reach the service's workers as MLSD_* variables; reading Settings validates them here.
    if mode is not None:
        os.environ["MLSD_SERVING_MODE"] = mode
    if canary_share is not None:
        os.environ["MLSD_CANARY_SHARE"] = str(canary_share)
    s = Settings()
    port = port or s.fraud_service_port
    require_free_port(port, "the fraud scoring service", "MLSD_FRAUD_SERVICE_PORT")
    # Fail here, in one sentence, rather than inside a worker; a registry that is down only delays the champion.
    if warning := check_servable(s, MODEL_NAME, TRAIN_HINT):
        warn(warning)
    exec_service("services.fraud.service:FraudService", host, port, s.fraud_service_workers)


@app.command("loadtest")
def loadtest_fraud(
    rps: Annotated[float, typer.Option(help="Requests per second (open loop)")] = 200.0,
    duration: Annotated[float, typer.Option(help="Seconds")] = 30.0,
    url: Annotated[str | None, typer.Option(help="Score endpoint (default: local service)")] = None,
    transactions: Annotated[Path | None, typer.Option(help="Take payloads from this file (default: simulate)")] = None,
    out_dir: Annotated[Path, typer.Option(help="Where the JSON and the histogram go")] = Path(".mlsd/reports/loadtest"),
) -> None:
    """Open-loop load against the fraud service: throughput, p50/p95/p99, errors, latency histogram."""
    from pipelines.fraud.loadgen import transaction_payloads
    from pipelines.platform.loadtest import drive_service

    s = Settings()
    target = url or f"http://127.0.0.1:{s.fraud_service_port}/score"
    drive_service("fraud", target, "`mlsd fraud serve`", transaction_payloads(s, transactions), rps, duration, out_dir)
