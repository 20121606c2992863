"""The file MLflow logs as the recommender's model code (models-from-code): it names the class, nothing pickled."""

import mlflow.models

from pipelines.recsys.pyfunc import RecommenderModel

mlflow.models.set_model(RecommenderModel())
