"""Keep library chatter out of what the commands print."""

from __future__ import annotations

import os


def quiet_libraries() -> None:
    """Set the environment MLflow reads at import; call it in an entry point before anything imports MLflow.

    Importing MLflow sets the `mlflow` logger's level from MLFLOW_LOGGING_LEVEL (INFO when unset), replacing any
    level set before, so a `logging` call cannot quiet it; the environment can. ERROR drops MLflow's INFO and WARNING
    lines and keeps its errors. The artifact progress bars and the run links MLflow prints go as well. The variables
    are inherited by child processes (MLflow server, services); values already in the environment win.
    """
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
