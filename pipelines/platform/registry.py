"""MLflow registry access shared by the designs: tracking URI, registration, aliases, champion loading.

Names follow `<design>-<model>` and the aliases `champion` / `challenger` (never the deprecated stages).
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from typing import Any

from pipelines.platform.stream import ServiceUnavailable
from pipelines.settings import Settings

CHAMPION = "champion"
CHALLENGER = "challenger"


def connect_mlflow(settings: Settings) -> str:
    """Point MLflow at the tracking server (or a database URI) and fail in one sentence if it is down."""
    import mlflow

    uri = settings.tracking_uri
    if uri.startswith("http"):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5):
                pass
        except OSError as exc:
            raise ServiceUnavailable(
                f"The MLflow server at {uri} is not reachable; start it with `mlsd up` or set MLSD_MLFLOW_TRACKING_URI."
            ) from exc
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def register_version(model_uri: str, name: str, alias: str | None, tags: dict[str, str] | None = None) -> str:
    """Register a logged model as a new version of `name`, tag it, and point `alias` at it."""
    import mlflow
    from mlflow import MlflowClient

    version = mlflow.register_model(model_uri, name).version
    client = MlflowClient()
    for key, value in (tags or {}).items():
        client.set_model_version_tag(name, version, key, value)
    if alias:
        client.set_registered_model_alias(name, alias, version)
    return str(version)


@dataclass
class LoadedModel:
    name: str
    version: str
    model: Any
    tags: dict[str, str]


def load_alias(name: str, alias: str = CHAMPION) -> LoadedModel:
    """Load the XGBoost model behind `name@alias` with its version tags."""
    import mlflow.xgboost
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        version = client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise ServiceUnavailable(
            f"No model '{name}' has the alias '{alias}' yet; train one first (for fraud: `mlsd fraud train`)."
        ) from exc
    model = mlflow.xgboost.load_model(f"models:/{name}@{alias}")
    return LoadedModel(name, str(version.version), model, dict(version.tags or {}))
