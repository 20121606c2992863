"""The fraud design as the platform sees it: one `Design` that plugs it into the stack, monitoring, gate and CLI.

Every part is named here and lives in this package; the generic layers reach it only through this object (listed
in pipelines/designs.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.fraud.demo import FraudDemoOptions
from pipelines.fraud.events import PARTITIONED_TOPICS, TOPICS
from pipelines.fraud.model import MODEL_NAME, TRAIN_HINT
from pipelines.fraud.scenario_specs import SCENARIOS, WorldConfig
from pipelines.platform.design import CanarySpec, DemoSection, Design, GateSpec, RetrainSpec, ScenarioSuite, lazy

if TYPE_CHECKING:
    import typer


def _cli() -> typer.Typer:
    from pipelines.fraud.cli import app

    return app


DESIGN = Design(
    name="fraud",
    title="Fraud detection",
    summary="payments on Kafka → window features in Feast → XGBoost for imbalanced data → rules → /score",
    topics=TOPICS,
    partitioned_topics=PARTITIONED_TOPICS,
    model_name=MODEL_NAME,
    feature_objects=lazy("feature_repo.fraud:fraud_feature_objects"),
    cli=_cli,
    monitor=lazy("pipelines.fraud.monitoring:monitor_spec"),
    gate=GateSpec(
        default_metric="average_precision",
        metric_help="average_precision, roc_auc, card_precision_at_100",
        check_metric=lazy("pipelines.fraud.lifecycle:check_metric"),
        prepare=lazy("pipelines.fraud.lifecycle:prepare_gate"),
    ),
    retrain=RetrainSpec(
        fresh_data=lazy("pipelines.fraud.lifecycle:fresh_data"),
        fit_challenger=lazy("pipelines.fraud.lifecycle:fit_challenger"),
    ),
    canary=CanarySpec(
        title="outcome = the chargebacks that arrived", report=lazy("pipelines.fraud.canary:read_canary")
    ),
    read_data=lazy("pipelines.fraud.lifecycle:read_data"),
    train_hint=TRAIN_HINT,
    demo=DemoSection(
        title="Fraud detection",
        options=FraudDemoOptions,
        run=lazy("pipelines.fraud.demo:run_fraud_demo"),
        html=lazy("pipelines.fraud.demo:fraud_report_section"),
    ),
    scenarios=ScenarioSuite(
        scenarios=SCENARIOS,
        demo_scenario="covariate-shift",
        world=WorldConfig,
        prepare=lazy("pipelines.fraud.scenarios:prepare"),
        publish=lazy("pipelines.fraud.scenarios:publish"),
    ),
    drills=lazy("pipelines.fraud.drills:drill_spec"),
    service_port=lambda settings: settings.fraud_service_port,
)
