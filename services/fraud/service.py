"""BentoML service for fraud scoring: POST /score with a transaction, get approve | review | decline.

Thin on purpose: Settings come from MLSD_* variables, the work happens in `pipelines.fraud.scoring.FraudScorer`.
Health: /livez and /readyz (ready once the champion model is loaded); OpenAPI docs at /docs.
"""

from __future__ import annotations

import gc

import bentoml

from pipelines.fraud.events import Decision, TransactionEvent

with bentoml.importing():
    from pipelines.fraud.scoring import FraudScorer
    from pipelines.settings import Settings


@bentoml.service(
    name="fraud-scorer",
    traffic={"timeout": 10, "concurrency": 256},
    # Per-request tracing costs about as much as the scoring itself on 2 cores; /score is left out of it.
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": ["/score", "/livez", "/readyz", "/metrics"]},
)
class FraudService:
    def __init__(self) -> None:
        self.scorer = FraudScorer(Settings())
        # Everything loaded so far lives as long as the process: keep it out of the garbage collector's full
        # passes, which otherwise stall a request for a few hundred milliseconds now and then.
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        return self.scorer.booster is not None

    @bentoml.api(route="/score")
    async def score(self, transaction: TransactionEvent, /) -> Decision:
        # ~1 ms of CPU per request: running it on the event loop beats a thread-pool hand-off under load.
        return self.scorer.score(transaction)

    @bentoml.api(route="/model")
    async def model(self) -> dict:
        return {
            "name": "fraud-xgboost",
            "version": self.scorer.model_version,
            "threshold": self.scorer.rules.decline_threshold,
        }
