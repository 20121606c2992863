"""`mlsd recsys ...`: the recommendation design's stages as commands — simulate, split, replay, stream, train,
evaluate, serve, loadtest.

Every command builds one Settings from MLSD_* variables (and `.env`) and imports what it needs only once its inputs
are known to be good.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.table import Table

from pipelines.platform.console import console, warn, write_json_out
from pipelines.settings import Settings

app = typer.Typer(
    help="Recommendation: simulate, split, replay, stream, train, evaluate, serve, loadtest.", no_args_is_help=True
)
# The offline evaluation's splits (pipelines/recsys/splits.py SPLIT_METHODS; a test keeps the two equal).
Split = Literal["temporal", "random-by-item", "leave-last-out"]


@app.command("simulate")
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

    s = Settings()
    frame, items = simulate_interactions(config_for_size(interactions, seed=seed if seed is not None else s.seed))
    write_table(frame, out)
    write_table(items, items_out)
    console.print(
        f"wrote {len(frame):,} interactions by {frame['user_id'].nunique():,} users on "
        f"{frame['item_id'].nunique():,} items to {out}, and {len(items):,} items to {items_out}"
    )


@app.command("split")
def recsys_split(
    interactions: Annotated[Path, typer.Option(help="Interactions file (.parquet or .csv)")],
    live_days: Annotated[int, typer.Option(help="Last calendar days that go to the live file")] = 1,
    history_out: Annotated[Path, typer.Option(help="Where the history goes")] = Path(".mlsd/data/interactions.parquet"),
    live_out: Annotated[Path, typer.Option(help="Where the live days go")] = Path(
        ".mlsd/data/interactions_live.parquet"
    ),
) -> None:
    """Split interactions into history (train on it, seed the features with it) and the last days (replay them)."""
    from pipelines.platform.dataio import write_split
    from pipelines.recsys.data import read_interactions

    history, live = write_split(read_interactions(interactions), live_days, history_out, live_out)
    console.print(f"history: {len(history):,} interactions → {history_out}; live: {len(live):,} → {live_out}")


@app.command("replay")
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

    s = Settings()
    frame = read_interactions(interactions)
    catalogue = read_items(items) if items else None
    if limit:
        frame = frame.head(limit)
    ensure_topics(s, TOPICS)
    producer = make_producer(s)
    result = replay_interactions(producer, frame, catalogue, rate)
    producer.close()
    console.print(f"sent {result['events']:,} events in {result['seconds']:.1f} s ({result['rate']:,.0f}/s)")


@app.command("stream")
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
    """Consume interactions and items, update user/item features in Feast online + offline; state checkpointed
    with the offsets (a restart resumes from it; the history is read only on the first start)."""
    from feature_repo.recsys import ITEM_VIEW, USER_VIEW, recsys_feature_objects
    from pipelines.platform.features import apply_feature_definitions, write_feature_rows
    from pipelines.platform.processor import run_feature_processor
    from pipelines.platform.state import StateStore, state_url
    from pipelines.platform.stream import ensure_topics, percentile_summary
    from pipelines.recsys.data import read_interactions, read_items
    from pipelines.recsys.events import TOPICS
    from pipelines.recsys.features import backfill_features, engine_for_catalogue
    from pipelines.recsys.stream import SCHEMAS, RecsysFeatureSink, seed_state

    s = Settings()
    catalogue = read_items(items) if items else None
    past = read_interactions(history) if history else None  # a bad file fails before anything starts
    store = apply_feature_definitions(s, [recsys_feature_objects])
    state = StateStore(state_url(s), group)
    if state.has_state():  # the checkpoint is newer than any history file
        past = None
        if history:
            console.print(f"resuming from the checkpoint; did not use the history in {history}")
    if past is not None:
        warm = engine_for_catalogue(catalogue)
        users, item_rows = backfill_features(past, engine=warm)
        if seed_state(state, warm):
            # The history's newest rows go online too, so the service knows every user and item from the start.
            pairs = [(USER_VIEW, "user_id", users), (ITEM_VIEW, "item_id", item_rows)]
            online, _ = write_feature_rows(s, store, pairs)
            console.print(f"seeded the state and the online store ({online:,} rows) with the history in {history}")
        else:
            console.print(f"resuming from the checkpoint; did not use the history in {history}")
    ensure_topics(s, TOPICS)  # one partition each (see RecsysFeatureSink)
    sink = RecsysFeatureSink(s, store, engine_for_catalogue(catalogue))
    run_feature_processor(
        s,
        "recsys",
        SCHEMAS,
        lambda _producer: sink,
        group,
        idle_stop,
        None,
        json_out,
        lambda: {
            "interactions": sink.stats.interactions,
            "items": sink.stats.items,
            "duplicates": sink.stats.duplicates,
            "freshness_ms": percentile_summary(sink.stats.freshness_ms),
        },
        metrics_port,
        store=state,
    )


@app.command("train")
def recsys_train(
    interactions: Annotated[Path, typer.Option(help="Interactions file (.parquet or .csv)")],
    items: Annotated[Path | None, typer.Option(help="Items file (categories, creation times, prices)")] = None,
    alias: Annotated[
        Literal["champion", "challenger"], typer.Option(help="challenger: leave it to `mlsd registry promote`")
    ] = "champion",
) -> None:
    """Train candidates + XGBoost ranker on all interactions; register `recsys-ranker@champion` in MLflow."""
    from pipelines.recsys.data import read_interactions, read_items

    s = Settings()
    frame = read_interactions(interactions)
    catalogue = read_items(items) if items else None
    from pipelines.recsys.model import MODEL_NAME
    from pipelines.recsys.train import train_recsys

    with console.status("training the candidate generators and the ranker"):
        report = train_recsys(s, frame, catalogue, alias=alias)
    console.print(
        f"registered {MODEL_NAME} v{report.model_version} as {report.alias}: {report.interactions:,} interactions, "
        f"{report.training_rows:,} ranker rows, {report.seconds['total']:.1f} s"
    )


@app.command("serve")
def recsys_serve(
    port: Annotated[int | None, typer.Option(help="Port (default MLSD_RECSYS_SERVICE_PORT)")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on")] = "127.0.0.1",
) -> None:
    """Serve `recsys-ranker@champion` with BentoML: POST /recommend, /model, /readyz, /livez, OpenAPI at /docs."""
    from pipelines.platform.infra import require_free_port
    from pipelines.platform.registry import check_servable
    from pipelines.platform.serving import exec_service
    from pipelines.recsys.model import MODEL_NAME, TRAIN_HINT

    s = Settings()
    port = port or s.recsys_service_port
    require_free_port(port, "the recommendation service", "MLSD_RECSYS_SERVICE_PORT")
    # Fail here, in one sentence, rather than inside a worker; a registry that is down only delays the champion.
    if warning := check_servable(s, MODEL_NAME, TRAIN_HINT):
        warn(warning)
    exec_service("services.recsys.service:RecommendService", host, port)


@app.command("evaluate")
def recsys_evaluate(
    interactions: Annotated[Path, typer.Option(help="Interactions file (.parquet or .csv)")],
    items: Annotated[Path | None, typer.Option(help="Items file (categories, creation times)")] = None,
    split: Annotated[Split, typer.Option(help="How the interactions are held out")] = "temporal",
    test_frac: Annotated[float, typer.Option(help="Share of interactions held out")] = 0.2,
    k: Annotated[int, typer.Option(help="List length evaluated")] = 10,
    seed: Annotated[int, typer.Option(help="Seed for the split and the models")] = 7,
    max_users: Annotated[int, typer.Option(help="Evaluate at most this many users (seeded sample)")] = 20_000,
    json_out: Annotated[Path | None, typer.Option(help="Write both tables here")] = None,
) -> None:
    """Pipeline vs popularity vs each candidate generator: precision, recall, nDCG, MAP, coverage, diversity."""
    from pipelines.recsys.data import read_interactions, read_items

    frame = read_interactions(interactions)
    catalogue = read_items(items) if items else None
    from pipelines.recsys.evaluate import EvaluateConfig, evaluate_pipeline, ranker_trainer

    config = EvaluateConfig(split=split, test_frac=test_frac, k=k, seed=seed, max_users=max_users)
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


@app.command("loadtest")
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
    from pipelines.platform.loadtest import drive_service
    from pipelines.recsys.loadgen import recommend_payloads

    s = Settings()
    target = url or f"http://127.0.0.1:{s.recsys_service_port}/recommend"
    payloads = recommend_payloads(s, interactions, k=k, cold_share=cold_share)
    drive_service("recsys", target, "`mlsd recsys serve`", payloads, rps, duration, out_dir)
