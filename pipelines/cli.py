"""The `mlsd` command: the embedded stack, every design's command group, monitoring, the registry and the demo.

Each design's commands live in its own package (`mlsd fraud ...` is pipelines/fraud/cli.py) and are plugged in from
the composition root (pipelines/designs.py). Every command builds one Settings from MLSD_* variables (and `.env`)
and passes it down. Errors a user can cause end in one sentence; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from pipelines.demo import knobs
from pipelines.designs import DESIGNS, NAMES
from pipelines.monitoring import cli as monitoring_cli
from pipelines.monitoring.deploy_cli import deploy_app
from pipelines.monitoring.registry_cli import registry_app
from pipelines.platform.console import console, fail, print_facts
from pipelines.platform.drills import SCENARIOS as STREAM_DRILLS
from pipelines.platform.service_drills import SERVICE_SCENARIOS as SERVICE_DRILLS
from pipelines.settings import Settings


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import version

        typer.echo(f"mlsd {version('mlsd')}")
        raise typer.Exit()


DRILL_DESIGNS = tuple(d.name for d in DESIGNS if d.drills is not None)
DrillDesign: Any = Literal[DRILL_DESIGNS]  # type: ignore[valid-type]
DrillScenario: Any = Literal[(*STREAM_DRILLS, *SERVICE_DRILLS)]  # type: ignore[valid-type]
OnlineStore = Literal["sqlite", "redis"]

app = typer.Typer(
    help="Runnable ML system designs — "
    + "; ".join(f"{d.title.lower()}: {d.summary}" for d in DESIGNS)
    + " — plus deployment and monitoring (MLflow registry with a promotion gate, shadow and canary serving, drift "
    "monitoring, a retraining loop), on Kafka, Feast, XGBoost, MLflow and BentoML.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit")
    ] = False,
) -> None:
    """Runnable ML system designs."""


for _design in DESIGNS:
    app.add_typer(_design.cli(), name=_design.name)

loadtest_app = typer.Typer(
    help="Open-loop load tests against a running service: " + ", ".join(NAMES) + ".", no_args_is_help=True
)
for _design in DESIGNS:  # each design's own `loadtest` command, also under `mlsd loadtest <design>`
    for _command in _design.cli().registered_commands:
        if _command.name == "loadtest" and _command.callback is not None:
            loadtest_app.command(_design.name, help=_command.callback.__doc__)(_command.callback)
app.add_typer(loadtest_app, name="loadtest")
app.command("monitor")(monitoring_cli.monitor)
app.command("retrain")(monitoring_cli.retrain)
app.command("drift-test")(monitoring_cli.drift_test)
app.add_typer(deploy_app, name="deploy")
app.add_typer(registry_app, name="registry")
infra_app = typer.Typer(
    help="Single infrastructure roles, for docker-compose and debugging: mlflow-server, create-topics, feast-apply.",
    no_args_is_help=True,
)
app.add_typer(infra_app, name="infra")


# ---------------------------------------------------------------- the stack


@app.command()
def up() -> None:
    """Start the embedded stack: Kafka-protocol broker (Tansu), MLflow server, Feast registry; create topics."""
    from pipelines.designs import feature_definitions, topic_partitions
    from pipelines.platform.infra import stack_up

    s = Settings()
    started = stack_up(s, topic_partitions(s), feature_definitions())
    for process in started:
        console.print(f"started {process.name} (pid {process.pid}, log {process.log})")
    console.print(f"Kafka at {s.kafka_bootstrap}; MLflow UI at {s.tracking_uri}; Feast repo applied.")
    if s.kafka_embedded:
        console.print(
            "[yellow]Note:[/] the embedded broker keeps topics in memory: stopping it loses every event, committed "
            "offset and logged prediction. Stream processors notice a new log and read it from the start without "
            "counting twice; for a durable log use Apache Kafka (docker compose) or MLSD_KAFKA_BOOTSTRAP."
        )


@app.command()
def down() -> None:
    """Stop what `mlsd up` started."""
    from pipelines.platform.infra import stack_down

    stopped = stack_down(Settings())
    console.print(f"stopped: {', '.join(stopped) if stopped else 'nothing was running'}")


@app.command()
def status() -> None:
    """Show which embedded services are running."""
    from pipelines.platform.infra import STACK, running

    s = Settings()
    print_facts([(name, "running" if running(s, name) else "stopped") for name in STACK], "mlsd stack")


@app.command()
def config() -> None:
    """Every setting: its MLSD_* variable, its value now (secrets masked) and what it does, grouped by concern."""
    from rich.table import Table

    from pipelines.settings import describe_settings

    table = Table(title="mlsd settings (MLSD_* environment variables or .env)")
    for column in ("variable", "value", "what it does"):
        table.add_column(column)
    for group, rows in describe_settings(Settings()).items():
        table.add_section()
        table.add_row(f"[bold]{group}[/bold]", "", "")
        for variable, value, description in rows:
            table.add_row(variable, value, description, style=None)
    console.print(table)


@app.command()
def demo(
    design: Annotated[
        list[str] | None,
        typer.Option(help=f"Run only these designs (repeat; default: every design): {', '.join(NAMES)}"),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="A design's demo knob, DESIGN.KNOB=VALUE (repeat); knobs and defaults: " + ", ".join(knobs()),
        ),
    ] = None,
    incident: Annotated[bool, typer.Option(help="Run the drift incident after the designs")] = True,
    keep_running: Annotated[bool, typer.Option(help="Leave the stack running afterwards")] = False,
) -> None:
    """Every design on simulated data: up, simulate, train, stream, serve, live traffic, summaries, a drift incident,
    one HTML report."""
    from pipelines.demo import run_demo
    from pipelines.designs import find_design as find

    chosen = [find(name) for name in design] if design else list(DESIGNS)
    run_demo(Settings(), console, chosen, set_ or [], incident, keep_running)


@app.command()
def drill(
    scenario: Annotated[DrillScenario, typer.Option(help="The fault to inject")],
    design: Annotated[DrillDesign, typer.Option(help="Whose stream processors or service")] = DRILL_DESIGNS[0],
    size: Annotated[int, typer.Option(min=1000, help="Transactions or interactions to simulate (40 days)")] = 20_000,
    processors: Annotated[int, typer.Option(min=1, help="Processors in the consumer group")] = 1,
    kills: Annotated[int, typer.Option(min=0, help="stream-crash: how many times a processor is killed")] = 3,
    rate: Annotated[float, typer.Option(min=0, help="Replay rate, events per second (0: as fast as possible)")] = 1000,
    rps: Annotated[float, typer.Option(min=1, help="Service drills: requests per second")] = 100,
    outage: Annotated[float, typer.Option(min=1, help="Service drills: seconds the dependency is away")] = 20,
    around: Annotated[float, typer.Option(min=1, help="Service drills: seconds of load before and after it")] = 20,
    online_store: Annotated[OnlineStore, typer.Option(help="Service drills: sqlite, or redis (a private server)")] = (
        "sqlite"
    ),
    seed: Annotated[int | None, typer.Option(help="Seed of the data and of the faults (default MLSD_SEED)")] = None,
    json_out: Annotated[Path | None, typer.Option(help="Also write the result here")] = None,
) -> None:
    """Fault drills on real processes. Streams: stream-crash, rebalance, poison-events, broker-restart (what was
    sent, processed, dead-lettered, lost and wrong, and how long recovery took). Services under load:
    online-store-outage, broker-outage, registry-outage (answers full, degraded and failed before, during and after,
    and how long recovery took)."""
    from pipelines.designs import find_design

    s = Settings()
    chosen = find_design(design)
    assert chosen.drills is not None
    spec = chosen.drills()
    seed = s.seed if seed is None else seed
    if scenario in SERVICE_DRILLS:
        if spec.service is None:
            fail(f"The {chosen.name} design has no service drills; its stream drills are {', '.join(STREAM_DRILLS)}.")
        service_drill(spec.service, chosen.name, scenario, rps, outage, around, online_store, size, seed, json_out)
    else:
        stream_drill(spec, chosen.name, scenario, size, processors, kills, rate, seed, json_out)


def stream_drill(
    spec: Any,
    design: str,
    scenario: str,
    size: int,
    processors: int,
    kills: int,
    rate: float,
    seed: int,
    json_out: Path | None,
) -> None:
    from pipelines.platform.console import print_facts, write_json_out
    from pipelines.platform.drills import run_drill

    with console.status(f"{scenario} drill") as spinner:
        result = run_drill(
            Settings(),
            spec,
            design,
            scenario,
            size,
            processors,
            kills,
            rate,
            seed,
            say=lambda m: spinner.update(f"{scenario}: {m}"),
        )
    out = result.to_dict()
    rows = [
        ("events sent", f"{result.sent:,}"),
        ("processors", str(processors)),
        ("dead-lettered", f"{result.dead_lettered:,}"),
        ("events lost", str(out["events_lost"])),
        ("rows differing from the backfill", str(out["rows_differing"])),
        ("processors that crashed on their own", str(result.crashes)),
        ("faults", "; ".join(", ".join(f"{k} {v}" for k, v in kill.items()) for kill in result.kills) or "-"),
        ("recovery (s)", ", ".join(f"{r:.1f}" for r in result.recovery_s) or "-"),
        ("seconds", f"{result.seconds:.0f}"),
    ]
    if result.poison:
        rows.append(("bad events dead-lettered with their reason", f"{result.poison.get('share', 0):.0%}"))
    print_facts(rows, f"{design} drill: {scenario}")
    write_json_out(json_out, out)


def service_drill(
    spec: Any,
    design: str,
    scenario: str,
    rps: float,
    outage: float,
    around: float,
    online_store: str,
    size: int,
    seed: int,
    json_out: Path | None,
) -> None:
    from pipelines.platform.console import print_facts, write_json_out
    from pipelines.platform.service_drills import run_service_drill

    with console.status(f"{scenario} drill") as spinner:
        result = run_service_drill(
            spec, design, scenario, rps, around, outage, around, online_store, size, seed, spinner.update
        )

    def counts(phase: dict[str, Any]) -> str:
        return (
            f"{phase['ok']:,} full, {phase['degraded']:,} degraded, {phase['failed']:,} failed; "
            f"p99 {phase['p99_ms']} ms"
        )

    rows = [(f"{name} the outage", counts(phase)) for name, phase in result["phases"].items()]
    rows += [
        ("recovery (s): last degraded or failed answer after it was back", f"{result['recovery_s']:.1f}"),
        ("the service saw it back after (s)", str(result["service_saw_it_back_s"])),
        ("error kinds", ", ".join(f"{k}: {v}" for k, v in result["error_kinds"].items()) or "-"),
        ("seconds", f"{result['seconds']:.0f}"),
    ]
    print_facts(rows, f"{design} drill: {scenario} ({online_store} online store, {rps:g} req/s)")
    write_json_out(json_out, result)


# ---------------------------------------------------------------- infra roles


@infra_app.command("mlflow-server")
def infra_mlflow_server(host: Annotated[str, typer.Option(help="Interface")] = "0.0.0.0") -> None:
    """Run the MLflow tracking server in the foreground with the configured backend store and artifacts."""
    import os

    from pipelines.platform.infra import MLFLOW_SERVER_ENV, mlflow_server_command

    command = mlflow_server_command(Settings(), host)
    for key, value in MLFLOW_SERVER_ENV.items():
        os.environ.setdefault(key, value)
    os.execvp(command[0], command)


@infra_app.command("create-topics")
def infra_create_topics() -> None:
    """Create every design's Kafka topics (idempotent)."""
    from pipelines.designs import topic_partitions
    from pipelines.platform.stream import ensure_topics

    s = Settings()
    topics = topic_partitions(s)
    created = ensure_topics(s, list(topics), topics)
    console.print(f"created: {', '.join(created) if created else 'all topics existed'}")


@infra_app.command("feast-apply")
def infra_feast_apply() -> None:
    """Register every design's Feast entities, sources, feature views and feature services."""
    from pipelines.designs import feature_definitions
    from pipelines.platform.features import apply_feature_definitions

    apply_feature_definitions(Settings(), feature_definitions())
    console.print("Feast definitions applied")


def main() -> None:
    """Entry point: run the app and turn errors a user can cause into one sentence (bugs keep their traceback)."""
    import warnings

    from pydantic import ValidationError

    from pipelines.platform.errors import UserError
    from pipelines.platform.quiet import quiet_libraries

    quiet_libraries()
    # Libraries re-enable their deprecation warnings on import; a command's output is for its user, so drop them.
    show = warnings.showwarning

    def quiet(message, category, *args, **kwargs):  # type: ignore[no-untyped-def]
        if not issubclass(category, (DeprecationWarning, FutureWarning, UserWarning)):
            show(message, category, *args, **kwargs)

    warnings.showwarning = quiet
    try:
        app(standalone_mode=True)  # click prints usage errors itself (exit 2)
    except (UserError, FileNotFoundError) as exc:
        fail(str(exc))
    except ValidationError as exc:
        if exc.title != "Settings":  # a bug's validation error, not a bad MLSD_* variable
            raise
        first = exc.errors()[0]
        name = "MLSD_" + ".".join(str(p) for p in first.get("loc", ())).upper()
        reason = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        fail(f"{name}={first.get('input')!r} is not valid: {reason.rstrip('.')}.")
    except KeyboardInterrupt:
        raise SystemExit(130) from None
