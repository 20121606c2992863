"""Scoring one transaction: online features from Feast → champion model → rules → decision on Kafka.

The BentoML service in `services/fraud/service.py` is a thin shell around `FraudScorer`; keeping the logic here
lets tests and benchmarks call it without HTTP.
"""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np

from feature_repo.fraud import CUSTOMER_FEATURES, FEATURE_SERVICE, TERMINAL_FEATURES
from pipelines.fraud.events import DECISIONS_TOPIC, Decision, TransactionEvent
from pipelines.fraud.features import MODEL_FEATURES, STORED_MODEL_FEATURES, request_features
from pipelines.fraud.rules import RulesConfig, decide
from pipelines.fraud.train import MODEL_NAME
from pipelines.platform.features import open_feature_store
from pipelines.platform.registry import CHAMPION, connect_mlflow, load_alias
from pipelines.platform.stream import encode, make_producer
from pipelines.settings import Settings

STORED = CUSTOMER_FEATURES + TERMINAL_FEATURES
TOP_REASONS = 3


class FraudScorer:
    def __init__(self, settings: Settings, publish: bool = True) -> None:
        self.settings = settings
        connect_mlflow(settings)
        self.store = open_feature_store(settings)
        self.feature_service = self.store.get_feature_service(FEATURE_SERVICE)
        loaded = load_alias(MODEL_NAME, CHAMPION)
        self.model_version = loaded.version
        self.booster = loaded.model.get_booster()
        # One request is one row: a second OpenMP thread only adds spin-waiting next to the server's threads.
        self.booster.set_param({"nthread": 1})
        self.features = json.loads(loaded.tags.get("features", json.dumps(MODEL_FEATURES)))
        if self.features != MODEL_FEATURES:
            raise ValueError(
                f"{MODEL_NAME} v{loaded.version} was trained on other features than this code computes; retrain it."
            )
        self.rules = RulesConfig.from_settings(settings, float(loaded.tags.get("threshold", "0.5")))
        self.producer = make_producer(settings, linger_ms=100) if publish else None

    def online_features(self, customer_id: str, terminal_id: str) -> dict[str, float]:
        response = self.store.get_online_features(
            features=self.feature_service,
            entity_rows=[{"customer_id": customer_id, "terminal_id": terminal_id}],
        ).to_dict()
        return {name: _number(response.get(name, [None])[0]) for name in STORED}

    def score(self, transaction: TransactionEvent) -> Decision:
        started = time.perf_counter()
        stored = self.online_features(transaction.customer_id, transaction.terminal_id)
        columns: dict[str, Any] = {name: np.array([value]) for name, value in stored.items()}
        columns["timestamp_epoch"] = np.array([transaction.timestamp.timestamp()])
        columns["amount"] = np.array([transaction.amount])
        computed = request_features(columns)
        row = [computed[name][0] for name in MODEL_FEATURES[: len(MODEL_FEATURES) - len(STORED_MODEL_FEATURES)]]
        row += [0.0 if np.isnan(stored[name]) else stored[name] for name in STORED_MODEL_FEATURES]
        matrix = np.asarray([row], dtype=np.float32)
        score = float(self.booster.inplace_predict(matrix)[0])
        outcome, rule = decide(score, transaction.amount, transaction.customer_id, transaction.terminal_id, self.rules)
        reasons = self.reasons(matrix) if outcome != "approve" else []
        decision = Decision(
            transaction_id=transaction.transaction_id,
            decision=outcome,
            score=round(score, 6),
            model_version=self.model_version,
            reasons=reasons,
            rule=rule,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        if self.producer is not None:
            self.producer.send(DECISIONS_TOPIC, encode(decision), key=transaction.customer_id.encode())
        return decision

    def reasons(self, matrix: np.ndarray) -> list[str]:
        """The features that pushed the score up most.

        Per-feature contributions along each tree's decision path (XGBoost's approximate contributions): a
        quarter of the cost of exact SHAP values (0.27 vs 1.1 ms per row here) and the same top features in
        practice, which is what a reviewer needs.
        """
        from xgboost import DMatrix

        contributions = self.booster.predict(
            DMatrix(matrix, feature_names=MODEL_FEATURES, nthread=1), pred_contribs=True, approx_contribs=True
        )[0][:-1]
        order = np.argsort(contributions)[::-1][:TOP_REASONS]
        return [f"{MODEL_FEATURES[i]}={matrix[0, i]:.4g}" for i in order if contributions[i] > 0]

    def close(self) -> None:
        if self.producer is not None:
            self.producer.flush(timeout=5)
            self.producer.close(timeout=5)


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)
