"""`mlsd drift-test --scenario NAME`: inject a known change into a design's stream and see what the loop makes of it.

The design supplies the world and the changes (its `ScenarioSuite`, e.g. pipelines/fraud/scenarios.py): a seeded
history that trains the world's champion, a stream after it changed from a known moment, and how that stream is
published (its events, the service's predictions, labels at their label time). This module runs the rest, with the
real parts:

1. the stream is published to a broker of the run's own, as a day of live traffic produces it;
2. the real monitor (pipelines/monitoring/monitor.py) consumes the topics in windows and publishes alerts;
3. the real retraining loop (pipelines/monitoring/retrain.py) acts on them: retrain, gate, promote or reject.

The report says whether and when the change was detected (in windows and served predictions after `start`; for
label-based detection, in matured windows after the first affected window's labels arrived), every alert in the
control (false alarms), and what the retraining loop did; JSON and a plot of drift scores per window.

Each run gets its own embedded broker (empty topics) and a copy of the world's MLflow registry under
`<home>/drift-tests/<scenario>/`: the world's champion is trained once (`<home>/drift-tests/world-<key>/`) and every
run starts from it, with an empty audit trail.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.designs import feature_definitions, topic_partitions
from pipelines.designs import find_design as resolve_design
from pipelines.platform.design import Design, MonitorSpec, PreparedScenario, RetrainInputs, Scenario, ScenarioSuite
from pipelines.platform.errors import InvalidInput
from pipelines.platform.infra import free_port, stack_down, stack_up
from pipelines.settings import Settings

# ----------------------------------------------------------------------------------------------------------
# Detection


@dataclass
class Detection:
    detected: bool
    kind: str | None = None
    window: int | None = None  # the window whose alert detected it
    start_window: int | None = None  # the window the change starts in
    delay_windows: int | None = None  # 1: detected in the window where it starts
    delay_events: int | None = None  # served predictions from the start to the end of the detecting window
    matured_delay_windows: int | None = None  # label-based: matured windows from the first affected one
    false_alarm_windows: list[int] = field(default_factory=list)  # alerts before the start (or in the control)


def detect(scenario: Scenario, windows: list[dict[str, Any]], start: pd.Timestamp | None) -> Detection:
    """First alert of an expected kind after the change started, from the monitor's per-window results."""
    before = [
        w["window"] for w in windows if w["alerts"] and (start is None or pd.Timestamp(w["event_time_end"]) < start)
    ]
    result = Detection(detected=False, false_alarm_windows=before)
    if start is None or not scenario.expect:
        result.false_alarm_windows = [w["window"] for w in windows if w["alerts"]]
        return result
    start_window = next((w["window"] for w in windows if pd.Timestamp(w["event_time_end"]) >= start), None)
    result.start_window = start_window
    # Alerts in the order they were raised: a window's drift when it closed, its label alerts when it matured.
    raised = sorted(
        (
            (pd.Timestamp(a["stream_time"] or w["event_time_end"]), w["window"], a["kind"])
            for w in windows
            for a in w["alerts"]
            if a["kind"] in scenario.expect and pd.Timestamp(w["event_time_end"]) >= start
        ),
    )
    if not raised or start_window is None:
        return result
    _, window, kind = raised[0]
    result.detected, result.kind, result.window = True, kind, window
    result.delay_windows = window - start_window + 1
    by_number = {w["window"]: w for w in windows}
    served_after = sum(
        w["rows"] if pd.Timestamp(w["event_time_start"]) >= start else w["rows_after_start"]
        for n, w in by_number.items()
        if start_window <= n <= window
    )
    result.delay_events = int(served_after)
    if scenario.label_based:
        result.matured_delay_windows = result.delay_windows
    return result


def window_rows(run: Any, spec: MonitorSpec, start: pd.Timestamp | None) -> list[dict[str, Any]]:
    """The monitor's windows as plain rows for the report and the plot."""
    rows = []
    for w in run.windows:
        drift = w.drift
        ratios = {n: d.score / d.threshold for n, d in drift.features.items() if d.threshold}
        worst = max(ratios, key=lambda n: ratios[n]) if ratios else None
        after = 0
        if start is not None and w.start is not None and w.end is not None and pd.Timestamp(w.end) >= start:
            share = (pd.Timestamp(w.end) - max(pd.Timestamp(w.start), start)) / max(
                pd.Timestamp(w.end) - pd.Timestamp(w.start), pd.Timedelta(seconds=1)
            )
            after = round(w.rows * float(share))
        perf = w.performance or {}
        rows.append(
            {
                "window": w.window,
                "rows": w.rows,
                "rows_after_start": after,
                "event_time_start": w.start.isoformat() if w.start else None,
                "event_time_end": w.end.isoformat() if w.end else None,
                "worst_feature": worst,
                "worst_feature_score_over_threshold": round(ratios[worst], 3) if worst else None,
                "prediction_score": round(drift.prediction.score, 4) if drift.prediction else None,
                "quality_findings": len(drift.findings),
                "prediction_threshold": drift.prediction.threshold if drift.prediction else None,
                "metric": perf.get(spec.primary_metric),
                "rolling_metric": (w.rolling or {}).get(spec.primary_metric),
                "positive_rate": perf.get(spec.label_rate_metric) if spec.label_rate_metric else None,
                "alerts": [
                    {
                        "kind": a.kind,
                        "message": a.message,
                        "stream_time": a.stream_time.isoformat() if a.stream_time else None,
                    }
                    for a in w.alerts
                ],
            }
        )
    return rows


def plot_scenario(result: dict[str, Any], path: Path) -> Path:
    """Drift scores per window (worst feature over its threshold, prediction drift) and AP once labels matured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["windows"]
    x = [r["window"] for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    top.plot(
        x, [r["worst_feature_score_over_threshold"] or 0 for r in rows], marker="o", label="worst feature ÷ threshold"
    )
    top.plot(
        x,
        [(r["prediction_score"] or 0) / (r["prediction_threshold"] or 1) for r in rows],
        marker="s",
        label="prediction drift ÷ threshold",
    )
    top.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    top.set_ylabel("drift score ÷ threshold")
    bottom.plot(
        x,
        [r["metric"] if r["metric"] is not None else np.nan for r in rows],
        marker="o",
        label=f"{result['metric']} (labels matured)",
    )
    if any(r["positive_rate"] is not None for r in rows):
        bottom.plot(
            x,
            [r["positive_rate"] * 20 if r["positive_rate"] is not None else np.nan for r in rows],
            marker="^",
            label="positive rate × 20",
        )
    bottom.set_ylabel("delayed-label metrics")
    bottom.set_xlabel("window")
    start_window = result["detection"].get("start_window")
    for axis in (top, bottom):
        if start_window:
            axis.axvline(start_window, color="red", linestyle=":", label="change starts")
        for r in rows:
            if r["alerts"]:
                axis.axvspan(r["window"] - 0.4, r["window"] + 0.4, color="orange", alpha=0.15)
        axis.legend(loc="upper left", fontsize=8)
    top.set_title(f"drift-test {result['scenario']}: {result['summary']}", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------
# Running one scenario


def scenario_suite(design: Design) -> ScenarioSuite:
    if design.scenarios is None:
        raise InvalidInput(f"The {design.name} design has no drift scenarios yet.")
    return design.scenarios


def world_settings(settings: Settings, key: str) -> Settings:
    """The world's registry (its first champion lives there) under `<home>/drift-tests/world-<key>/`."""
    world_dir = settings.home.resolve() / "drift-tests" / f"world-{key}"
    world_dir.mkdir(parents=True, exist_ok=True)
    return settings.model_copy(
        update={
            "home": world_dir,
            "mlflow_tracking_uri": f"sqlite:///{world_dir / 'mlflow.db'}",
            "feast_online_store": "sqlite",
            "feast_registry": "",
            "feast_offline_dir": "",
        }
    )


def scenario_settings(settings: Settings, world: Settings, name: str, window_size: int) -> Settings:
    """Its own broker (empty topics), folder and copy of the world's registry, so each run starts the same."""
    home = settings.home.resolve() / "drift-tests" / name
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    shutil.copyfile(world.home / "mlflow.db", home / "mlflow.db")
    port = free_port()
    return world.model_copy(
        update={
            "home": home,
            "kafka_port": port,
            "kafka_bootstrap": f"127.0.0.1:{port}",
            "kafka_embedded": True,
            "mlflow_tracking_uri": f"sqlite:///{home / 'mlflow.db'}",
            "monitor_window_size": window_size,
        }
    )


def run_scenario(
    settings: Settings,
    design: Design | str,
    name: str,
    world: Any = None,
    window_size: int = 5000,
    retrain: bool = True,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One scenario of `design` end to end on a broker and registry of its own; the result is also written as JSON."""
    design = resolve_design(design)
    suite = scenario_suite(design)
    if name not in suite.scenarios:
        raise InvalidInput(f"Unknown scenario '{name}'; choose one of {', '.join(suite.scenarios)}.")
    scenario = suite.scenarios[name]
    world = world or suite.world(seed=settings.seed)
    say = progress or (lambda _m: None)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    world_config = world_settings(settings, world.key)
    prepared = suite.prepare(world_config, name, world, window_size, say)
    timings["simulate_and_champion"] = time.perf_counter() - clock
    start = prepared.start
    s = scenario_settings(settings, world_config, name, window_size)
    started = stack_up(s, topic_partitions(s), feature_definitions())
    spec = design.monitor(s)
    try:
        clock = time.perf_counter()
        sent = suite.publish(s, prepared, say)
        timings["features_scores_publish"] = time.perf_counter() - clock

        run, retrains, handled_counts = monitor_and_retrain(s, design, prepared, window_size, retrain, say, timings)
        windows = window_rows(run, spec, start)
        detection = detect(scenario, windows, start)
    finally:
        stack_down(s, [p.name for p in started])

    summary = summarise(scenario, detection, retrains)
    result = {
        "design": design.name,
        "scenario": name,
        "description": scenario.description,
        "expected_alerts": list(scenario.expect),
        "world": asdict(world),
        "window_size": window_size,
        "metric": spec.primary_metric,
        "history_rows": len(prepared.history),
        "stream_rows": len(prepared.stream),
        "start": start.isoformat() if start is not None else None,
        "sent": sent,
        "windows_evaluated": len(run.windows),
        "windows_awaiting_labels": run.pending,
        "detection": asdict(detection),
        "retraining": {"alerts": handled_counts, "retrains": retrains},
        "summary": summary,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "windows": windows,
        "finished_at": datetime.now().astimezone().isoformat(),
    }
    out = settings.reports_dir / "drift-tests"
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(result, indent=2, default=str))
    result["json"] = str(json_path)
    result["plot"] = str(plot_scenario(result, out / f"{name}.png"))
    return result


def monitor_and_retrain(
    settings: Settings,
    design: Design,
    prepared: PreparedScenario,
    window_size: int,
    retrain: bool,
    say: Callable[[str], None],
    timings: dict[str, float],
) -> tuple[Any, list[dict[str, Any]], dict[str, int]]:
    """The monitor over the published topics while the retraining loop follows its alerts from its own thread, as
    in production (alert → Kafka → loop → retrain → gate → decision); returns (monitor run, retrains, verdicts)."""
    from pipelines.monitoring.monitor import run_monitor
    from pipelines.monitoring.retrain import run_retrain_loop

    stop = threading.Event()
    loop_result: dict[str, Any] = {}
    loop_thread = None
    if retrain:
        inputs = RetrainInputs(history=prepared.history)
        loop_thread = threading.Thread(
            target=lambda: loop_result.update(
                run=run_retrain_loop(settings, design, inputs, from_beginning=True, stop=stop)
            ),
            name="retrain-loop",
            daemon=True,
        )
        loop_thread.start()
    clock = time.perf_counter()
    say("monitoring" + (" (the retraining loop acts on its alerts meanwhile)" if retrain else ""))
    run = run_monitor(settings, design, window_size, idle_timeout=5.0, from_beginning=True)
    timings["monitor"] = time.perf_counter() - clock
    retrains: list[dict[str, Any]] = []
    counts: dict[str, int] = {}
    if loop_thread is not None:
        say("waiting for the retraining loop's decisions")
        clock = time.perf_counter()
        stop.set()
        loop_thread.join()
        timings["retrain_after_monitor"] = time.perf_counter() - clock
        if "run" in loop_result:
            retrains = [r.to_dict() for r in loop_result["run"].retrains]
            counts = loop_result["run"].counts()
    return run, retrains, counts


def summarise(scenario: Scenario, detection: Detection, retrains: list[dict[str, Any]]) -> str:
    if not scenario.expect:
        text = (
            f"{len(detection.false_alarm_windows)} false alarm window(s)"
            if detection.false_alarm_windows
            else "no false alarm"
        )
    elif detection.detected:
        text = (
            f"detected ({detection.kind}) in window {detection.window}, {detection.delay_windows} window(s) and "
            f"{detection.delay_events:,} predictions after the change started"
        )
    else:
        text = "not detected"
    if retrains:
        decisions = ", ".join(
            "failed" if r["failed"] else f"v{r['challenger_version']} {'promoted' if r['promoted'] else 'rejected'}"
            for r in retrains
        )
        text += f"; retrains: {decisions}"
    else:
        text += "; no retrain"
    return text
