"""The Design contract: what a design declares so that the generic layers can run it without knowing its name.

A design (`pipelines/fraud`, `pipelines/recsys`) fills in one `Design` in its own `design.py`; the composition root
(`pipelines/designs.py`) lists them. Everything generic — the embedded stack, the monitor, the promotion gate, the
retraining loop, the deployment reports, the top-level CLI and the demo — asks a `Design` instead of branching on a
name. A third design plugs in by writing its package and adding one line to the composition root.

Every field is cheap to build: callables import their heavy libraries when called, so `mlsd --help` stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from pipelines.platform.errors import InvalidInput
from pipelines.settings import Settings

if TYPE_CHECKING:
    import pandas as pd
    import typer
    from rich.console import Console

    from pipelines.platform.drift import DriftConfig
    from pipelines.platform.predictions import PredictionRecord

PREDICTIONS_SUFFIX = ".predictions"


def lazy(target: str) -> Callable[..., Any]:
    """The function `"package.module:name"`, imported at its first call.

    Designs declare their parts with it, so listing the designs (every `mlsd` command does) imports no pandas,
    Feast, MLflow or XGBoost; a test resolves every target so that none can rot.
    """
    module, _, name = target.partition(":")

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__qualname__ = call.__name__ = target
    call.target = target  # type: ignore[attr-defined]
    return call


# ----------------------------------------------------------------------------------------------------------
# Monitoring: what the monitor watches and how it judges performance on delayed labels


@dataclass(frozen=True)
class MonitorSpec:
    """What one design monitors; the loop, the windows and the reports are shared (pipelines/monitoring)."""

    design: str
    label_topic: str
    label_schema: type[BaseModel]
    label_delay: pd.Timedelta  # a window's labels are complete this long after its last event
    label_watermark_column: str  # the label frame's column whose maximum is the label stream's watermark
    drift_config: Callable[[pd.DataFrame], DriftConfig]  # from the reference frame
    label_rows: Callable[[Sequence[BaseModel]], pd.DataFrame]  # label events → label frame
    performance: Callable[[pd.DataFrame, pd.DataFrame], dict[str, float]]  # window frame + label frame → metrics
    baseline: Callable[[pd.DataFrame, int], dict[str, float]]  # reference, rows → expected metrics ({} unknown)
    primary_metric: str
    # The registered version's tag holding the primary metric on validation data (None: the first matured
    # windows set the baseline).
    baseline_tag: str | None = None
    max_drop: float = 0.3  # relative drop of the primary metric that counts as decay
    performance_windows: int = 6  # matured windows pooled for the decay decision
    # A sudden collapse (a new attack the model cannot see) should not wait for six windows: the last
    # `fast_windows` pooled, more than `fast_max_drop` below the baseline, also count as decay.
    fast_windows: int = 2
    fast_max_drop: float = 0.5
    # With few positives a metric is noise: the fast pool grows (up to `performance_windows`) until it holds this
    # many (the spec's `positives_metric` counts them; None: `fast_windows` as they are).
    fast_min_positives: int = 40
    positives_metric: str | None = None
    # Label (prior) shift: the positive rate of the last `fast_windows` matured windows against the reference's.
    label_rate_metric: str | None = None
    label_shift_ratio: float = 1.5  # rate ratio beyond which (either way) the shift counts ...
    # ... when a two-proportion z-test agrees it is not noise. 4.5, not 4: unchanged simulated traffic reached
    # z = -4.2 over two low-fraud windows (0.5 % vs 0.94 %); the new-fraud-pattern test's first alert has z = 5.1.
    label_shift_z: float = 4.5


# ----------------------------------------------------------------------------------------------------------
# The promotion gate: the holdout both models are scored on, and the metric that decides


class GateError(InvalidInput):
    """The gate cannot compare the two models; the message says why and what to do."""


@dataclass(frozen=True)
class Holdout:
    """What the two models were compared on."""

    rows: int
    start: datetime
    end: datetime
    unit: str  # "transactions" | "interactions"
    entities: int  # cards in the window (fraud) or users evaluated (recsys)
    entity_unit: str


@dataclass(frozen=True)
class GateOptions:
    """How the holdout is cut: a design uses the knobs that fit its data (days of labelled rows or a share)."""

    metric: str
    holdout_days: float | None = None
    holdout_frac: float | None = None
    max_users: int | None = 5_000
    rebuild_features: bool = True


Evaluate = Callable[[str], dict[str, float]]  # registered version → its metrics on the holdout


@dataclass(frozen=True)
class GateSpec:
    default_metric: str
    metric_help: str  # the metrics a user may choose, for --help and error messages
    check_metric: Callable[[str], str]  # normalises a metric name or raises GateError
    prepare: Callable[[Settings, pd.DataFrame, GateOptions], tuple[Holdout, Evaluate]]


# ----------------------------------------------------------------------------------------------------------
# The retraining loop: where fresh data comes from and how a challenger is fit


@dataclass
class RetrainInputs:
    """What the user handed the retraining loop: the history file's rows, and a catalogue where the design has one."""

    history: pd.DataFrame | None = None
    catalogue: pd.DataFrame | None = None


@dataclass(frozen=True)
class Challenger:
    """A challenger fit and registered by the design: its version, what the gate should score, what it was fit on."""

    version: str
    gate_rows: pd.DataFrame
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RetrainSpec:
    # Everything known at `as_of` (the alert's stream time): the history plus what the design's topics carried.
    fresh_data: Callable[[Settings, RetrainInputs, datetime | None], pd.DataFrame]
    # Fit on the rows before the gate's holdout and register as challenger.
    fit_challenger: Callable[[Settings, pd.DataFrame, RetrainInputs], Challenger]


# ----------------------------------------------------------------------------------------------------------
# Deployment reports: how a canary's outcomes are judged on the design's labels


@dataclass(frozen=True)
class CanarySpec:
    title: str  # what counts as a good outcome, for the report's title
    # The report from the served records (the design reads its own label topics): per variant outcomes, the
    # comparison, a `verdict` sentence and a `table` of rows [label, champion, challenger] for printing.
    # `all_predictions` also counts requests whose outcome may still be on its way.
    report: Callable[[Settings, list[PredictionRecord], bool], dict[str, Any]]


# ----------------------------------------------------------------------------------------------------------
# Drift scenarios: a known change injected into a design's stream (`mlsd drift-test`)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    expect: tuple[str, ...]  # alert kinds that count as detecting it (empty: the control)
    stream_days: float  # how much traffic after the history
    label_based: bool = False  # detected from delayed labels: delay counts matured windows


@dataclass
class PreparedScenario:
    """A scenario's world, ready to publish: the history the champion was trained on, the changed stream."""

    history: pd.DataFrame
    stream: pd.DataFrame
    start: pd.Timestamp | None  # when the change starts (None: the control)
    extras: dict[str, Any] = field(default_factory=dict)  # what the design's publish step needs besides


@dataclass(frozen=True)
class ScenarioSuite:
    scenarios: dict[str, Scenario]
    demo_scenario: str  # the one `mlsd demo` runs as its drift incident
    world: type[Any]  # a frozen dataclass with `seed`, `size`, `history_days` and a `key` property
    # (world registry settings, scenario name, world, window size, progress) → the world, its champion registered
    prepare: Callable[[Settings, str, Any, int, Callable[[str], None]], PreparedScenario]
    # (scenario settings, prepared world, progress) → counts of what was sent to the design's topics
    publish: Callable[[Settings, PreparedScenario, Callable[[str], None]], dict[str, int]]


# ----------------------------------------------------------------------------------------------------------
# The demo


@dataclass(frozen=True)
class DemoSection:
    """A design's part of `mlsd demo` on the running embedded stack; it stops every process it starts."""

    title: str
    options: type[Any]  # a dataclass of the section's knobs with their defaults (`mlsd demo --set name.knob=value`)
    run: Callable[[Settings, Console, Any], dict[str, Any]]  # (settings, console, options) → summary
    html: Callable[[dict[str, Any]], str]  # the report's section from the summary


# ----------------------------------------------------------------------------------------------------------
# The design


@dataclass(frozen=True)
class Design:
    name: str  # the CLI group, the topic prefix and the `design` of prediction records
    title: str
    summary: str  # one line for `mlsd --help`
    topics: tuple[str, ...]  # the design's own topics, dead-letter topics included
    model_name: str  # the registered model, `<design>-<model>`
    feature_objects: Callable[[Path], list[Any]]  # everything `feast apply` registers, offline rows under a folder
    cli: Callable[[], typer.Typer]  # the design's command group
    monitor: Callable[[Settings], MonitorSpec]
    gate: GateSpec
    retrain: RetrainSpec
    canary: CanarySpec
    read_data: Callable[[Settings, Path], pd.DataFrame]  # the design's main data file, validated
    train_hint: str  # the command that registers a first model
    read_catalogue: Callable[[Path], pd.DataFrame] | None = None  # a catalogue file, for designs that have one
    demo: DemoSection | None = None
    scenarios: ScenarioSuite | None = None
    drills: Callable[[], Any] | None = None  # its fault drills' DrillSpec (pipelines/platform/drills.py)
    service_port: Callable[[Settings], int] | None = None
    partitioned_topics: tuple[str, ...] = ()  # of `topics`: split into `stream_partitions` partitions

    @property
    def predictions_topic(self) -> str:
        return self.name + PREDICTIONS_SUFFIX

    @property
    def all_topics(self) -> tuple[str, ...]:
        from pipelines.platform.stream import DLQ_SUFFIX

        return (*self.topics, self.predictions_topic, self.predictions_topic + DLQ_SUFFIX)
