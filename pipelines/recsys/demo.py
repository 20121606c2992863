"""The recommendation part of `mlsd demo`, on the stack the fraud part started.

simulate → offline evaluation (pipeline vs popularity vs each generator) → train and register the champion →
stream processor warmed with the history (it seeds the online store) → service started → the last day replayed
to Kafka while open-loop traffic asks for recommendations → summary table with per-stage latency.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from pipelines.settings import Settings

STAGES = ("candidates", "features", "ranking", "reranking", "total")


def stage_latency(url: str, payloads: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """p50/p99 of each stage as the service reports it, over sequential requests (no queueing in the numbers)."""
    import numpy as np

    seen: dict[str, list[float]] = {stage: [] for stage in STAGES}
    for body in payloads:
        request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as response:
            reported = json.loads(response.read())["latency_ms"]
        for stage in STAGES:
            seen[stage].append(float(reported[stage]))
    return {
        stage: {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}
        for stage, values in seen.items()
        if values
    }


@dataclass(frozen=True)
class RecsysDemoOptions:
    interactions: int = 150_000  # simulated interactions
    rps: float = 50.0  # live recommendation traffic, requests per second
    duration: float = 20.0  # seconds of live traffic while the last day streams in


def run_recsys_demo(settings: Settings, console: Console, options: RecsysDemoOptions) -> dict[str, Any]:
    """Assumes the embedded stack is up; stops every process it starts."""
    from pipelines.platform.dataio import split_history_live, write_table
    from pipelines.platform.loadtest import save_latency_histogram
    from pipelines.recsys.evaluate import EvaluateConfig, evaluate_pipeline, ranker_trainer
    from pipelines.recsys.simulate import config_for_size, simulate_interactions
    from pipelines.recsys.train import train_recsys

    report_dir = settings.reports_dir / "recsys"
    report_dir.mkdir(parents=True, exist_ok=True)
    with console.status(f"simulating about {options.interactions:,} interactions"):
        interactions, items = simulate_interactions(config_for_size(options.interactions, seed=settings.seed))
    history, live = split_history_live(interactions, 1)
    data_dir = settings.data_dir
    write_table(history, data_dir / "interactions.parquet")
    write_table(live, data_dir / "interactions_live.parquet")
    write_table(items, data_dir / "items.parquet")
    console.print(
        f"simulated {len(interactions):,} interactions by {interactions['user_id'].nunique():,} users on "
        f"{interactions['item_id'].nunique():,} items: {len(history):,} history, {len(live):,} live (last day)"
    )

    config = EvaluateConfig(split="temporal", test_frac=0.2, k=10, seed=settings.seed, max_users=3_000)
    with console.status("offline evaluation (temporal split)") as spinner:
        evaluation = evaluate_pipeline(
            history, items, config, fit_ranker=ranker_trainer(settings.seed), progress=spinner.update
        )
    with console.status("training the candidate generators and the ranker on the whole history"):
        trained = train_recsys(settings, history, items)
    console.print(
        f"registered recsys-ranker v{trained.model_version} as champion in {trained.seconds['total']:.0f} s "
        f"({trained.training_rows:,} ranker rows)"
    )

    load, stages, stream = run_live(settings, console, options, history, len(live))
    histogram = save_latency_histogram(load, report_dir / "live_latency.png", f"/recommend at {options.rps:.0f} req/s")

    summary = {
        "interactions": len(interactions),
        "items": int(interactions["item_id"].nunique()),
        "evaluation": evaluation,
        "train": {"model_version": trained.model_version, "seconds": trained.seconds, "rows": trained.training_rows},
        "live": {"rps": options.rps, "duration_s": options.duration, **load.to_dict()},
        "stages_ms": stages,
        "stream": stream,
        "histogram": str(histogram),
    }
    (report_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print_recsys_summary(console, summary)
    return summary


def run_live(
    settings: Settings, console: Console, options: RecsysDemoOptions, history: Any, live_rows: int
) -> tuple[Any, dict[str, dict[str, float]], dict[str, Any]]:
    """Stream processor seeded with the history, service, warm-up, per-stage latency, then the last day replayed
    while open-loop traffic asks for recommendations; returns (load result, stage latency, processor figures)."""
    from pipelines.platform.live import LivePlan, LiveRun
    from pipelines.recsys.loadgen import payloads_from_interactions

    data_dir = settings.data_dir
    report_dir = settings.reports_dir / "recsys"
    stream_json = report_dir / "stream.json"
    stream_json.unlink(missing_ok=True)
    plan = LivePlan(
        design="recsys",
        stream_args=["recsys", "stream", "--items", str(data_dir / "items.parquet")]
        + ["--history", str(data_dir / "interactions.parquet")]
        + ["--group", f"recsys-features-demo-{int(time.time())}", "--json-out", str(stream_json)],
        serve_args=["recsys", "serve"],
        replay_args=["recsys", "replay", "--interactions", str(data_dir / "interactions_live.parquet")],
        port=settings.recsys_service_port,
        endpoint="/recommend",
        # The processor seeds the online store with the history's newest rows before it consumes; the service
        # reads the catalogue's item rows when it starts, so it starts after that.
        service_after_stream=True,
        stream_ready_s=300,
    )
    payloads = payloads_from_interactions(history, k=10, limit=20_000, cold_share=0.1, seed=settings.seed)
    with LiveRun(settings, plan) as run:
        with console.status("stream processor: rebuilding its state, seeding the online store; then the service"):
            run.start()
        console.print(
            f"[green]recommendation service ready[/green] at {plan.base_url} (OpenAPI docs at {plan.base_url}/docs)"
        )
        run.load(payloads[::-1], 20, 3)  # warm-up
        stages = stage_latency(plan.url, payloads[:200])
        run.start_replay(max(live_rows / max(options.duration, 1.0), 200.0))
        with console.status(
            f"live traffic {options.rps:.0f} req/s for {options.duration:.0f} s while the last day streams in"
        ):
            load = run.load(payloads, options.rps, options.duration)
        run.drain()
    return load, stages, json.loads(stream_json.read_text()) if stream_json.exists() else {}


def print_recsys_summary(console: Console, summary: dict[str, Any]) -> None:
    from rich.table import Table

    evaluation = summary["evaluation"]
    k = evaluation.get("k", 10)
    table = Table(title=f"mlsd recommendation demo — offline evaluation ({evaluation['users_evaluated']:,} users)")
    for column in ("model", f"nDCG@{k}", f"recall@{k}", f"precision@{k}", "coverage", "diversity"):
        table.add_column(column)
    for row in evaluation["rows"]:
        table.add_row(
            row["model"], *(f"{row[key]:.4f}" for key in ("ndcg", "recall", "precision", "coverage", "diversity"))
        )
    console.print(table)
    live, stages, stream = summary["live"], summary["stages_ms"], summary.get("stream", {})
    serving = Table(title="mlsd recommendation demo — serving", show_header=False)
    serving.add_row(
        "live latency p50 / p99", f"{live['p50_ms']:.1f} ms / {live['p99_ms']:.1f} ms at {live['rps']:.0f} req/s"
    )
    serving.add_row("live requests ok / errors", f"{live['ok']:,} / {live['errors']:,}")
    serving.add_row(
        "per stage p50 (sequential)",
        ", ".join(f"{stage} {values['p50_ms']:.1f} ms" for stage, values in stages.items()),
    )
    if stream:
        fresh = stream.get("freshness_ms", {})
        serving.add_row(
            "stream processor",
            f"{stream.get('interactions', 0):,} interactions, {stream.get('dead_lettered', 0)} dead-lettered; "
            f"freshness p99 {fresh.get('p99', float('nan')):.0f} ms",
        )
    console.print(serving)


def recsys_report_section(summary: dict[str, Any]) -> str:
    """The HTML block the demo report adds for this design."""
    import html

    from pipelines.platform.report import image

    rows = "".join(
        f"<tr><td>{html.escape(row['model'])}</td><td>{row['ndcg']:.4f}</td><td>{row['recall']:.4f}</td>"
        f"<td>{row['coverage']:.3f}</td><td>{row['diversity']:.3f}</td></tr>"
        for row in summary["evaluation"]["rows"]
    )
    live = summary["live"]
    stages = ", ".join(f"{name} {v['p50_ms']:.1f} ms" for name, v in summary["stages_ms"].items())
    return (
        f"<h1>Recommendation</h1><p>{summary['interactions']:,} simulated interactions on {summary['items']:,} "
        f"items.</p><h2>Offline evaluation (temporal split)</h2><table><tr><th>model</th><th>nDCG@10</th>"
        f"<th>recall@10</th><th>coverage</th><th>diversity</th></tr>{rows}</table><h2>Live /recommend</h2>"
        f"<p>{live['rps']:.0f} req/s for {live['duration_s']:.0f} s: p50 {live['p50_ms']:.1f} ms, p99 "
        f"{live['p99_ms']:.1f} ms, {live['errors']} errors. Per stage (p50): {html.escape(stages)}.</p>"
        f"{image(Path(summary['histogram']))}"
    )
