"""The `mlsd` command: embedded stack, the fraud design's stages, load tests and the demo.

Every command builds one Settings from MLSD_* variables (and `.env`) and passes it down. Errors a user can cause
end in one sentence, never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from pipelines.monitoring.deploy_cli import deploy_app
from pipelines.monitoring.registry_cli import registry_app
from pipelines.platform.stream import ServiceUnavailable as ServiceUnavailableError
from pipelines.settings import Settings

app = typer.Typer(
    help="Runnable ML system designs: fraud detection on Kafka, Feast, XGBoost, MLflow and BentoML.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
fraud_app = typer.Typer(
    help="Fraud detection design: simulate, replay, stream, train, backtest, serve.", no_args_is_help=True
)
loadtest_app = typer.Typer(help="Open-loop load tests against a running service.", no_args_is_help=True)
recsys_app = typer.Typer(
    help="Recommendation design: simulate interactions, replay them to Kafka, stream user/item features.",
    no_args_is_help=True,
)
infra_app = typer.Typer(help="Single infrastructure roles, for docker-compose and debugging.", no_args_is_help=True)
app.add_typer(fraud_app, name="fraud")
app.add_typer(recsys_app, name="recsys")
app.add_typer(loadtest_app, name="loadtest")
app.add_typer(infra_app, name="infra")
app.add_typer(deploy_app, name="deploy")
app.add_typer(registry_app, name="registry")

# Piped output (CI, `make demo | tee`) gets a wide fixed width so tables keep their columns.
console = Console(width=None if sys.stdout.isatty() else 150)
error_console = Console(stderr=True)


def settings() -> Settings:
    return Settings()


def print_json_or_table(rows: list[tuple[str, str]], title: str) -> None:
    table = Table(title=title, show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


# ---------------------------------------------------------------- stack


@app.command()
def up() -> None:
    """Start the embedded stack: Kafka-protocol broker (Tansu), MLflow server, Feast registry; create topics."""
    from pipelines.platform.infra import stack_up

    s = settings()
    started = stack_up(s)
    for process in started:
        console.print(f"started {process.name} (pid {process.pid}, log {process.log})")
    console.print(f"Kafka at {s.kafka_bootstrap}; MLflow UI at {s.tracking_uri}; Feast repo applied.")


@app.command()
def down() -> None:
    """Stop what `mlsd up` started."""
    from pipelines.platform.infra import stack_down

    stopped = stack_down(settings())
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@app.command()
def status() -> None:
    """Show which embedded services are running."""
    from pipelines.platform.infra import STACK, running

    s = settings()
    print_json_or_table([(name, "running" if running(s, name) else "stopped") for name in STACK], "mlsd stack")


@app.command()
def demo(
    transactions: Annotated[int, typer.Option(help="How many transactions to simulate")] = 300_000,
    live_days: Annotated[int, typer.Option(help="Last days of the simulation that arrive live through Kafka")] = 2,
    rps: Annotated[float, typer.Option(help="Live scoring traffic, requests per second")] = 200.0,
    duration: Annotated[float, typer.Option(help="Seconds of live scoring traffic")] = 20.0,
    keep_running: Annotated[bool, typer.Option(help="Leave the stack running afterwards")] = False,
    interactions: Annotated[int, typer.Option(help="Recommendation interactions to simulate (0 skips it)")] = 150_000,
    recsys_rps: Annotated[float, typer.Option(help="Live recommendation traffic, requests per second")] = 50.0,
) -> None:
    """Every design on simulated data: up, simulate, train, stream, serve, live traffic, summaries, report."""
    from pipelines.demo import run_demo

    run_demo(settings(), console, transactions, live_days, rps, duration, keep_running, interactions, recsys_rps)


# ---------------------------------------------------------------- fraud


@fraud_app.command("simulate")
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

    s = settings()
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


@fraud_app.command("split")
def fraud_split(
    transactions: Annotated[Path, typer.Option(help="Transaction file (.parquet or .csv)")],
    live_days: Annotated[int, typer.Option(help="Last calendar days that go to the live file")] = 2,
    history_out: Annotated[Path, typer.Option(help="Where the history goes")] = Path(".mlsd/data/history.parquet"),
    live_out: Annotated[Path, typer.Option(help="Where the live days go")] = Path(".mlsd/data/live.parquet"),
) -> None:
    """Split a file into history (train on it, warm the stream with it) and the last days (replay them live)."""
    from pipelines.fraud.data import read_transactions

    frame = read_transactions(transactions, settings().fraud_label_delay_days)
    split_file(frame, live_days, history_out, live_out, "transactions")


def split_file(frame: Any, live_days: int, history_out: Path, live_out: Path, what: str) -> None:
    from pipelines.platform.dataio import split_history_live, write_table

    history, live = split_history_live(frame, live_days)
    write_table(history, history_out)
    write_table(live, live_out)
    console.print(f"history: {len(history):,} {what} → {history_out}; live: {len(live):,} → {live_out}")


@fraud_app.command("replay")
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

    s = settings()
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


@fraud_app.command("stream")
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
    """Consume transactions and chargebacks, compute features, push to Feast online + offline, commit after."""
    from pipelines.fraud.data import read_transactions
    from pipelines.fraud.events import TOPICS
    from pipelines.fraud.stream import SCHEMAS, FraudFeatureSink, warm_engine
    from pipelines.platform.features import apply_feature_definitions
    from pipelines.platform.stream import (
        ensure_topics,
        percentile_summary,
    )

    s = settings()
    past = read_transactions(history, s.fraud_label_delay_days) if history else None
    engine = warm_engine(past, s.fraud_label_delay_days)
    store = apply_feature_definitions(s)
    ensure_topics(s, TOPICS)
    sink = FraudFeatureSink(s, store, engine)
    run_feature_processor(
        s,
        "fraud",
        SCHEMAS,
        sink,
        group,
        idle_stop,
        max_events,
        json_out,
        lambda: {
            "transactions": sink.stats.transactions,
            "labels": sink.stats.labels,
            "duplicates": sink.stats.duplicates,
            "freshness_ms": percentile_summary(sink.stats.freshness_ms),
        },
        metrics_port,
    )


def run_feature_processor(
    s: Settings,
    design: str,
    schemas: dict,
    sink: Any,
    group: str,
    idle_stop: float | None,
    max_events: int | None,
    json_out: Path | None,
    sink_figures: Any,
    metrics_port: int | None = None,
) -> None:
    """A design's feature processor on the platform loop, with progress lines and a JSON summary at the end.

    With `metrics_port`, Prometheus metrics (processor label = design) and /healthz are served while it runs.
    """
    from contextlib import ExitStack

    from pipelines.platform.stream import make_consumer, make_producer, run_micro_batches

    def report(stats, _size):  # type: ignore[no-untyped-def]
        if stats.batches % 20 == 0:
            console.print(f"{stats.processed:,} events, {stats.dead_lettered:,} dead-lettered, {stats.rate:,.0f}/s")

    with ExitStack() as cleanup:  # closes, last opened first: producer, consumer, metrics endpoint
        metrics = None
        if metrics_port is not None:
            from pipelines.platform.metrics import StreamMetrics, start_metrics_server

            metrics = StreamMetrics(design, lag_every=s.stream_lag_every)
            server = start_metrics_server(metrics_port, metrics.registry, s.metrics_host, health=metrics.health)
            cleanup.callback(server.stop)
            console.print(f"metrics on {server.url}/metrics, health on {server.url}/healthz")
        consumer = make_consumer(s, list(schemas), group)
        cleanup.callback(consumer.close)
        producer = make_producer(s)
        cleanup.callback(producer.close)
        console.print(f"{design} feature processor consuming {', '.join(schemas)} (group {group}); Ctrl-C stops it")
        stats = run_micro_batches(
            consumer,
            producer,
            schemas,
            sink,
            s.stream_batch_size,
            s.stream_batch_ms,
            idle_stop_s=idle_stop,
            max_events=max_events,
            on_batch=report,
            metrics=metrics,
        )
    result = {
        "events": stats.processed,
        "dead_lettered": stats.dead_lettered,
        "dead_letter_reasons": stats.dead_letter_reasons,
        "seconds": round(stats.seconds, 3),
        "events_per_s": round(stats.rate, 1),
        **sink_figures(),
    }
    console.print_json(json.dumps(result))
    write_json_out(json_out, result)


@fraud_app.command("train")
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

    s = settings()
    frame = read_transactions(transactions, s.fraud_label_delay_days)
    from pipelines.fraud.train import train_fraud  # heavy imports only once the file is known to be good

    with console.status("training") as spinner:
        report = train_fraud(s, frame, backfill=backfill, progress=lambda m: spinner.update(m), alias=alias)
    print_strategy_table(report)
    write_json_out(json_out, report.to_dict())


def print_strategy_table(report) -> None:  # type: ignore[no-untyped-def]
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
        f"registered fraud-xgboost v{report.model_version} ({report.best_strategy}) as {report.alias}; "
        f"threshold {report.threshold:.3f}; timings {json.dumps({k: round(v, 1) for k, v in report.seconds.items()})}"
    )


@fraud_app.command("backtest")
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

    s = settings()
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


@fraud_app.command("serve")
def fraud_serve(
    port: Annotated[int | None, typer.Option(help="Port (default MLSD_FRAUD_SERVICE_PORT)")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
    mode: Annotated[str | None, typer.Option(help="off | shadow | canary (default MLSD_SERVING_MODE)")] = None,
    canary_share: Annotated[float | None, typer.Option(help="Challenger share in canary (MLSD_CANARY_SHARE)")] = None,
) -> None:
    """Serve the champion model with BentoML: POST /score, /model, /metrics, /readyz, /livez, OpenAPI at /docs."""
    from pipelines.platform.infra import require_free_port
    from pipelines.platform.registry import connect_mlflow, load_alias

    # Deployment options reach the service's workers as MLSD_* variables; reading Settings validates them here.
    if mode is not None:
        os.environ["MLSD_SERVING_MODE"] = mode
    if canary_share is not None:
        os.environ["MLSD_CANARY_SHARE"] = str(canary_share)
    s = settings()
    port = port or s.fraud_service_port
    require_free_port(port, "the fraud scoring service", "MLSD_FRAUD_SERVICE_PORT")
    connect_mlflow(s)
    load_alias("fraud-xgboost")  # fail here, in one sentence, rather than inside a worker
    command = service_command("services.fraud.service:FraudService", host, port, s.fraud_service_workers)
    # Single-row predictions: idle OpenMP threads spin-wait and steal the CPU that serves requests.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.execvp(command[0], command)


def service_command(target: str, host: str, port: int, workers: int) -> list[str]:
    root = Path(__file__).resolve().parents[1]
    return [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        target,
        "--host",
        host,
        "--port",
        str(port),
        "--working-dir",
        str(root),
        "--api-workers",
        str(workers),
    ]


# ---------------------------------------------------------------- recsys


@recsys_app.command("simulate")
def recsys_simulate(
    out: Annotated[Path, typer.Option(help="Interactions file (.parquet or .csv)")] = Path(
        ".mlsd/data/interactions.parquet"
    ),
    items_out: Annotated[Path, typer.Option(help="Items file (.parquet or .csv)")] = Path(".mlsd/data/items.parquet"),
    interactions: Annotated[int, typer.Option(help="Approximate number of interactions")] = 300_000,
    seed: Annotated[int | None, typer.Option(help="Random seed (default MLSD_SEED)")] = None,
) -> None:
    """Simulate users, items with categories, long-tailed popularity, sessions and cold start; write both files."""
    from pipelines.platform.dataio import write_table
    from pipelines.recsys.simulate import config_for_size, simulate_interactions

    s = settings()
    frame, items = simulate_interactions(config_for_size(interactions, seed=seed if seed is not None else s.seed))
    write_table(frame, out)
    write_table(items, items_out)
    console.print(
        f"wrote {len(frame):,} interactions by {frame['user_id'].nunique():,} users on "
        f"{frame['item_id'].nunique():,} items to {out}, and {len(items):,} items to {items_out}"
    )


@recsys_app.command("split")
def recsys_split(
    interactions: Annotated[Path, typer.Option(help="Interactions file (.parquet or .csv)")],
    live_days: Annotated[int, typer.Option(help="Last calendar days that go to the live file")] = 1,
    history_out: Annotated[Path, typer.Option(help="Where the history goes")] = Path(".mlsd/data/interactions.parquet"),
    live_out: Annotated[Path, typer.Option(help="Where the live days go")] = Path(
        ".mlsd/data/interactions_live.parquet"
    ),
) -> None:
    """Split interactions into history (train on it, seed the features with it) and the last days (replay them)."""
    from pipelines.recsys.data import read_interactions

    split_file(read_interactions(interactions), live_days, history_out, live_out, "interactions")


@recsys_app.command("replay")
def recsys_replay(
    interactions: Annotated[Path, typer.Option(help="Interactions file (.parquet or .csv)")],
    items: Annotated[Path | None, typer.Option(help="Items file; new items are announced on recsys.items")] = None,
    rate: Annotated[float, typer.Option(help="Events per second (0 = as fast as possible)")] = 1000.0,
    limit: Annotated[int | None, typer.Option(help="Replay only the first N interactions")] = None,
) -> None:
    """Send interactions to `recsys.interactions` (and item creations to `recsys.items`) at a given rate."""
    from pipelines.platform.stream import ensure_topics, make_producer
    from pipelines.recsys.data import read_interactions, read_items
    from pipelines.recsys.events import TOPICS
    from pipelines.recsys.stream import replay_interactions

    s = settings()
    frame = read_interactions(interactions)
    catalogue = read_items(items) if items else None
    if limit:
        frame = frame.head(limit)
    ensure_topics(s, TOPICS)
    producer = make_producer(s)
    result = replay_interactions(producer, frame, catalogue, rate)
    producer.close()
    console.print(f"sent {result['events']:,} events in {result['seconds']:.1f} s ({result['rate']:,.0f}/s)")


@recsys_app.command("stream")
def recsys_stream(
    items: Annotated[Path | None, typer.Option(help="Items file (categories and creation times)")] = None,
    history: Annotated[
        Path | None, typer.Option(help="Interactions already processed: warm the state, seed the online store")
    ] = None,
    group: Annotated[str, typer.Option(help="Consumer group id")] = "recsys-features",
    idle_stop: Annotated[float | None, typer.Option(help="Stop after this many seconds without events")] = None,
    json_out: Annotated[Path | None, typer.Option(help="Write throughput and freshness figures here")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus /metrics and /healthz here")] = None,
) -> None:
    """Consume interactions and items, update user/item features in Feast online + offline, commit after."""
    from feature_repo.recsys import ITEM_VIEW, USER_VIEW
    from pipelines.platform.features import apply_feature_definitions, write_feature_rows
    from pipelines.platform.stream import (
        ensure_topics,
        percentile_summary,
    )
    from pipelines.recsys.data import read_interactions, read_items
    from pipelines.recsys.events import TOPICS
    from pipelines.recsys.features import backfill_features, engine_for_catalogue
    from pipelines.recsys.stream import SCHEMAS, RecsysFeatureSink

    s = settings()
    engine = engine_for_catalogue(read_items(items) if items else None)
    store = apply_feature_definitions(s)
    if history:
        # The history's newest rows go online too, so the service knows every user and item from the start.
        users, item_rows = backfill_features(read_interactions(history), engine=engine)
        online, _ = write_feature_rows(s, store, [(USER_VIEW, "user_id", users), (ITEM_VIEW, "item_id", item_rows)])
        console.print(f"seeded the online store with {online:,} user and item rows from {history}")
    ensure_topics(s, TOPICS)
    sink = RecsysFeatureSink(s, store, engine)
    run_feature_processor(
        s,
        "recsys",
        SCHEMAS,
        sink,
        group,
        idle_stop,
        None,
        json_out,
        lambda: {
            "interactions": sink.stats.interactions,
            "items": sink.stats.items,
            "freshness_ms": percentile_summary(sink.stats.freshness_ms),
        },
        metrics_port,
    )


@recsys_app.command("train")
def recsys_train(
    interactions: Annotated[Path, typer.Option(help="Interactions file (.parquet or .csv)")],
    items: Annotated[Path | None, typer.Option(help="Items file (categories, creation times, prices)")] = None,
    alias: Annotated[
        Literal["champion", "challenger"], typer.Option(help="challenger: leave it to `mlsd registry promote`")
    ] = "champion",
) -> None:
    """Train candidates + XGBoost ranker on all interactions; register `recsys-ranker@champion` in MLflow."""
    from pipelines.recsys.data import read_interactions, read_items

    s = settings()
    frame = read_interactions(interactions)
    catalogue = read_items(items) if items else None
    from pipelines.recsys.train import train_recsys

    with console.status("training the candidate generators and the ranker"):
        report = train_recsys(s, frame, catalogue, alias=alias)
    console.print(
        f"registered recsys-ranker v{report.model_version} as {report.alias}: {report.interactions:,} interactions, "
        f"{report.training_rows:,} ranker rows, {report.seconds['total']:.1f} s"
    )


@recsys_app.command("serve")
def recsys_serve(
    port: Annotated[int | None, typer.Option(help="Port (default MLSD_RECSYS_SERVICE_PORT)")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
) -> None:
    """Serve `recsys-ranker@champion` with BentoML: POST /recommend, /readyz, /livez, OpenAPI at /docs."""
    from pipelines.platform.infra import require_free_port
    from pipelines.platform.registry import connect_mlflow

    s = settings()
    port = port or s.recsys_service_port
    require_free_port(port, "the recommendation service", "MLSD_RECSYS_SERVICE_PORT")
    connect_mlflow(s)
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().get_model_version_by_alias("recsys-ranker", "champion")
    except MlflowException:
        raise ServiceUnavailableError(
            "No model 'recsys-ranker' has the alias 'champion' yet; train one first with `mlsd recsys train`."
        ) from None
    command = service_command("services.recsys.service:RecommendService", host, port, 1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.execvp(command[0], command)


@recsys_app.command("evaluate")
def recsys_evaluate(
    interactions: Annotated[Path, typer.Option(help="Interactions file (.parquet or .csv)")],
    items: Annotated[Path | None, typer.Option(help="Items file (categories, creation times)")] = None,
    split: Annotated[str, typer.Option(help="temporal | random-by-item | leave-last-out")] = "temporal",
    test_frac: Annotated[float, typer.Option(help="Share of interactions held out")] = 0.2,
    k: Annotated[int, typer.Option(help="List length evaluated")] = 10,
    seed: Annotated[int, typer.Option(help="Seed for the split and the models")] = 7,
    max_users: Annotated[int, typer.Option(help="Evaluate at most this many users (seeded sample)")] = 20_000,
    json_out: Annotated[Path | None, typer.Option(help="Write both tables here")] = None,
) -> None:
    """Pipeline vs popularity vs each candidate generator: precision, recall, nDCG, MAP, coverage, diversity."""
    from pipelines.recsys.data import read_interactions, read_items
    from pipelines.recsys.splits import SPLIT_METHODS

    if split not in SPLIT_METHODS:
        raise ValueError(f"--split must be one of {', '.join(SPLIT_METHODS)}, not '{split}'")
    frame = read_interactions(interactions)
    catalogue = read_items(items) if items else None
    from pipelines.recsys.evaluate import EvaluateConfig, evaluate_pipeline, ranker_trainer

    config = EvaluateConfig(split=split, test_frac=test_frac, k=k, seed=seed, max_users=max_users)  # type: ignore[arg-type]
    with console.status("evaluating") as spinner:
        result = evaluate_pipeline(
            frame, catalogue, config, fit_ranker=ranker_trainer(seed), progress=lambda m: spinner.update(m)
        )

    def number(value: float) -> str:
        return "–" if value != value else f"{value:.4f}"  # NaN: diversity without item categories

    table = Table(title=f"{split} split, {result['users_evaluated']:,} users, k={k}")
    for column in ("model", f"precision@{k}", f"recall@{k}", f"nDCG@{k}", f"MAP@{k}", "coverage", "diversity"):
        table.add_column(column)
    for row in result["rows"]:
        table.add_row(
            row["model"],
            *(number(row[key]) for key in ("precision", "recall", "ndcg", "map", "coverage", "diversity")),
        )
    console.print(table)
    for row in result["candidate_recall"]:
        console.print(f"candidate recall@{row['n']} {row['generator']}: {row['recall']:.4f}")
    if catalogue is None:
        console.print("no --items file: no categories, so diversity and the re-ranking switches are not measured")
    elif result.get("rerank_effects"):
        effects = Table(title="each re-ranking switch on the ranker's lists")
        for column in ("re-ranking", f"nDCG@{k}", f"recall@{k}", "coverage", "diversity"):
            effects.add_column(column)
        for row in result["rerank_effects"]:
            effects.add_row(
                row["config"], *(number(row[key]) for key in (f"ndcg@{k}", f"recall@{k}", "coverage", "diversity"))
            )
        console.print(effects)
    write_json_out(json_out, result)
    if json_out:
        console.print(f"wrote {json_out}")


# ---------------------------------------------------------------- load tests


@loadtest_app.command("fraud")
def loadtest_fraud(
    rps: Annotated[float, typer.Option(help="Requests per second (open loop)")] = 200.0,
    duration: Annotated[float, typer.Option(help="Seconds")] = 30.0,
    url: Annotated[str | None, typer.Option(help="Score endpoint (default: local service)")] = None,
    transactions: Annotated[Path | None, typer.Option(help="Take payloads from this file (default: simulate)")] = None,
    out_dir: Annotated[Path, typer.Option(help="Where the JSON and the histogram go")] = Path(".mlsd/reports/loadtest"),
) -> None:
    """Open-loop load against the fraud service: throughput, p50/p95/p99, errors, latency histogram."""
    from pipelines.fraud.loadgen import transaction_payloads

    s = settings()
    target = url or f"http://127.0.0.1:{s.fraud_service_port}/score"
    drive_service("fraud", target, "`mlsd fraud serve`", transaction_payloads(s, transactions), rps, duration, out_dir)


@loadtest_app.command("recsys")
def loadtest_recsys(
    rps: Annotated[float, typer.Option(help="Requests per second (open loop)")] = 50.0,
    duration: Annotated[float, typer.Option(help="Seconds")] = 30.0,
    url: Annotated[str | None, typer.Option(help="Recommend endpoint (default: local service)")] = None,
    interactions: Annotated[
        Path | None, typer.Option(help="Draw users from this file (default: .mlsd/data/interactions.parquet)")
    ] = None,
    k: Annotated[int, typer.Option(help="Items per request")] = 10,
    cold_share: Annotated[float, typer.Option(help="Share of requests for never-seen users")] = 0.1,
    out_dir: Annotated[Path, typer.Option(help="Where the JSON and the histogram go")] = Path(".mlsd/reports/loadtest"),
) -> None:
    """Open-loop load against the recommendation service: throughput, p50/p95/p99, errors, latency histogram."""
    from pipelines.recsys.loadgen import recommend_payloads

    s = settings()
    target = url or f"http://127.0.0.1:{s.recsys_service_port}/recommend"
    payloads = recommend_payloads(s, interactions, k=k, cold_share=cold_share)
    drive_service("recsys", target, "`mlsd recsys serve`", payloads, rps, duration, out_dir)


def drive_service(
    design: str, target: str, start_hint: str, payloads: list[dict], rps: float, duration: float, out_dir: Path
) -> None:
    """Wait for the service, run the open-loop load, print the summary, write JSON and a latency histogram."""
    from rich.progress import Progress

    from pipelines.platform.infra import wait_for_http
    from pipelines.platform.loadtest import run_load_test, save_latency_histogram, write_json

    wait_for_http(target.rsplit("/", 1)[0] + "/readyz", 90, f"The {design} service (start it with {start_hint})")
    with Progress(console=console) as progress:
        task = progress.add_task(f"{rps:.0f} req/s for {duration:.0f} s", total=int(rps * duration))
        result = run_load_test(
            target,
            lambda i: payloads[i % len(payloads)],
            rps,
            duration,
            progress=lambda done, total: progress.update(task, completed=done),
        )
    print_json_or_table(result.summary_rows(), f"load test {target}")
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{design}_{int(rps)}rps"
    write_json(result, out_dir / f"{name}.json")
    plot = save_latency_histogram(result, out_dir / f"{name}.png", f"{design} {target} at {rps:.0f} req/s")
    console.print(f"wrote {out_dir / f'{name}.json'} and {plot}")


# ---------------------------------------------------------------- monitor


@app.command("monitor")
def monitor(
    design: Annotated[Literal["fraud", "recsys"], typer.Option(help="Which design's prediction log")] = "fraud",
    window_size: Annotated[
        int | None, typer.Option(help="Served predictions per window (default MLSD_MONITOR_WINDOW_SIZE)")
    ] = None,
    max_windows: Annotated[
        int | None, typer.Option(help="Stop after this many windows, once their labels have matured")
    ] = None,
    idle_timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds without records")] = None,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning/--latest", help="Read the whole log, or only new records")
    ] = True,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus gauges on this port")] = None,
    json_out: Annotated[Path | None, typer.Option(help="Write every window's results here")] = None,
) -> None:
    """Watch `<design>.predictions`: drift, data quality and delayed-label performance per window; alerts on Kafka."""
    from pipelines.monitoring.monitor import run_monitor, window_rows

    s = settings()
    if window_size is not None and window_size < 2:
        fail(f"--window-size must be at least 2 records, got {window_size}.")
    reports = s.reports_dir / "monitoring" / design
    console.print(f"monitoring {design}.predictions; reports in {reports}; Ctrl-C stops it")

    def closed(result):  # type: ignore[no-untyped-def]
        alerts = ", ".join(dict.fromkeys(result.kinds)) or "none"
        console.print(f"window {result.window}: {result.rows:,} records, alerts: {alerts}", markup=False)

    def matured(result):  # type: ignore[no-untyped-def]
        figures = ", ".join(f"{k} {v:.3g}" for k, v in (result.performance or {}).items() if isinstance(v, float))
        console.print(f"window {result.window} labels matured: {figures}", markup=False)

    run = run_monitor(s, design, window_size, max_windows, idle_timeout, from_beginning, metrics_port, closed, matured)
    rows = window_rows(run)
    table = Table(title=f"{design} monitor: {len(rows)} windows from {run.served_records:,} served records")
    for column in rows[0] if rows else ["window"]:
        table.add_column(column)
    for row in rows:
        table.add_row(*[str(v) for v in row.values()])
    console.print(table)
    console.print(
        f"{run.alerts_published} alert(s) published on monitoring.alerts; {run.shadow_records:,} shadow records "
        f"kept out of drift; windows awaiting labels: {run.pending or 'none'}; summary in {reports}/summary.jsonl"
    )
    write_json_out(json_out, run.to_dict())


@app.command("retrain")
def retrain(
    design: Annotated[Literal["fraud", "recsys"], typer.Option(help="Which design's alerts to act on")] = "fraud",
    history: Annotated[
        Path | None,
        typer.Option(help="Data the stream does not hold: transactions (fraud) or interactions (recsys) file"),
    ] = None,
    items: Annotated[Path | None, typer.Option(help="recsys: item file (item_id, category)")] = None,
    once: Annotated[bool, typer.Option(help="Stop after the first retrain's promote/reject decision")] = False,
    idle_timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds without alerts")] = None,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning/--latest", help="Replay every alert on the topic, or only new ones")
    ] = False,
    json_out: Annotated[Path | None, typer.Option(help="Write every handled alert and retrain here")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus metrics on this port")] = None,
) -> None:
    """Retraining loop: alerts on monitoring.alerts → one retrain per incident → challenger → gate → decision."""
    from pipelines.monitoring.gate import read_gate_data
    from pipelines.monitoring.retrain import run_retrain_loop

    s = settings()
    frame = read_gate_data(s, design, history) if history else None
    item_frame = None
    if items is not None:
        from pipelines.recsys.data import read_items

        item_frame = read_items(items)

    def handled(h):  # type: ignore[no-untyped-def]
        alert = h.alert
        console.print(f"{alert['kind']} window {alert['window']}: {h.verdict} — {h.reason}", markup=False)
        if h.result is not None:
            r = h.result
            verdict = "promoted" if r.promoted else ("failed" if r.failed else "rejected")
            console.print(
                f"incident {r.incident}: challenger v{r.challenger_version} {verdict} "
                f"({r.seconds.get('total', 0):.0f} s; {r.incident_to_decision_s:.0f} s from alert to decision): "
                f"{r.decision}",
                markup=False,
            )

    console.print(f"following monitoring.alerts for {design}; Ctrl-C stops it")
    run = run_retrain_loop(
        s, design, frame, item_frame, once, idle_timeout, from_beginning, on_handled=handled, metrics_port=metrics_port
    )
    counts = run.counts()
    console.print(
        f"{counts['retrain']} retrain(s), {counts['join']} alert(s) joined an open incident, "
        f"{counts['ignore']} ignored; audit: mlsd registry history --model {design}"
    )
    write_json_out(json_out, run.to_dict())


@app.command("drift-test")
def drift_test(
    scenario: Annotated[
        str,
        typer.Option(
            help="control | covariate-shift | new-fraud-pattern | prior-shift | schema-break | stale-features | all"
        ),
    ] = "covariate-shift",
    window_size: Annotated[int, typer.Option(help="Served predictions per monitor window")] = 5000,
    customers: Annotated[int, typer.Option(help="Customers in the simulated world")] = 5000,
    history_days: Annotated[int, typer.Option(help="Days of history the world's champion is trained on")] = 52,
    seed: Annotated[int | None, typer.Option(help="World seed (default MLSD_SEED)")] = None,
    retrain: Annotated[bool, typer.Option(help="Let the retraining loop act on the alerts")] = True,
) -> None:
    """Inject a known change into the fraud stream; report when the monitor caught it and what retraining did."""
    from pipelines.monitoring.scenarios import SCENARIOS, WorldConfig, run_scenario

    s = settings()
    names = list(SCENARIOS) if scenario == "all" else [scenario]
    if names[0] not in SCENARIOS:
        fail(f"Unknown scenario '{scenario}'; choose one of {', '.join(SCENARIOS)} or all.")
    if window_size < 100:
        fail(f"--window-size must be at least 100 predictions, got {window_size}.")
    world = WorldConfig(seed=s.seed if seed is None else seed, customers=customers, history_days=history_days)
    table = Table(title=f"drift tests (windows of {window_size:,} predictions)")
    for column in ("scenario", "detected", "windows", "predictions", "false alarms", "retraining", "seconds"):
        table.add_column(column)
    for name in names:
        console.rule(name)
        with console.status(name) as spinner:
            result = run_scenario(s, name, world, window_size, retrain, progress=lambda m: spinner.update(m))
        d = result["detection"]
        console.print(result["summary"], markup=False)
        retrains = result["retraining"]["retrains"]
        table.add_row(
            name,
            "-" if not result["expected_alerts"] else (d["kind"] if d["detected"] else "NO"),
            str(d["delay_windows"] or "-"),
            f"{d['delay_events']:,}" if d["delay_events"] is not None else "-",
            str(len(d["false_alarm_windows"])),
            "; ".join(
                "failed" if r["failed"] else f"v{r['challenger_version']} {'promoted' if r['promoted'] else 'rejected'}"
                for r in retrains
            )
            or "none",
            f"{sum(result['seconds'].values()):.0f}",
        )
        console.print(f"JSON: {result['json']}  plot: {result['plot']}", markup=False)
    console.print(table)


# ---------------------------------------------------------------- infra roles


@infra_app.command("mlflow-server")
def infra_mlflow_server(host: Annotated[str, typer.Option(help="Interface")] = "0.0.0.0") -> None:
    """Run the MLflow tracking server in the foreground with the configured backend store and artifacts."""
    from pipelines.platform.infra import MLFLOW_SERVER_ENV, mlflow_server_command

    command = mlflow_server_command(settings(), host)
    for key, value in MLFLOW_SERVER_ENV.items():
        os.environ.setdefault(key, value)
    os.execvp(command[0], command)


@infra_app.command("create-topics")
def infra_create_topics() -> None:
    """Create every design's Kafka topics (idempotent)."""
    from pipelines.platform.infra import all_topics
    from pipelines.platform.stream import ensure_topics

    created = ensure_topics(settings(), all_topics())
    console.print(f"created: {', '.join(created) if created else 'all topics existed'}")


@infra_app.command("feast-apply")
def infra_feast_apply() -> None:
    """Register the Feast entities, sources, feature views and feature services."""
    from pipelines.platform.features import apply_feature_definitions

    apply_feature_definitions(settings())
    console.print("Feast definitions applied")


def write_json_out(path: Path | None, payload: Any) -> None:
    """`--json-out`: the command's results as JSON, when asked for."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=str))


def fail(message: str) -> None:
    """Print one plain sentence on stderr (no markup parsing of user data) and exit 1."""
    from rich.markup import escape

    error_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise SystemExit(1)


def main() -> None:
    """Entry point: run the app and turn errors a user can cause into one sentence."""
    import warnings

    from pydantic import ValidationError

    from pipelines.platform.dataio import DataFileError
    from pipelines.platform.infra import PortInUse
    from pipelines.platform.stream import ServiceUnavailable

    # Libraries re-enable their deprecation warnings on import; a command's output is for its user, so drop them.
    show = warnings.showwarning

    def quiet(message, category, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not issubclass(category, (DeprecationWarning, FutureWarning, UserWarning)):
            show(message, category, *args, **kwargs)

    warnings.showwarning = quiet
    # MLflow prints run links and export chatter at INFO; the commands print their own summaries.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    try:
        app(standalone_mode=True)  # click prints usage errors itself (exit 2)
    except (DataFileError, ServiceUnavailable, PortInUse, FileNotFoundError) as exc:
        fail(str(exc))
    except ValidationError as exc:
        first = exc.errors()[0]
        name = "MLSD_" + ".".join(str(p) for p in first.get("loc", ())).upper()
        reason = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        fail(f"{name}={first.get('input')!r} is not valid: {reason.rstrip('.')}.")
    except ValueError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        raise SystemExit(130) from None
