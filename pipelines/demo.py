"""`mlsd demo`: every design end to end on the embedded stack, with printed summaries and one HTML report.

The orchestrator only: it starts the stack, runs each design's demo section (its `DemoSection`, e.g.
pipelines/fraud/demo.py), then a drift incident on the first design that has drift scenarios
(pipelines/monitoring/demo.py), writes the report and stops what it started unless asked to keep it running.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

from rich.console import Console

from pipelines.designs import DESIGNS, feature_definitions, topic_partitions
from pipelines.platform.design import Design
from pipelines.platform.errors import InvalidInput
from pipelines.settings import Settings


def knobs() -> list[str]:
    """Every `--set` a design's demo section takes, as `design.knob=default`."""
    return [f"{d.name}.{f.name}={f.default}" for d in DESIGNS if d.demo for f in dataclasses.fields(d.demo.options)]


def section_options(design: Design, assignments: Sequence[str]) -> Any:
    """The design's demo options with the `--set design.knob=value` assignments that name it applied."""
    assert design.demo is not None
    options = design.demo.options()
    fields = {f.name: f for f in dataclasses.fields(options)}
    changes: dict[str, Any] = {}
    for assignment in assignments:
        target, _, value = assignment.partition("=")
        name, _, knob = target.partition(".")
        if name != design.name:
            continue
        if knob not in fields or not value:
            raise InvalidInput(f"--set {assignment}: use one of {', '.join(knobs())} (with your value).")
        kind = type(getattr(options, knob))
        try:
            changes[knob] = kind(value)
        except ValueError:
            raise InvalidInput(f"--set {assignment}: {knob} takes a {kind.__name__}, not '{value}'.") from None
    return dataclasses.replace(options, **changes)


def check_assignments(assignments: Sequence[str]) -> None:
    names = {d.name for d in DESIGNS if d.demo}
    for assignment in assignments:
        name = assignment.partition("=")[0].partition(".")[0]
        if "=" not in assignment or name not in names:
            raise InvalidInput(f"--set {assignment}: use one of {', '.join(knobs())} (with your value).")


def run_demo(
    settings: Settings,
    console: Console,
    designs: Sequence[Design],
    assignments: Sequence[str] = (),
    incident: bool = True,
    keep_running: bool = False,
) -> dict[str, Any]:
    from pipelines.monitoring.demo import incident_report_section, run_incident_demo
    from pipelines.platform.infra import stack_down, stack_up
    from pipelines.platform.report import write_html_page

    check_assignments(assignments)
    chosen = [d for d in designs if d.demo is not None]
    options = {d.name: section_options(d, assignments) for d in chosen}
    with console.status("starting the embedded stack (Kafka broker, MLflow server, Feast registry)"):
        started = stack_up(settings, topic_partitions(settings), feature_definitions())
    console.print(f"[green]stack up[/green]: Kafka {settings.kafka_bootstrap}, MLflow {settings.tracking_uri}")
    summary: dict[str, Any] = {}
    sections: list[str] = []
    try:
        for design in chosen:
            assert design.demo is not None
            console.rule(design.demo.title)
            summary[design.name] = design.demo.run(settings, console, options[design.name])
            sections.append(design.demo.html(summary[design.name]))
        with_scenarios = next((d for d in chosen if d.scenarios is not None), None)
        if incident and with_scenarios is not None:
            console.rule("monitoring")
            summary["incident"] = run_incident_demo(settings, console, with_scenarios)
            sections.append(incident_report_section(summary["incident"]))
        path = write_html_page(settings.reports_dir / "demo.html", "mlsd demo", sections)
        (settings.reports_dir / "demo_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        console.print(f"report: {path}")
        return summary
    finally:
        if not keep_running:
            stack_down(settings, [p.name for p in started])
