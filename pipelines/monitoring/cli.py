"""`mlsd monitor`, `mlsd retrain`, `mlsd drift-test`: the monitoring loop, the retraining loop and the drift tests.

`--design` takes any design listed in pipelines/designs.py; what differs per design comes from its `Design`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from pipelines.designs import DESIGNS, NAMES, DesignName, find_design
from pipelines.platform.console import console, fail, print_table, write_json_out
from pipelines.settings import Settings

WITH_SCENARIOS = tuple(d.name for d in DESIGNS if d.scenarios is not None)
SCENARIO_NAMES = tuple(dict.fromkeys(n for d in DESIGNS if d.scenarios for n in d.scenarios.scenarios))
# Choices for --design (a design with drift scenarios) and --scenario, built from the designs.
ScenarioDesign: Any = Literal[WITH_SCENARIOS]  # type: ignore[valid-type]
ScenarioName: Any = Literal[(*SCENARIO_NAMES, "all")]  # type: ignore[valid-type]


def monitor(
    design: Annotated[DesignName, typer.Option("--design", help="Which design's prediction log")] = NAMES[0],
    window_size: Annotated[
        int | None, typer.Option(min=2, help="Served predictions per window (default MLSD_MONITOR_WINDOW_SIZE)")
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
    from pipelines.monitoring.monitor import run_monitor
    from pipelines.monitoring.window import window_rows

    s = Settings()
    chosen = find_design(design)
    reports = s.reports_dir / "monitoring" / chosen.name
    console.print(f"monitoring {chosen.predictions_topic}; reports in {reports}; Ctrl-C stops it")

    def closed(result):  # type: ignore[no-untyped-def]
        alerts = ", ".join(dict.fromkeys(result.kinds)) or "none"
        console.print(f"window {result.window}: {result.rows:,} records, alerts: {alerts}", markup=False)

    def matured(result):  # type: ignore[no-untyped-def]
        figures = ", ".join(f"{k} {v:.3g}" for k, v in (result.performance or {}).items() if isinstance(v, float))
        console.print(f"window {result.window} labels matured: {figures}", markup=False)

    run = run_monitor(s, chosen, window_size, max_windows, idle_timeout, from_beginning, metrics_port, closed, matured)
    rows = window_rows(run.windows, chosen.monitor(s).primary_metric)
    print_table(
        f"{chosen.name} monitor: {len(rows)} windows from {run.served_records:,} served records",
        rows[0] if rows else ["window"],
        [row.values() for row in rows],
    )
    console.print(
        f"{run.alerts_published} alert(s) published on monitoring.alerts; {run.shadow_records:,} shadow and "
        f"{run.degraded_records:,} degraded records kept out of drift; windows awaiting labels: "
        f"{run.pending or 'none'}; summary in {reports}/summary.jsonl"
    )
    write_json_out(json_out, run.to_dict())


def retrain(
    design: Annotated[DesignName, typer.Option("--design", help="Which design's alerts to act on")] = NAMES[0],
    history: Annotated[
        Path | None, typer.Option(help="Data the stream does not hold: the design's main file (transactions, ...)")
    ] = None,
    items: Annotated[Path | None, typer.Option(help="The design's catalogue file, if it has one (items)")] = None,
    once: Annotated[bool, typer.Option(help="Stop after the first retrain's promote/reject decision")] = False,
    idle_timeout: Annotated[float | None, typer.Option(help="Stop after this many seconds without alerts")] = None,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning/--latest", help="Replay every alert on the topic, or only new ones")
    ] = False,
    json_out: Annotated[Path | None, typer.Option(help="Write every handled alert and retrain here")] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Serve Prometheus metrics on this port")] = None,
) -> None:
    """Retraining loop: alerts on monitoring.alerts → one retrain per incident → challenger → gate → decision."""
    from pipelines.monitoring.retrain import run_retrain_loop
    from pipelines.platform.design import RetrainInputs

    s = Settings()
    chosen = find_design(design)
    if items is not None and chosen.read_catalogue is None:
        fail(f"The {chosen.name} design has no catalogue file; drop --items.")
    inputs = RetrainInputs(
        history=chosen.read_data(s, history) if history else None,
        catalogue=chosen.read_catalogue(items) if items is not None and chosen.read_catalogue else None,
    )

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

    console.print(f"following monitoring.alerts for {chosen.name}; Ctrl-C stops it")
    run = run_retrain_loop(
        s, chosen, inputs, once, idle_timeout, from_beginning, on_handled=handled, metrics_port=metrics_port
    )
    counts = run.counts()
    console.print(
        f"{counts['retrain']} retrain(s), {counts['join']} alert(s) joined an open incident, "
        f"{counts['ignore']} ignored; audit: mlsd registry history --model {chosen.name}"
    )
    write_json_out(json_out, run.to_dict())


def drift_test(
    scenario: Annotated[ScenarioName, typer.Option(help="Which change to inject")] = "covariate-shift",
    design: Annotated[ScenarioDesign, typer.Option("--design", help="Which design's stream")] = WITH_SCENARIOS[0],
    window_size: Annotated[int, typer.Option(min=100, help="Served predictions per monitor window")] = 5000,
    world_size: Annotated[int, typer.Option(min=1, help="Entities in the simulated world (fraud: customers)")] = 5000,
    history_days: Annotated[int, typer.Option(min=1, help="Days of history the world's champion is trained on")] = 52,
    seed: Annotated[int | None, typer.Option(help="World seed (default MLSD_SEED)")] = None,
    retrain: Annotated[bool, typer.Option(help="Let the retraining loop act on the alerts")] = True,
) -> None:
    """Inject a known change into a design's stream; report when the monitor caught it and what retraining did."""
    from pipelines.monitoring.scenarios import run_scenario, scenario_suite

    s = Settings()
    chosen = find_design(design)
    suite = scenario_suite(chosen)
    names = list(suite.scenarios) if scenario == "all" else [scenario]
    if names[0] not in suite.scenarios:
        fail(f"The {chosen.name} design has no scenario '{scenario}'; choose one of {', '.join(suite.scenarios)}.")
    world = suite.world(seed=s.seed if seed is None else seed, size=world_size, history_days=history_days)
    rows = []
    for name in names:
        console.rule(name)
        with console.status(name) as spinner:
            result = run_scenario(s, chosen, name, world, window_size, retrain, progress=lambda m: spinner.update(m))
        d = result["detection"]
        console.print(result["summary"], markup=False)
        retrains = result["retraining"]["retrains"]
        rows.append(
            (
                name,
                "-" if not result["expected_alerts"] else (d["kind"] if d["detected"] else "NO"),
                d["delay_windows"] or "-",
                f"{d['delay_events']:,}" if d["delay_events"] is not None else "-",
                len(d["false_alarm_windows"]),
                "; ".join(
                    "failed"
                    if r["failed"]
                    else f"v{r['challenger_version']} {'promoted' if r['promoted'] else 'rejected'}"
                    for r in retrains
                )
                or "none",
                f"{sum(result['seconds'].values()):.0f}",
            )
        )
        console.print(f"JSON: {result['json']}  plot: {result['plot']}", markup=False)
    print_table(
        f"drift tests (windows of {window_size:,} predictions)",
        ("scenario", "detected", "windows", "predictions", "false alarms", "retraining", "seconds"),
        rows,
    )
