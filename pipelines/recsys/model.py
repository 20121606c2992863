"""The registered recommender: its name, and how one version is loaded without executing anything from the registry.

A version is an MLflow pyfunc logged as code (models-from-code, `pyfunc_model_code.py`), so no pickled Python
object is stored; its artifact `recommender/` is the folder `RecsysRanker.save` writes: numpy arrays, a faiss
index, XGBoost's JSON model, a Parquet item table and JSON settings. The services and the gate read that folder
directly (`load_recommender`); `mlflow.pyfunc.load_model` also works for anyone who wants the pyfunc.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.platform.registry import download_version, version_tags

if TYPE_CHECKING:
    from pipelines.recsys.rank import RecsysRanker

MODEL_NAME = "recsys-ranker"
TRAIN_HINT = "`mlsd recsys train`"
RECOMMENDER_ARTIFACT = "recommender"


def load_recommender(version: str) -> tuple[RecsysRanker, dict[str, str]]:
    """One registered version's candidate model and ranker, read from its files, and its tags."""
    from pipelines.platform.errors import InvalidInput
    from pipelines.recsys.rank import RecsysRanker

    tags = version_tags(MODEL_NAME, version)
    folder = download_version(MODEL_NAME, version) / "artifacts" / RECOMMENDER_ARTIFACT
    if not folder.is_dir():
        raise InvalidInput(
            f"{MODEL_NAME} v{version} holds no '{RECOMMENDER_ARTIFACT}' artifact; register it again with {TRAIN_HINT}."
        )
    return RecsysRanker.load(folder), tags
