"""One configuration object for every process, read from MLSD_* environment variables and `.env`.

It is created once in an entry point and passed down; nothing in the package reads the environment elsewhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MLSD_", env_file=".env", extra="ignore")

    # Where everything the embedded stack writes lives (data, stores, logs, pid files).
    home: Path = Field(default=Path(".mlsd"), description="Working folder for data, stores and logs")
    seed: int = 7

    # Kafka
    kafka_bootstrap: str = "127.0.0.1:19092"
    kafka_embedded: bool = Field(default=True, description="Start the embedded Tansu broker in `mlsd up`")
    kafka_port: int = 19092

    # MLflow
    mlflow_tracking_uri: str = ""  # empty: http://127.0.0.1:{mlflow_port} served by `mlsd up`
    mlflow_port: int = 5055
    mlflow_backend_store_uri: str = ""  # empty: SQLite file under home
    mlflow_artifacts_destination: str = ""  # empty: folder under home

    # Feast
    feast_online_store: str = Field(default="sqlite", description="sqlite | redis")
    feast_redis_url: str = "127.0.0.1:6379"
    feast_registry: str = ""  # empty: SQLite file under home; or a SQLAlchemy URL such as postgresql://...
    feast_offline_dir: str = ""  # empty: folder under home

    # Serving
    fraud_service_port: int = 3000
    fraud_service_workers: int = 1
    recsys_service_port: int = 3001
    recsys_item_refresh_seconds: float = Field(
        default=30.0, description="How often /recommend re-reads the catalogue's item features (0: never)"
    )

    # Deployment: how a service uses the registry aliases (pipelines/platform/deployment.py)
    serving_mode: Literal["off", "shadow", "canary"] = Field(
        default="off", description="off: champion only; shadow: challenger scores silently; canary: share served"
    )
    canary_share: float = Field(default=0.1, ge=0.0, le=1.0, description="Share of keys the challenger serves")
    model_refresh_seconds: float = Field(default=5.0, gt=0, description="How often services check the aliases")

    # Fraud design knobs
    fraud_label_delay_days: int = 7
    fraud_cost_missed_fraud: float = 100.0
    fraud_cost_false_alarm: float = 5.0
    fraud_review_threshold_factor: float = 0.5
    fraud_amount_limit: float = 5000.0
    fraud_blocklist: list[str] = Field(default_factory=list)
    fraud_smote_ratio: float = 0.1

    # Promotion gate (pipelines/monitoring/gate.py): challenger vs champion on the same recent holdout
    gate_min_improvement: float = Field(default=0.0, description="Absolute metric gain a challenger must reach")
    gate_holdout_days: float = Field(default=7.0, gt=0, description="Fraud: latest days of labelled transactions")
    gate_holdout_frac: float = Field(default=0.2, gt=0, lt=1, description="Recsys: latest share of interactions")

    # Monitor (pipelines/monitoring/monitor.py): windows, label joins, performance decay
    monitor_window_size: int = Field(default=5000, ge=2, description="Served predictions per drift window")
    monitor_fraud_k: int = Field(default=50, ge=1, description="Fraud: precision among a window's k top scores")
    monitor_recsys_k: int = Field(default=10, ge=1, description="Recsys: cut-off of the ranking metrics")
    monitor_recsys_horizon_hours: float = Field(default=24.0, gt=0, description="Recsys: how long a hit may take")
    monitor_max_performance_drop: float = Field(
        default=0.3, gt=0, lt=1, description="Relative drop of the main metric that raises performance_decay"
    )
    monitor_performance_windows: int = Field(default=6, ge=1, description="Matured windows pooled to judge decay")

    # Retraining loop (pipelines/monitoring/retrain.py): which alerts retrain, how often, on how much data
    retrain_triggers: list[str] = Field(
        default_factory=lambda: ["data_drift", "prediction_drift", "performance_decay", "label_shift"],
        description="Alert kinds that open an incident and retrain (data_quality never does)",
    )
    retrain_cooldown_hours: float = Field(
        default=168.0, ge=0, description="Event time after a retrain during which alerts join the same incident"
    )
    retrain_fraud_days: float = Field(default=35.0, gt=0, description="Fraud: latest days of data a retrain fits on")

    # Stream processors
    stream_batch_size: int = 5000
    stream_batch_ms: int = 250  # a micro-batch closes this long after its oldest event was produced (or when full)

    # Metrics (pipelines/platform/metrics.py): the stream processors' Prometheus endpoints (`--metrics-port`)
    metrics_host: str = Field(
        default="127.0.0.1", description="Interface the /metrics endpoints listen on (0.0.0.0 in containers)"
    )
    stream_lag_every: int = Field(default=10, ge=1, description="Batches between two consumer-lag look-ups")

    @field_validator("feast_online_store")
    @classmethod
    def _known_online_store(cls, value: str) -> str:
        if value not in {"sqlite", "redis"}:
            raise ValueError("use 'sqlite' or 'redis'")
        return value

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
