"""`mlsd registry ...`: the model lifecycle on the MLflow registry — list, history, promote (gated), rollback.

Every alias change these commands make is audited in the MLflow experiment `registry-audit` (see
`pipelines.platform.registry`); `history` reads that trail back. `--model` takes a design's name or its registered
model's name (pipelines/designs.py). Errors a user can cause end in one sentence.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from pipelines.designs import DESIGNS, find_design
from pipelines.platform.console import console
from pipelines.platform.errors import InvalidInput
from pipelines.settings import Settings

if TYPE_CHECKING:
    from pipelines.monitoring.gate import GateResult
    from pipelines.platform.registry import AuditRecord

registry_app = typer.Typer(
    help="Model lifecycle on the MLflow registry: list (versions), history (audited alias changes), promote (gated), "
    "rollback.",
    no_args_is_help=True,
)
MODELS = " | ".join(f"{d.model_name} ({d.name})" for d in DESIGNS)
Model = Annotated[str, typer.Option(help=f"Registered model, or its design: {MODELS}")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table")]
# Version tags too long for a table cell (the feature list) stay in `--json` and the MLflow UI.
HIDDEN_TAGS = {"features", "training_run_id"}


def model_name(model: str) -> str:
    """A design's registered model for its name (`fraud` → `fraud-xgboost`); any other name as given."""
    return next((d.model_name for d in DESIGNS if model == d.name), model)


def connected() -> Settings:
    from pipelines.platform.registry import connect_mlflow

    settings = Settings()
    connect_mlflow(settings)
    return settings


def emit_json(payload: Any) -> None:
    typer.echo(json.dumps(payload, indent=2, default=str))


def short(value: str, limit: int = 60) -> str:
    return value if len(value) <= limit else value[: limit - 1] + "…"


@registry_app.command("list")
def list_command(model: Model, as_json: AsJson = False) -> None:
    """Every version of a model, newest first, with its aliases and tags."""
    from pipelines.platform.registry import list_versions

    connected()
    versions = list_versions(model_name(model))
    if as_json:
        emit_json([v.to_dict() for v in versions])
        return
    table = Table(title=f"{model_name(model)}: {len(versions)} version(s)")
    for column in ("version", "aliases", "created (UTC)", "tags", "run"):
        table.add_column(column)
    for v in versions:
        tags = ", ".join(f"{k}={short(val, 24)}" for k, val in sorted(v.tags.items()) if k not in HIDDEN_TAGS)
        table.add_row(
            v.version,
            ", ".join(v.aliases) or "-",
            f"{v.created:%Y-%m-%d %H:%M:%S}",
            tags or "-",
            v.run_id[:8],
        )
    console.print(table)


def gate_numbers(record: AuditRecord) -> str:
    """`metric champion → challenger` from an audit record, or '-' when no gate ran."""
    from pipelines.monitoring.gate import metric_key

    metric = record.details.get("metric")
    if not metric:
        return "-"
    key = metric_key(metric)
    champion = record.metrics.get(f"champion_{key}")
    challenger = record.metrics.get(f"challenger_{key}")
    left = f"{champion:.4f}" if champion is not None else "none"
    right = f"{challenger:.4f}" if challenger is not None else "?"
    return f"{metric} {left} → {right}"


@registry_app.command("history")
def history_command(
    model: Model,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many changes")] = 20,
    as_json: AsJson = False,
) -> None:
    """Alias changes of a model (register, promote, reject, rollback), newest first, from the audit trail."""
    from pipelines.platform.registry import AUDIT_EXPERIMENT, history, require_model

    connected()
    name = model_name(model)
    require_model(name)
    records = history(name, limit=limit)
    if as_json:
        emit_json([r.to_dict() for r in records])
        return
    table = Table(title=f"{name}: last {len(records)} alias change(s) (MLflow experiment '{AUDIT_EXPERIMENT}')")
    for column in ("when (UTC)", "action", "alias", "from → to", "gate", "reason", "who", "command"):
        table.add_column(column)
    for r in records:
        table.add_row(
            f"{r.at:%Y-%m-%d %H:%M:%S}",
            r.action,
            r.alias,
            f"{'v' + r.from_version if r.from_version else '-'} → {'v' + r.to_version if r.to_version else '-'}",
            gate_numbers(r),
            short(r.reason, 80),
            r.user,
            short(r.command, 50),
        )
    console.print(table)


def print_gate(result: GateResult) -> None:
    holdout = result.holdout
    table = Table(
        title=(
            f"{result.model} gate on {holdout.rows:,} {holdout.unit} ({holdout.entities:,} {holdout.entity_unit}), "
            f"{holdout.start:%Y-%m-%d %H:%M} → {holdout.end:%Y-%m-%d %H:%M} UTC"
        )
    )
    champion = f"champion v{result.champion_version}" if result.champion_version else "champion (none)"
    for column in ("metric", champion, f"challenger v{result.challenger_version}", "difference"):
        table.add_column(column)
    for key, value in result.challenger_metrics.items():
        base = result.champion_metrics.get(key)
        mark = " *" if key == result.metric else ""
        table.add_row(
            key + mark,
            f"{base:.4f}" if base is not None else "-",
            f"{value:.4f}",
            f"{value - base:+.4f}" if base is not None else "-",
        )
    console.print(table)  # the gate's sentence, a refusal's included, follows the table


@registry_app.command("promote")
def promote_command(
    model: Model,
    data: Annotated[
        Path | None,
        typer.Option(help="Recent data both models are scored on: transactions (fraud) or interactions (recsys)"),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(help="; ".join(f"{d.name}: {d.gate.metric_help}" for d in DESIGNS) + " (default: the first)"),
    ] = None,
    min_improvement: Annotated[
        float | None, typer.Option(help="Absolute gain the challenger needs (default MLSD_GATE_MIN_IMPROVEMENT)")
    ] = None,
    holdout_days: Annotated[
        float | None, typer.Option(help="fraud: latest days of labelled transactions (default 7)")
    ] = None,
    holdout_frac: Annotated[
        float | None, typer.Option(help="recsys: latest share of interactions in time (default 0.2)")
    ] = None,
    max_users: Annotated[int, typer.Option(min=1, help="recsys: evaluate at most this many users (seeded)")] = 5_000,
    force: Annotated[bool, typer.Option(help="Skip the gate and promote the challenger (audited as forced)")] = False,
    reason: Annotated[str | None, typer.Option(help="Why: recorded in the audit trail")] = None,
    as_json: AsJson = False,
) -> None:
    """Gate the challenger against the champion on the same recent holdout; promote it if it passes."""
    from pipelines.monitoring.gate import check_metric, promote
    from pipelines.platform.registry import connect_mlflow

    chosen = find_design(model)
    name = chosen.model_name
    if data is None and not force:
        raise InvalidInput("promote needs --data PATH (recent data the gate scores both models on) unless --force.")
    settings = Settings()
    if metric is not None:
        check_metric(chosen, metric)  # an unknown metric fails before the file is read
    # The file is read and checked first: a bad file fails before anything touches the registry.
    frame = chosen.read_data(settings, data) if data is not None and not force else None
    connect_mlflow(settings)
    with console.status("scoring the champion and the challenger on the holdout"):
        outcome = promote(
            settings,
            chosen,
            frame,
            metric=metric,
            min_improvement=min_improvement,
            holdout_days=holdout_days,
            holdout_frac=holdout_frac,
            force=force,
            reason=reason,
            max_users=max_users,
        )
    if as_json:
        emit_json(
            {
                "promoted": outcome.promoted,
                "record": outcome.record.to_dict(),
                "gate": outcome.gate.to_dict() if outcome.gate else None,
            }
        )
        return
    if outcome.gate is not None:
        print_gate(outcome.gate)
        console.print(outcome.gate.reason, highlight=False)
    record = outcome.record
    if outcome.promoted:
        was = f"v{record.from_version}" if record.from_version else "none"
        console.print(f"promoted {name} v{record.to_version} to champion (was {was}); audit run {record.run_id}")
    else:
        console.print(
            f"rejected {name} v{record.to_version}; champion stays v{record.from_version}; audit run {record.run_id}"
        )


@registry_app.command("rollback")
def rollback_command(
    model: Model,
    reason: Annotated[str, typer.Option(help="Why: recorded in the audit trail")] = "manual rollback",
    as_json: AsJson = False,
) -> None:
    """Point the champion back at the champion before the current one (again to go further back)."""
    from pipelines.platform.registry import rollback

    connected()
    record = rollback(model_name(model), reason)
    if as_json:
        emit_json(record.to_dict())
        return
    console.print(
        f"rolled back {record.model}: champion v{record.from_version} → v{record.to_version}; audit run {record.run_id}"
    )
