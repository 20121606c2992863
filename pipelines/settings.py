"""One configuration object for every process, read from MLSD_* environment variables and `.env`.

MLSD_ENV_FILE names another dotenv file; set it empty to read none (the tests do, so a developer's `.env` never
reaches them or the processes they start).

It is created once in an entry point and passed down; nothing in the package reads the environment elsewhere.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MLSD_", env_file=os.environ.get("MLSD_ENV_FILE", ".env") or None, extra="ignore"
    )

    # -- General
    home: Path = Field(default=Path(".mlsd"), description="Working folder for data, stores, logs and reports")
    seed: int = Field(default=7, description="Seed of every simulator, split and model")

    # -- Kafka
    kafka_bootstrap: str = Field(default="127.0.0.1:19092", description="Kafka bootstrap servers")
    kafka_embedded: bool = Field(default=True, description="Start the embedded Tansu broker in `mlsd up`")
    kafka_port: int = Field(default=19092, description="Port of the embedded broker")

    # -- MLflow
    mlflow_tracking_uri: str = Field(
        default="", description="Tracking and registry server (empty: http://127.0.0.1:<mlflow_port> from `mlsd up`)"
    )
    mlflow_port: int = Field(default=5055, description="Port of the MLflow server `mlsd up` starts")
    mlflow_backend_store_uri: str = Field(
        default="", description="MLflow backend store of that server (empty: a SQLite file under home)"
    )
    mlflow_artifacts_destination: str = Field(
        default="", description="Where that server keeps artifacts (empty: a folder under home)"
    )

    # -- Feast
    feast_online_store: Literal["sqlite", "redis"] = Field(default="sqlite", description="Online store: sqlite | redis")
    feast_redis_url: str = Field(default="127.0.0.1:6379", description="Redis connection string of the online store")
    feast_registry: str = Field(
        default="",
        description="Feast registry: empty (SQLite file under home) or a SQLAlchemy URL (postgresql+psycopg2://...)",
    )
    feast_offline_dir: str = Field(default="", description="Offline store's Parquet folder (empty: under home)")

    # -- Serving
    fraud_service_port: int = Field(default=3000, description="Port of the fraud scoring service")
    fraud_service_workers: int = Field(default=1, ge=1, description="API workers of the fraud scoring service")
    recsys_service_port: int = Field(default=3001, description="Port of the recommendation service")
    recsys_item_refresh_seconds: float = Field(
        default=30.0, ge=0, description="How often /recommend re-reads the catalogue's item features (0: never)"
    )

    serving_store_budget_ms: float = Field(
        default=20.0, gt=0, description="Longest a request waits for the online store before it answers degraded"
    )
    serving_store_cooldown_seconds: float = Field(
        default=1.0, gt=0, description="After repeated store failures, requests skip the store this long, then retry"
    )
    serving_max_request_bytes: int = Field(default=65_536, ge=1024, description="Larger request bodies get a 413")
    fraud_degraded_amount_limit: float = Field(
        default=1000.0, gt=0, description="Without features (store down), amounts above this go to review"
    )

    # -- Deployment: how a service uses the registry aliases (pipelines/platform/deployment.py)
    serving_mode: Literal["off", "shadow", "canary"] = Field(
        default="off", description="off: champion only; shadow: challenger scores silently; canary: share served"
    )
    canary_share: float = Field(default=0.1, ge=0.0, le=1.0, description="Share of keys the challenger serves")
    model_refresh_seconds: float = Field(default=5.0, gt=0, description="How often services check the aliases")

    # -- Fraud design
    fraud_label_delay_days: int = Field(default=7, ge=0, description="Days until a chargeback (label) is known")
    fraud_cost_missed_fraud: float = Field(default=100.0, ge=0, description="Cost of a missed fraud (threshold choice)")
    fraud_cost_false_alarm: float = Field(default=5.0, ge=0, description="Cost of a false alarm (threshold choice)")
    fraud_review_threshold_factor: float = Field(
        default=0.5, gt=0, le=1, description="Review band: scores from this share of the decline threshold"
    )
    fraud_amount_limit: float = Field(default=5000.0, gt=0, description="Amounts above this go to review at least")
    fraud_blocklist: list[str] = Field(default_factory=list, description="Customer or terminal ids always declined")
    fraud_smote_ratio: float = Field(
        default=0.1, gt=0, le=1, description="SMOTE: minority size as a share of the majority"
    )

    # -- Promotion gate (pipelines/monitoring/gate.py): challenger vs champion on the same recent holdout
    gate_min_improvement: float = Field(default=0.0, description="Absolute metric gain a challenger must reach")
    gate_holdout_days: float = Field(default=7.0, gt=0, description="Fraud: latest days of labelled transactions")
    gate_holdout_frac: float = Field(default=0.2, gt=0, lt=1, description="Recsys: latest share of interactions")

    # -- Monitor (pipelines/monitoring/monitor.py): windows, label joins, performance decay
    monitor_window_size: int = Field(default=5000, ge=2, description="Served predictions per drift window")
    monitor_fraud_k: int = Field(default=50, ge=1, description="Fraud: precision among a window's k top scores")
    monitor_recsys_k: int = Field(default=10, ge=1, description="Recsys: cut-off of the ranking metrics")
    monitor_recsys_horizon_hours: float = Field(default=24.0, gt=0, description="Recsys: how long a hit may take")
    monitor_max_performance_drop: float = Field(
        default=0.3, gt=0, lt=1, description="Relative drop of the main metric that raises performance_decay"
    )
    monitor_performance_windows: int = Field(default=6, ge=1, description="Matured windows pooled to judge decay")

    # -- Retraining loop (pipelines/monitoring/retrain.py): which alerts retrain, how often, on how much data
    retrain_triggers: list[str] = Field(
        default_factory=lambda: ["data_drift", "prediction_drift", "performance_decay", "label_shift"],
        description="Alert kinds that open an incident and retrain (data_quality never does)",
    )
    retrain_cooldown_hours: float = Field(
        default=168.0, ge=0, description="Event time after a retrain during which alerts join the same incident"
    )
    retrain_fraud_days: float = Field(default=35.0, gt=0, description="Fraud: latest days of data a retrain fits on")

    # -- Stream processors
    stream_batch_size: int = Field(default=5000, ge=1, description="Events per micro-batch at most")
    stream_batch_ms: int = Field(
        default=250, ge=0, description="A micro-batch closes this long after its oldest event was produced"
    )
    stream_partitions: int = Field(
        default=4, ge=1, description="Partitions of each topic created by mlsd (processors in a group share them)"
    )
    stream_state_url: str = Field(
        default="", description="Where processors checkpoint their state: empty (SQLite under home) or postgresql://..."
    )
    stream_max_event_bytes: int = Field(
        default=1_048_576, ge=1024, description="Events larger than this are dead-lettered"
    )
    stream_dlq_copy_bytes: int = Field(
        default=65_536, ge=1024, description="A dead letter keeps at most this much of the event (and its size)"
    )
    stream_max_lateness_days: float = Field(
        default=60.0, gt=0, description="Events this far behind the stream's newest event are dead-lettered"
    )
    # Long enough that a sparse source (chargebacks) is rarely declared idle between two of its events, which
    # would let later events overtake it; the cost is only that the *delayed* terminal windows wait that long.
    stream_idle_origin_ms: int = Field(
        default=5000, ge=0, description="A caught-up source partition quiet this long stops holding the watermark"
    )
    event_max_future_seconds: float = Field(
        default=86_400.0, ge=0, description="Event times further ahead of now than this are refused"
    )

    # -- Metrics (pipelines/platform/metrics.py): the processors' and loops' Prometheus endpoints
    metrics_host: str = Field(
        default="127.0.0.1", description="Interface the /metrics endpoints listen on (0.0.0.0 in containers)"
    )
    stream_lag_every: int = Field(default=10, ge=1, description="Batches between two consumer-lag look-ups")

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    @property
    def offline_dir(self) -> Path:
        return Path(self.feast_offline_dir) if self.feast_offline_dir else self.home / "feast" / "offline"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"http://127.0.0.1:{self.mlflow_port}"

    @property
    def backend_store_uri(self) -> str:
        return self.mlflow_backend_store_uri or f"sqlite:///{(self.home / 'mlflow' / 'mlflow.db').resolve()}"

    @property
    def artifacts_destination(self) -> str:
        return self.mlflow_artifacts_destination or str((self.home / "mlflow" / "artifacts").resolve())


# The sections of `mlsd config`, by field-name prefix (first match wins); everything else is "General".
SECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Kafka", ("kafka_",)),
    ("MLflow", ("mlflow_",)),
    ("Feast", ("feast_",)),
    (
        "Serving",
        ("fraud_service_", "recsys_service_", "recsys_item_", "serving_store_", "serving_max_", "fraud_degraded_"),
    ),
    ("Deployment", ("serving_mode", "canary_share", "model_refresh_")),
    ("Fraud design", ("fraud_",)),
    ("Promotion gate", ("gate_",)),
    ("Monitor", ("monitor_",)),
    ("Retraining loop", ("retrain_",)),
    ("Stream processors", ("stream_", "event_")),
    ("Metrics", ("metrics_",)),
)
_SECRET_IN_URL = re.compile(r"(//[^:/@]+:)[^@]+(@)")
_SECRET_PARAMETER = re.compile(r"(password=)[^,&]+", re.IGNORECASE)


def section_of(field_name: str) -> str:
    return next((title for title, prefixes in SECTIONS if field_name.startswith(prefixes)), "General")


def masked(value: str) -> str:
    """A setting's value with the passwords in URLs and connection strings replaced by ***."""
    return _SECRET_PARAMETER.sub(r"\1***", _SECRET_IN_URL.sub(r"\1***\2", value))


def describe_settings(settings: Settings) -> dict[str, list[tuple[str, str, str]]]:
    """(MLSD_* variable, current value with secrets masked, description) per setting, grouped by section."""
    groups: dict[str, list[tuple[str, str, str]]] = {}
    for name, info in Settings.model_fields.items():
        value = getattr(settings, name)
        text = ",".join(value) if isinstance(value, list) else str(value)
        row = (f"MLSD_{name.upper()}", masked(text), info.description or "")
        groups.setdefault(section_of(name), []).append(row)
    return groups
