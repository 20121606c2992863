"""The registered fraud model: its name, what one version holds, and how it is loaded.

A version is an MLflow XGBoost model saved in XGBoost's own `ubj` format plus version tags (strategy, threshold,
features, validation average precision, training data end). Loading reads that file into a Booster: no pickle, no
class import from the registry, nothing that executes code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines.platform.design import GateError
from pipelines.platform.registry import download_version, version_tags

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

MODEL_NAME = "fraud-xgboost"
TRAIN_HINT = "`mlsd fraud train`"


@dataclass(frozen=True)
class FraudVersion:
    version: str
    booster: Any  # xgboost.Booster
    tags: dict[str, str]

    @property
    def features(self) -> list[str]:
        from pipelines.fraud.features import MODEL_FEATURES

        return list(json.loads(self.tags.get("features", json.dumps(MODEL_FEATURES))))

    @property
    def threshold(self) -> float:
        return float(self.tags.get("threshold", "0.5"))

    def scores(self, matrix: pd.DataFrame) -> np.ndarray:
        """Fraud probability per row of a model matrix (the version's own feature columns)."""
        import numpy as np

        from pipelines.fraud.features import MODEL_FEATURES

        missing = sorted(set(self.features) - set(MODEL_FEATURES))
        if missing:
            raise GateError(
                f"{MODEL_NAME} v{self.version} needs features this code does not compute ({', '.join(missing)}); "
                "retrain it."
            )
        values = matrix[self.features].to_numpy(dtype=np.float32)
        return np.asarray(self.booster.inplace_predict(values), dtype=float)


def load_fraud_version(version: str) -> FraudVersion:
    """One registered version: its booster read from XGBoost's file, and its tags."""
    import xgboost

    tags = version_tags(MODEL_NAME, version)
    folder = download_version(MODEL_NAME, version)
    files = sorted(folder.glob("model.*"))
    if not files:
        raise GateError(f"{MODEL_NAME} v{version} holds no XGBoost model file; register it again with {TRAIN_HINT}.")
    booster = xgboost.Booster()
    booster.load_model(str(files[0]))
    return FraudVersion(version, booster, tags)
