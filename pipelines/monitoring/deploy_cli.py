"""`mlsd deploy ...`: shadow and canary reports read from a design's prediction log on Kafka.

Both commands read `<design>.predictions` (and, for the canary, `fraud.labels`) from the beginning without a
consumer group, so they commit nothing and can run at any time next to the services.
"""

from __future__ import annotations

import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pipelines.platform.stream import read_topic
from pipelines.settings import Settings

deploy_app = typer.Typer(
    help="Deployment reports from the prediction log: shadow agreement, canary outcomes on delayed labels.",
    no_args_is_help=True,
)
console = Console(width=None if sys.stdout.isatty() else 150)

Design = Annotated[str, typer.Option(help="Which design's prediction log: fraud | recsys")]
JsonOut = Annotated[Path | None, typer.Option(help="Also write the report as JSON to this file")]


def predictions_topic(design: str) -> str:
    from pipelines.platform.predictions import PREDICTION_TOPICS

    if design not in PREDICTION_TOPICS:
        raise ValueError(f"Unknown design '{design}'; use one of: {', '.join(PREDICTION_TOPICS)}.")
    return PREDICTION_TOPICS[design]


def write_report(report: dict[str, Any], json_out: Path | None) -> None:
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2, default=str))
        console.print(f"wrote {json_out}")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _interval(interval: tuple[float, float] | None, percent: bool = True) -> str:
    if interval is None:
        return "-"
    low, high = interval
    return f"{low:.1%} – {high:.1%}" if percent else f"{low:.3f} – {high:.3f}"


@deploy_app.command("shadow-report")
def shadow_report_command(
    design: Design = "fraud",
    max_records: Annotated[int | None, typer.Option(help="Read at most this many records from the start")] = None,
    json_out: JsonOut = None,
) -> None:
    """Served vs shadow predictions of the same requests: agreement, score differences, latency per model."""
    from pipelines.monitoring.deployment_report import shadow_report
    from pipelines.platform.predictions import PredictionRecord

    topic = predictions_topic(design)
    records, invalid = read_topic(Settings(), topic, PredictionRecord, max_records)
    if not records:
        raise ValueError(
            f"No prediction records on {topic} yet; serve the {design} model (MLSD_SERVING_MODE=shadow to get "
            f"shadow predictions) and send it traffic, e.g. `mlsd loadtest {design}`."
        )
    report = {"topic": topic, "invalid_records": invalid, **shadow_report(records)}
    table = Table(title=f"shadow report — {topic}", show_header=False)
    table.add_row(
        "records (served / shadow / paired)", f"{report['served']:,} / {report['shadow']:,} / {report['pairs']:,}"
    )
    if report["pairs"]:
        diff = report["score_abs_diff"]
        table.add_row("same decision", _pct(report["agreement"]))
        table.add_row("|score diff| mean / p50 / p95", f"{diff['mean']:.4f} / {diff['p50']:.4f} / {diff['p95']:.4f}")
        corr = report["score_correlation"]
        table.add_row("score correlation", "-" if corr is None else f"{corr:.3f}")
        table.add_row(
            "declines served / shadow",
            f"{report['declines']['served_declines']:,} / {report['declines']['shadow_declines']:,}",
        )
    for model, latency in report["latency_ms"].items():
        table.add_row(
            f"latency {model} p50 / p99", f"{latency['p50']:.2f} / {latency['p99']:.2f} ms ({latency['count']:,})"
        )
    console.print(table)
    console.print(report["verdict"])
    write_report(report, json_out)


@deploy_app.command("canary-report")
def canary_report_command(
    design: Design = "fraud",
    all_predictions: Annotated[
        bool, typer.Option(help="Also count transactions younger than the label delay (their fraud may be unknown)")
    ] = False,
    json_out: JsonOut = None,
) -> None:
    """Per-variant outcomes on delayed labels (catch rate, decline precision, AP) with 95 % intervals and a verdict."""
    from pipelines.fraud.events import LABELS_TOPIC, LabelEvent
    from pipelines.monitoring.deployment_report import canary_report
    from pipelines.platform.predictions import PredictionRecord

    topic = predictions_topic(design)
    if design != "fraud":
        raise ValueError(f"The canary report knows the {design} design's outcomes not yet; use --design fraud.")
    settings = Settings()
    records, invalid = read_topic(settings, topic, PredictionRecord)
    if not records:
        raise ValueError(
            f"No prediction records on {topic} yet; serve with MLSD_SERVING_MODE=canary and send traffic first."
        )
    labels, _ = read_topic(settings, LABELS_TOPIC, LabelEvent)
    mature_before = None
    if not all_predictions:
        if not labels:
            raise ValueError(
                f"No labels on {LABELS_TOPIC} yet, so no prediction's outcome is known; replay chargebacks "
                "(`mlsd fraud replay`) or pass --all-predictions to count every transaction without one as genuine."
            )
        # The label stream's own clock: a transaction older than the newest chargeback minus the delay is settled.
        mature_before = max(label.label_timestamp for label in labels) - timedelta(days=settings.fraud_label_delay_days)
    report = {
        "topic": topic,
        "invalid_records": invalid,
        **canary_report(records, labels, mature_before, seed=settings.seed),
    }
    table = Table(title=f"canary report — {topic}")
    for column in ("", "champion", "challenger"):
        table.add_column(column)
    variants = report["variants"]

    def row(name: str, render: Any) -> None:
        table.add_row(name, *(render(variants[v]) for v in ("champion", "challenger")))

    row("versions", lambda o: ", ".join(f"v{k} ({n:,})" for k, n in sorted(o["versions"].items())) or "-")
    row("labelled predictions / frauds", lambda o: f"{o['predictions']:,} / {o['frauds']:,}")
    row("catch rate [95 % CI]", lambda o: f"{_pct(o['catch_rate'])} [{_interval(o['catch_rate_ci'])}]")
    row(
        "decline precision [95 % CI]",
        lambda o: f"{_pct(o['decline_precision'])} [{_interval(o['decline_precision_ci'])}]",
    )
    row(
        "average precision [95 % CI]",
        lambda o: (
            "-"
            if o["average_precision"] is None
            else f"{o['average_precision']:.3f} [{_interval(o['average_precision_ci'], percent=False)}]"
        ),
    )
    console.print(table)
    console.print(report["verdict"])
    write_report(report, json_out)
