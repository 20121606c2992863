"""`mlsd deploy ...`: shadow and canary reports read from a design's prediction log on Kafka.

Both commands read `<design>.predictions` (and, for the canary, `fraud.labels` or `recsys.interactions`) from the
beginning without a consumer group, so they commit nothing and can run at any time next to the services.
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
        if "lists" in report:  # recommendations
            table.add_row("same first item", _pct(report["lists"]["same_first_item"]))
            table.add_row("served items also in the shadow list", _pct(report["lists"]["overlap"]))
        else:
            table.add_row("same decision", _pct(report["agreement"]))
        table.add_row("|score diff| mean / p50 / p95", f"{diff['mean']:.4f} / {diff['p50']:.4f} / {diff['p95']:.4f}")
        corr = report["score_correlation"]
        table.add_row("score correlation", "-" if corr is None else f"{corr:.3f}")
        if "declines" in report:
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
    """Per-variant outcomes on delayed labels with 95 % intervals and a verdict: catch rate, decline precision and
    AP (fraud, chargebacks), hit rate and nDCG@10 (recsys, the users' later interactions)."""
    from pipelines.fraud.events import LABELS_TOPIC, LabelEvent
    from pipelines.monitoring.deployment_report import canary_report
    from pipelines.platform.predictions import PredictionRecord

    topic = predictions_topic(design)
    settings = Settings()
    records, invalid = read_topic(settings, topic, PredictionRecord)
    if not records:
        raise ValueError(
            f"No prediction records on {topic} yet; serve with MLSD_SERVING_MODE=canary and send traffic first."
        )
    if design == "recsys":
        recsys_canary(settings, topic, records, invalid, json_out)
        return
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
    report_canary(
        f"canary report — {topic}",
        {"topic": topic, "invalid_records": invalid},
        canary_report(records, labels, mature_before, seed=settings.seed),
        json_out,
        ("versions", _versions),
        ("labelled predictions / frauds", lambda o: f"{o['predictions']:,} / {o['frauds']:,}"),
        ("catch rate [95 % CI]", lambda o: f"{_pct(o['catch_rate'])} [{_interval(o['catch_rate_ci'])}]"),
        (
            "decline precision [95 % CI]",
            lambda o: f"{_pct(o['decline_precision'])} [{_interval(o['decline_precision_ci'])}]",
        ),
        ("average precision [95 % CI]", lambda o: _value_with_interval(o, "average_precision")),
    )


def _versions(outcome: dict[str, Any]) -> str:
    return ", ".join(f"v{v} ({n:,})" for v, n in sorted(outcome["versions"].items())) or "-"


def _value_with_interval(outcome: dict[str, Any], key: str) -> str:
    value = outcome[key]
    return "-" if value is None else f"{value:.3f} [{_interval(outcome[f'{key}_ci'], percent=False)}]"


def report_canary(
    title: str, source: dict[str, Any], outcome: dict[str, Any], json_out: Path | None, *rows: tuple[str, Any]
) -> None:
    """The champion / challenger table of a canary outcome and its verdict; the report (where the records came
    from, then the outcome) to `json_out` if given. `rows` are (label, render one variant's outcome)."""
    report = {**source, **outcome}
    table = Table(title=title)
    for column in ("", "champion", "challenger"):
        table.add_column(column)
    for name, render in rows:
        table.add_row(name, *(render(report["variants"][v]) for v in ("champion", "challenger")))
    console.print(table)
    console.print(report["verdict"])
    write_report(report, json_out)


def recsys_canary(
    settings: Settings, topic: str, records: list[Any], invalid: int, json_out: Path | None, k: int = 10
) -> None:
    """The recommendation canary: each variant's served lists against what their users took within the horizon."""
    from pipelines.monitoring.deployment_report import recsys_canary_report
    from pipelines.monitoring.monitor import interaction_rows
    from pipelines.recsys.events import INTERACTIONS_TOPIC, InteractionEvent

    events, _ = read_topic(settings, INTERACTIONS_TOPIC, InteractionEvent)
    if not events:
        raise ValueError(
            f"No interactions on {INTERACTIONS_TOPIC} yet, so no recommendation's outcome is known; replay them "
            "with `mlsd recsys replay` (or let the stream run) first."
        )
    horizon = timedelta(hours=settings.monitor_recsys_horizon_hours)
    outcome = recsys_canary_report(records, interaction_rows(events), horizon, k, seed=settings.seed)
    report_canary(
        f"canary report — {topic} (hit = the user took one of the {k} items within {horizon})",
        {"topic": topic, "invalid_records": invalid},
        outcome,
        json_out,
        ("versions", _versions),
        ("recommendations with an outcome", lambda o: f"{o['predictions']:,}"),
        ("hit rate [95 % CI]", lambda o: f"{_pct(o['hit_rate'])} [{_interval(o['hit_rate_ci'])}]"),
        (f"nDCG@{k} [95 % CI]", lambda o: _value_with_interval(o, f"ndcg_at_{k}")),
    )
