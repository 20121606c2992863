"""The fraud part of `mlsd demo`, on the running embedded stack.

simulate → split (history / the last days live) → train four imbalance strategies, register the champion →
stream processor (warmed with the history) and scoring service → warm-up → the live days replayed to Kafka while
open-loop traffic hits /score → decisions read back from `fraud.predictions` → summary table and report section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

    from pipelines.settings import Settings


@dataclass(frozen=True)
class FraudDemoOptions:
    transactions: int = 300_000  # simulated transactions
    live_days: int = 2  # last days of the simulation that arrive live through Kafka
    rps: float = 200.0  # live scoring traffic, requests per second
    duration: float = 20.0  # seconds of live scoring traffic


def run_fraud_demo(settings: Settings, console: Console, options: FraudDemoOptions) -> dict[str, Any]:
    import json
    import time

    from pipelines.fraud.cli import print_strategy_table
    from pipelines.fraud.events import PREDICTIONS_TOPIC
    from pipelines.fraud.loadgen import payloads_from_frame
    from pipelines.fraud.simulate import config_for_size, fraud_summary, simulate_transactions
    from pipelines.fraud.train import train_fraud
    from pipelines.platform.dataio import split_history_live, write_table
    from pipelines.platform.live import LivePlan, LiveRun
    from pipelines.platform.loadtest import save_latency_histogram
    from pipelines.platform.report import progress_bar, served_predictions

    report_dir = settings.reports_dir / "fraud"
    report_dir.mkdir(parents=True, exist_ok=True)
    with console.status(f"simulating about {options.transactions:,} transactions"):
        frame = simulate_transactions(
            config_for_size(options.transactions, seed=settings.seed, label_delay_days=settings.fraud_label_delay_days)
        )
    history, live = split_history_live(frame, options.live_days)
    data_dir = settings.data_dir
    write_table(history, data_dir / "history.parquet")
    write_table(live, data_dir / "live.parquet")
    console.print(
        f"simulated {len(frame):,} transactions ({frame['is_fraud'].mean():.2%} fraud): "
        f"{len(history):,} history, {len(live):,} live over the last {options.live_days} days"
    )
    console.print(fraud_summary(frame).to_string())

    with console.status("training") as spinner:
        report = train_fraud(settings, history, progress=lambda m: spinner.update(f"training: {m}"))
    print_strategy_table(report)

    stream_json = report_dir / "stream.json"
    stream_json.unlink(missing_ok=True)
    plan = LivePlan(
        design="fraud",
        stream_args=["fraud", "stream", "--history", str(data_dir / "history.parquet")]
        + ["--group", f"fraud-features-demo-{int(time.time())}", "--json-out", str(stream_json)],
        serve_args=["fraud", "serve"],
        replay_args=["fraud", "replay", "--transactions", str(data_dir / "live.parquet")],
        port=settings.fraud_service_port,
        endpoint="/score",
    )
    payloads = payloads_from_frame(live)
    with LiveRun(settings, plan) as run:
        with console.status("starting the stream processor and the scoring service"):
            run.start()
        console.print(f"[green]scoring service ready[/green] at {plan.base_url} (OpenAPI docs at {plan.base_url}/docs)")
        with console.status("warming up the scoring service"):
            run.load(payloads[::-1], 50, 4)
        run.start_replay(max(len(live) / max(options.duration, 1.0), 200.0))
        with progress_bar(console) as progress:
            task = progress.add_task(f"live traffic {options.rps:.0f} req/s", total=int(options.rps * options.duration))
            load = run.load(
                payloads,
                options.rps,
                options.duration,
                progress=lambda done, _total: progress.update(task, completed=done),
            )
        run.drain()
    histogram = save_latency_histogram(load, report_dir / "live_latency.png", f"/score at {options.rps:.0f} req/s")
    decisions = served_predictions(settings, PREDICTIONS_TOPIC)
    summary = {
        "transactions": len(frame),
        "fraud_share": float(frame["is_fraud"].mean()),
        "train": report.to_dict(),
        "live": {"rps": options.rps, "duration_s": options.duration, **load.to_dict()},
        "replay": {"events": len(live) + int(live["is_fraud"].sum())},
        "stream": json.loads(stream_json.read_text()) if stream_json.exists() else {},
        "decisions": decisions["decision"].value_counts().to_dict() if not decisions.empty else {},
        "plots": [report.plots["pr_curves"], report.plots["cost_curve"], str(histogram)],
    }
    (report_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print_fraud_summary(console, summary)
    return summary


def print_fraud_summary(console: Console, summary: dict[str, Any]) -> None:
    from pipelines.platform.report import facts_table

    train, live, stream = summary["train"], summary["live"], summary.get("stream", {})
    rows = [
        (
            "best strategy",
            f"{train['best_strategy']} (AP {max(s['average_precision'] for s in train['strategies']):.3f})",
        ),
        ("threshold (cost-optimal)", f"{train['threshold']:.3f}"),
        ("live latency p50 / p99", f"{live['p50_ms']:.1f} ms / {live['p99_ms']:.1f} ms at {live['rps']:.0f} req/s"),
        ("live requests ok / errors", f"{live['ok']:,} / {live['errors']:,}"),
        ("decisions on fraud.predictions", ", ".join(f"{k} {v:,}" for k, v in sorted(summary["decisions"].items()))),
    ]
    if stream:
        fresh = stream.get("freshness_ms", {})
        rows.append(
            (
                "stream processor",
                f"{stream.get('transactions', 0):,} tx, {stream.get('labels', 0):,} labels, "
                f"{stream.get('dead_lettered', 0)} dead-lettered; "
                f"freshness p99 {fresh.get('p99', float('nan')):.0f} ms",
            )
        )
    console.print(facts_table("mlsd fraud demo — summary", rows))


def fraud_report_section(summary: dict[str, Any]) -> str:
    """The report's fraud section: strategies, live scoring, the stream processor, the plots."""
    import html
    import json
    from pathlib import Path

    from pipelines.platform.report import image

    train = summary["train"]
    rows = "".join(
        f"<tr><td>{html.escape(s['strategy'])}</td><td>{s['average_precision']:.3f}</td><td>{s['roc_auc']:.3f}</td>"
        f"<td>{s['precision']:.3f}</td><td>{s['recall']:.3f}</td><td>{s['card_precision_at_100']:.3f}</td>"
        f"<td>{s['threshold']:.3f}</td><td>{s['cost']:,.0f}</td></tr>"
        for s in train["strategies"]
    )
    live = summary["live"]
    return f"""<h1>Fraud detection</h1>
<p>{summary["transactions"]:,} simulated transactions, {summary["fraud_share"]:.2%} fraud. Best strategy
<b>{html.escape(train["best_strategy"])}</b>, registered as v{html.escape(str(train["model_version"]))}
(champion), decision threshold {train["threshold"]:.3f}.</p>
<h2>Imbalance strategies (time-ordered validation)</h2>
<table><tr><th>strategy</th><th>avg precision</th><th>ROC-AUC</th><th>precision</th><th>recall</th>
<th>card P@100</th><th>threshold</th><th>cost</th></tr>{rows}</table>
<h2>Live scoring</h2>
<p>{live["rps"]:.0f} req/s for {live["duration_s"]:.0f} s: p50 {live["p50_ms"]:.1f} ms, p95 {live["p95_ms"]:.1f} ms,
p99 {live["p99_ms"]:.1f} ms, {live["errors"]} errors. Decisions: {html.escape(json.dumps(summary["decisions"]))}.</p>
<h2>Stream processor</h2><pre>{html.escape(json.dumps(summary.get("stream", {}), indent=2))}</pre>
<h2>Plots</h2>{"".join(image(Path(p)) for p in summary["plots"] if Path(p).exists())}
"""
