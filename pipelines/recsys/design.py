"""The recommendation design as the platform sees it: one `Design` that plugs it into the stack, monitoring, gate
and CLI.

Every part is named here and lives in this package; the generic layers reach it only through this object (listed
in pipelines/designs.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.platform.design import CanarySpec, DemoSection, Design, GateSpec, RetrainSpec, lazy
from pipelines.recsys.demo import RecsysDemoOptions
from pipelines.recsys.events import TOPICS
from pipelines.recsys.model import MODEL_NAME, TRAIN_HINT

if TYPE_CHECKING:
    import typer


def _cli() -> typer.Typer:
    from pipelines.recsys.cli import app

    return app


DESIGN = Design(
    name="recsys",
    title="Recommendation",
    summary="interactions on Kafka → user/item features in Feast → candidates → XGBoost ranker → re-ranking → "
    "/recommend",
    topics=TOPICS,
    model_name=MODEL_NAME,
    feature_objects=lazy("feature_repo.recsys:recsys_feature_objects"),
    cli=_cli,
    monitor=lazy("pipelines.recsys.monitoring:monitor_spec"),
    gate=GateSpec(
        default_metric="ndcg@10",
        metric_help="ndcg@10, recall@10, map@10, precision@10, hit_rate@10 (any k)",
        check_metric=lazy("pipelines.recsys.lifecycle:check_metric"),
        prepare=lazy("pipelines.recsys.lifecycle:prepare_gate"),
    ),
    retrain=RetrainSpec(
        fresh_data=lazy("pipelines.recsys.lifecycle:fresh_data"),
        fit_challenger=lazy("pipelines.recsys.lifecycle:fit_challenger"),
    ),
    canary=CanarySpec(
        title="hit = the user took one of the 10 items within the horizon",
        report=lazy("pipelines.recsys.canary:read_canary"),
    ),
    read_data=lazy("pipelines.recsys.lifecycle:read_data"),
    read_catalogue=lazy("pipelines.recsys.data:read_items"),
    train_hint=TRAIN_HINT,
    demo=DemoSection(
        title="Recommendation",
        options=RecsysDemoOptions,
        run=lazy("pipelines.recsys.demo:run_recsys_demo"),
        html=lazy("pipelines.recsys.demo:recsys_report_section"),
    ),
    service_port=lambda settings: settings.recsys_service_port,
)
