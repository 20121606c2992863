"""The demo's drift incident: a known change injected into a design's stream (its suite's `demo_scenario`, for the
fraud design a covariate shift), caught by the monitor, answered by the retraining loop (retrain → challenger →
gate → promote or reject), all through Kafka and the MLflow registry.

It runs `pipelines/monitoring/scenarios.py` on a small world of its own (1,000 entities, windows of 1,000
predictions) so that it takes about a minute and a half; `mlsd drift-test --scenario NAME` runs the full-size
scenarios.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pipelines.platform.design import Design
from pipelines.settings import Settings


def run_incident_demo(settings: Settings, console: Console, design: Design) -> dict[str, Any]:
    from pipelines.monitoring.scenarios import run_scenario, scenario_suite

    suite = scenario_suite(design)
    world = suite.world(seed=settings.seed, size=1000, history_days=50)
    with console.status("drift incident") as spinner:
        result = run_scenario(
            settings, design, suite.demo_scenario, world, window_size=1000, progress=lambda m: spinner.update(m)
        )
    print_incident(console, result)
    return result


def _retrain_line(retrain: dict[str, Any]) -> str:
    if retrain["failed"]:
        return f"incident {retrain['incident']}: {retrain['decision']}"
    gate = retrain["gate"]
    verdict = "promoted" if retrain["promoted"] else "rejected"
    return (
        f"{retrain['trigger']} → challenger v{retrain['challenger_version']} trained on "
        f"{retrain['data']['train_rows']:,} rows → gate {gate['metric']} {gate['champion_value']:.4f} "
        f"(champion) vs {gate['challenger_value']:.4f} → {verdict}; "
        f"{retrain['seconds']['total']:.0f} s from the loop receiving the alert to the decision"
    )


def print_incident(console: Console, result: dict[str, Any]) -> None:
    detection = result["detection"]
    table = Table(title=f"mlsd monitoring demo — drift incident ({result['scenario']})", show_header=False)
    table.add_row("injected", result["description"])
    table.add_row("windows monitored", f"{result['windows_evaluated']} of {result['window_size']:,} predictions")
    table.add_row(
        "detected",
        f"{detection['kind']} in window {detection['window']}: {detection['delay_windows']} window(s), "
        f"{detection['delay_events']:,} predictions after the change started"
        if detection["detected"]
        else "not detected",
    )
    table.add_row("alerts before the change", str(len(detection["false_alarm_windows"])))
    counts = result["retraining"]["alerts"]
    table.add_row(
        "retraining loop",
        f"{counts.get('retrain', 0)} retrain, {counts.get('join', 0)} alerts joined the incident, "
        f"{counts.get('ignore', 0)} ignored",
    )
    for retrain in result["retraining"]["retrains"]:
        table.add_row("decision", _retrain_line(retrain))
    table.add_row("report", f"{result['json']} and {result['plot']}")
    console.print(table)


def incident_report_section(result: dict[str, Any]) -> str:
    from pipelines.platform.report import image

    detection = result["detection"]
    decisions = "".join(f"<li>{html.escape(_retrain_line(r))}</li>" for r in result["retraining"]["retrains"])
    found = (
        f"detected as {detection['kind']} in window {detection['window']} ({detection['delay_windows']} window(s), "
        f"{detection['delay_events']:,} predictions after it started)"
        if detection["detected"]
        else "not detected"
    )
    return (
        f"<h1>Monitoring: a drift incident</h1><p>{html.escape(result['description'])}; "
        f"{html.escape(found)}.</p><ul>{decisions or '<li>no retrain</li>'}</ul>{image(Path(result['plot']))}"
    )
