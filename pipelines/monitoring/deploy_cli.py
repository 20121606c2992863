"""`mlsd deploy ...`: shadow and canary reports read from a design's prediction log on Kafka.

Both commands read `<design>.predictions` (and, for the canary, the labels the design reads: chargebacks on
`fraud.labels`, later interactions on `recsys.interactions`) from the beginning without a consumer group, so they
commit nothing and can run at any time next to the services.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from pipelines.designs import NAMES, DesignName, find_design
from pipelines.platform.console import console, print_facts, print_table, write_json_out
from pipelines.platform.errors import InvalidInput
from pipelines.platform.stream import read_topic
from pipelines.settings import Settings

deploy_app = typer.Typer(
    help="Deployment reports from the prediction log: shadow-report (agreement), canary-report (outcomes on delayed "
    "labels).",
    no_args_is_help=True,
)

DesignOption = Annotated[DesignName, typer.Option("--design", help="Which design's prediction log")]
JsonOut = Annotated[Path | None, typer.Option(help="Also write the report as JSON to this file")]


def write_report(report: dict[str, Any], json_out: Path | None) -> None:
    write_json_out(json_out, report)
    if json_out:
        console.print(f"wrote {json_out}")


@deploy_app.command("shadow-report")
def shadow_report_command(
    design: DesignOption = NAMES[0],
    max_records: Annotated[int | None, typer.Option(help="Read at most this many records from the start")] = None,
    json_out: JsonOut = None,
) -> None:
    """Served vs shadow predictions of the same requests: agreement, score differences, latency per model."""
    from pipelines.platform.experiments import percent, shadow_report
    from pipelines.platform.predictions import PredictionRecord

    chosen = find_design(design)
    topic = chosen.predictions_topic
    records, invalid = read_topic(Settings(), topic, PredictionRecord, max_records)
    if not records:
        raise InvalidInput(
            f"No prediction records on {topic} yet; serve the {chosen.name} model (MLSD_SERVING_MODE=shadow to get "
            f"shadow predictions) and send it traffic, e.g. `mlsd loadtest {chosen.name}`."
        )
    report = {"topic": topic, "invalid_records": invalid, **shadow_report(records)}
    rows = [
        ("records (served / shadow / paired)", f"{report['served']:,} / {report['shadow']:,} / {report['pairs']:,}")
    ]
    if report["pairs"]:
        diff = report["score_abs_diff"]
        if "lists" in report:  # recommendations
            rows.append(("same first item", percent(report["lists"]["same_first_item"])))
            rows.append(("served items also in the shadow list", percent(report["lists"]["overlap"])))
        else:
            rows.append(("same decision", percent(report["agreement"])))
        rows.append(("|score diff| mean / p50 / p95", f"{diff['mean']:.4f} / {diff['p50']:.4f} / {diff['p95']:.4f}"))
        corr = report["score_correlation"]
        rows.append(("score correlation", "-" if corr is None else f"{corr:.3f}"))
        if "declines" in report:
            declines = report["declines"]
            rows.append(
                ("declines served / shadow", f"{declines['served_declines']:,} / {declines['shadow_declines']:,}")
            )
    for model, latency in report["latency_ms"].items():
        rows.append(
            (f"latency {model} p50 / p99", f"{latency['p50']:.2f} / {latency['p99']:.2f} ms ({latency['count']:,})")
        )
    print_facts(rows, f"shadow report — {topic}")
    console.print(report["verdict"])
    write_report(report, json_out)


@deploy_app.command("canary-report")
def canary_report_command(
    design: DesignOption = NAMES[0],
    all_predictions: Annotated[
        bool, typer.Option(help="Also count requests whose outcome may still be on its way (fraud: label delay)")
    ] = False,
    json_out: JsonOut = None,
) -> None:
    """Per-variant outcomes on delayed labels with 95 % intervals and a verdict, as the design judges an outcome
    (fraud: catch rate, decline precision and AP on chargebacks; recsys: hit rate and nDCG@10 on later interactions)."""
    from pipelines.platform.predictions import PredictionRecord

    chosen = find_design(design)
    topic = chosen.predictions_topic
    settings = Settings()
    records, invalid = read_topic(settings, topic, PredictionRecord)
    if not records:
        raise InvalidInput(
            f"No prediction records on {topic} yet; serve with MLSD_SERVING_MODE=canary and send traffic first."
        )
    report = {"topic": topic, "invalid_records": invalid, **chosen.canary.report(settings, records, all_predictions)}
    print_table(f"canary report — {topic} ({chosen.canary.title})", ("", "champion", "challenger"), report["table"])
    console.print(report["verdict"])
    write_report(report, json_out)
