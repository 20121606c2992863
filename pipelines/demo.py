"""`mlsd demo`: the designs end to end on the embedded stack, with printed summaries and one HTML report.

Fraud: up → simulate → train (four imbalance strategies, champion registered) → stream processor and scoring
service started as processes → the last days replayed live to Kafka while open-loop traffic hits the service →
predictions read back from Kafka → summary. A drift incident follows (pipelines/monitoring/demo.py: shift injected,
monitor, retraining loop, gate), then the recommendation design (pipelines/recsys/demo.py) on the same stack.
Then the report is written and everything started here is stopped.
"""

from __future__ import annotations

import base64
import html
import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pipelines.settings import Settings


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,}"),
        TimeElapsedColumn(),
        console=console,
    )


def read_decisions(settings: Settings) -> pd.DataFrame:
    """The served predictions on `fraud.predictions`, read from the start without a consumer group."""
    from pipelines.platform.predictions import FRAUD_PREDICTIONS_TOPIC, PredictionRecord
    from pipelines.platform.stream import read_topic

    records, _ = read_topic(settings, FRAUD_PREDICTIONS_TOPIC, PredictionRecord)
    return pd.DataFrame([record.model_dump() for record in records if record.served])


def run_demo(
    settings: Settings,
    console: Console,
    n_transactions: int,
    live_days: int,
    rps: float,
    duration: float,
    keep_running: bool,
    interactions: int = 150_000,
    recsys_rps: float = 50.0,
) -> dict[str, Any]:
    from pipelines.fraud.loadgen import payloads_from_frame
    from pipelines.fraud.simulate import config_for_size, fraud_summary, simulate_transactions
    from pipelines.fraud.train import train_fraud
    from pipelines.platform.dataio import split_history_live, write_table
    from pipelines.platform.infra import (
        require_free_port,
        running,
        stack_down,
        stack_up,
        start_process,
        stop_process,
        wait_for_http,
        wait_for_log,
    )
    from pipelines.platform.loadtest import run_load_test, save_latency_histogram

    report_dir = settings.reports_dir / "fraud"
    report_dir.mkdir(parents=True, exist_ok=True)
    require_free_port(settings.fraud_service_port, "the fraud scoring service", "MLSD_FRAUD_SERVICE_PORT")
    with console.status("starting the embedded stack (Kafka broker, MLflow server, Feast registry)"):
        started = stack_up(settings)
    console.print(f"[green]stack up[/green]: Kafka {settings.kafka_bootstrap}, MLflow {settings.tracking_uri}")
    processes: list[str] = []
    summary: dict[str, Any] = {}
    try:
        with console.status(f"simulating about {n_transactions:,} transactions"):
            frame = simulate_transactions(
                config_for_size(n_transactions, seed=settings.seed, label_delay_days=settings.fraud_label_delay_days)
            )
        history, live = split_history_live(frame, live_days)
        data_dir = settings.data_dir
        write_table(history, data_dir / "history.parquet")
        write_table(live, data_dir / "live.parquet")
        console.print(
            f"simulated {len(frame):,} transactions ({frame['is_fraud'].mean():.2%} fraud): "
            f"{len(history):,} history, {len(live):,} live over the last {live_days} days"
        )
        console.print(fraud_summary(frame).to_string())

        with console.status("training") as spinner:
            report = train_fraud(settings, history, progress=lambda m: spinner.update(f"training: {m}"))
        from pipelines.cli import print_strategy_table

        print_strategy_table(report)

        stream_json = report_dir / "stream.json"
        stream_json.unlink(missing_ok=True)
        mlsd = [sys.executable, "-m", "pipelines"]
        stream = start_process(
            settings,
            "fraud-stream",
            [
                *mlsd,
                "fraud",
                "stream",
                "--history",
                str(data_dir / "history.parquet"),
                "--group",
                f"fraud-features-demo-{int(time.time())}",
                "--json-out",
                str(stream_json),
            ],
        )
        processes.append("fraud-stream")
        start_process(settings, "fraud-service", [*mlsd, "fraud", "serve"])
        processes.append("fraud-service")
        service = f"http://127.0.0.1:{settings.fraud_service_port}"
        with console.status("waiting for the scoring service to load the champion"):
            wait_for_http(f"{service}/readyz", 120, "The fraud scoring service", settings.run_dir / "fraud-service.log")
        console.print(f"[green]scoring service ready[/green] at {service} (OpenAPI docs at {service}/docs)")
        with console.status("waiting for the stream processor to rebuild its window state from the history"):
            wait_for_log(stream, "consuming", 180)
        payloads = payloads_from_frame(live)
        with console.status("warming up the scoring service"):
            run_load_test(f"{service}/score", lambda i: payloads[-1 - i % len(payloads)], 50, 4)

        # The live days go to Kafka from their own process, as a payment network would send them.
        replay_rate = max(len(live) / max(duration, 1.0), 200.0)
        start_process(
            settings,
            "fraud-replay",
            [
                *mlsd,
                "fraud",
                "replay",
                "--transactions",
                str(data_dir / "live.parquet"),
                "--rate",
                f"{replay_rate:.0f}",
            ],
        )
        processes.append("fraud-replay")
        with _progress(console) as progress:
            task = progress.add_task(f"live traffic {rps:.0f} req/s", total=int(rps * duration))
            load = run_load_test(
                f"{service}/score",
                lambda i: payloads[i % len(payloads)],
                rps,
                duration,
                progress=lambda done, _total: progress.update(task, completed=done),
            )
        deadline = time.monotonic() + 120
        while running(settings, "fraud-replay") and time.monotonic() < deadline:
            time.sleep(0.5)
        replay_result = {"events": len(live) + int(live["is_fraud"].sum()), "rate": round(replay_rate)}
        time.sleep(2)  # let the processor drain its last micro-batch before it is stopped
        stop_process(settings, "fraud-stream", timeout_s=20)
        processes.remove("fraud-stream")
        histogram = save_latency_histogram(load, report_dir / "live_latency.png", f"/score at {rps:.0f} req/s")
        decisions = read_decisions(settings)
        counts = decisions["decision"].value_counts().to_dict() if not decisions.empty else {}
        stream_stats = json.loads(stream_json.read_text()) if stream_json.exists() else {}

        summary = {
            "transactions": len(frame),
            "fraud_share": float(frame["is_fraud"].mean()),
            "train": report.to_dict(),
            "live": {"rps": rps, "duration_s": duration, **load.to_dict()},
            "replay": replay_result,
            "stream": stream_stats,
            "decisions": counts,
        }
        (report_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        print_summary(console, summary)
        sections = []
        from pipelines.monitoring.demo import incident_report_section, run_incident_demo

        console.rule("monitoring")
        summary["incident"] = run_incident_demo(settings, console)
        sections.append(incident_report_section(summary["incident"]))
        if interactions > 0:
            from pipelines.recsys.demo import recsys_report_section, run_recsys_demo

            console.rule("recommendation")
            summary["recsys"] = run_recsys_demo(settings, console, interactions, recsys_rps, duration)
            sections.append(recsys_report_section(summary["recsys"]))
        html_path = write_html_report(
            settings.reports_dir / "demo.html",
            summary,
            [Path(report.plots["pr_curves"]), Path(report.plots["cost_curve"]), histogram],
            sections,
        )
        console.print(f"report: {html_path}")
        return summary
    finally:
        for name in processes:
            stop_process(settings, name)
        if not keep_running:
            stack_down(settings, [p.name for p in started])


def print_summary(console: Console, summary: dict[str, Any]) -> None:
    train, live, stream = summary["train"], summary["live"], summary.get("stream", {})
    table = Table(title="mlsd fraud demo — summary", show_header=False)
    table.add_row(
        "best strategy", f"{train['best_strategy']} (AP {max(s['average_precision'] for s in train['strategies']):.3f})"
    )
    table.add_row("threshold (cost-optimal)", f"{train['threshold']:.3f}")
    table.add_row(
        "live latency p50 / p99", f"{live['p50_ms']:.1f} ms / {live['p99_ms']:.1f} ms at {live['rps']:.0f} req/s"
    )
    table.add_row("live requests ok / errors", f"{live['ok']:,} / {live['errors']:,}")
    table.add_row(
        "decisions on fraud.predictions", ", ".join(f"{k} {v:,}" for k, v in sorted(summary["decisions"].items()))
    )
    if stream:
        fresh = stream.get("freshness_ms", {})
        table.add_row(
            "stream processor",
            f"{stream.get('transactions', 0):,} tx, {stream.get('labels', 0):,} labels, "
            f"{stream.get('dead_lettered', 0)} dead-lettered; freshness p99 {fresh.get('p99', float('nan')):.0f} ms",
        )
    console.print(table)


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}"><figcaption>{html.escape(path.name)}</figcaption></figure>'


def write_html_report(path: Path, summary: dict[str, Any], plots: list[Path], sections: list[str]) -> Path:
    """One page: the fraud design's tables and plots, then each further design's section."""
    train = summary["train"]
    rows = "".join(
        f"<tr><td>{html.escape(s['strategy'])}</td><td>{s['average_precision']:.3f}</td><td>{s['roc_auc']:.3f}</td>"
        f"<td>{s['precision']:.3f}</td><td>{s['recall']:.3f}</td><td>{s['card_precision_at_100']:.3f}</td>"
        f"<td>{s['threshold']:.3f}</td><td>{s['cost']:,.0f}</td></tr>"
        for s in train["strategies"]
    )
    live = summary["live"]
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>mlsd fraud demo</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}
td,th{{padding:4px 10px;border-bottom:1px solid #ddd}}
img{{max-width:480px}}figure{{display:inline-block;margin:8px}}</style></head><body>
<h1>mlsd — fraud detection demo</h1>
<p>{summary["transactions"]:,} simulated transactions, {summary["fraud_share"]:.2%} fraud. Best strategy
<b>{html.escape(train["best_strategy"])}</b>, registered as fraud-xgboost v{html.escape(str(train["model_version"]))}
(champion), decision threshold {train["threshold"]:.3f}.</p>
<h2>Imbalance strategies (time-ordered validation)</h2>
<table><tr><th>strategy</th><th>avg precision</th><th>ROC-AUC</th><th>precision</th><th>recall</th>
<th>card P@100</th><th>threshold</th><th>cost</th></tr>{rows}</table>
<h2>Live scoring</h2>
<p>{live["rps"]:.0f} req/s for {live["duration_s"]:.0f} s: p50 {live["p50_ms"]:.1f} ms, p95 {live["p95_ms"]:.1f} ms,
p99 {live["p99_ms"]:.1f} ms, {live["errors"]} errors. Decisions: {html.escape(json.dumps(summary["decisions"]))}.</p>
<h2>Stream processor</h2><pre>{html.escape(json.dumps(summary.get("stream", {}), indent=2))}</pre>
<h2>Plots</h2>{"".join(_image(p) for p in plots if p.exists())}
{"".join(sections)}
</body></html>"""
    path.write_text(body)
    return path
