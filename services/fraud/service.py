"""BentoML service for fraud scoring: POST /score with a transaction, get approve | review | decline.

Thin on purpose: Settings come from MLSD_* variables, the work happens in `pipelines.fraud.scoring.FraudScorer`.
Serving mode (MLSD_SERVING_MODE off | shadow | canary) and hot reload of the `champion` / `challenger` aliases
come from `pipelines.platform.deployment`. Health: /livez and /readyz (ready once the champion is loaded);
/model shows both slots; /metrics adds `mlsd_model_version_info`, `mlsd_predictions_total` and
`mlsd_shadow_errors_total` to BentoML's own series; OpenAPI docs at /docs.
"""

from __future__ import annotations

import gc
import logging

import bentoml

from pipelines.fraud.events import Decision, TransactionEvent

with bentoml.importing():
    from pipelines.fraud.scoring import FraudScorer
    from pipelines.platform.deployment import DeploymentMetrics
    from pipelines.platform.http import harden, unavailable_as_503
    from pipelines.settings import Settings


def _log_deployment_events() -> None:
    """Model swaps are worth a line in the service log (BentoML's handlers print it); nothing per request is."""
    logging.getLogger("mlsd").setLevel(logging.INFO)


@bentoml.service(
    name="fraud-scorer",
    traffic={"timeout": 10, "concurrency": 256},
    # Per-request tracing costs about as much as the scoring itself on 2 cores; /score is left out of it.
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": ["/score", "/livez", "/readyz", "/metrics"]},
)
class FraudService:
    def __init__(self) -> None:
        # Imported here, in the worker: BentoML sets the multiprocess metrics folder before __init__ runs, and
        # series created after that show up on /metrics (bentoml.metrics, now deprecated, forwards to it too).
        import prometheus_client

        _log_deployment_events()
        self.scorer = FraudScorer(Settings(), metrics=DeploymentMetrics("fraud", prometheus_client))
        # Everything loaded so far lives as long as the process: keep it out of the garbage collector's full
        # passes, which otherwise stall a request for a few hundred milliseconds now and then.
        gc.collect()
        gc.freeze()

    @bentoml.on_shutdown
    def close(self) -> None:
        # Stops the watcher and flushes the prediction records still waiting in the producer's batch.
        self.scorer.close()

    def __is_ready__(self) -> bool:
        return self.scorer.deployment.slots.champion is not None

    @bentoml.api(route="/score")
    async def score(self, transaction: TransactionEvent, /) -> Decision:
        # ~1 ms of CPU per request runs on the event loop; only the online-store read goes to a thread, waited for
        # at most its budget (then the rules alone decide). A shadow prediction runs on the loop's next turn.
        with unavailable_as_503():
            return await self.scorer.score_async(transaction)

    @bentoml.api(route="/model")
    async def model(self) -> dict:
        with unavailable_as_503():
            champion = self.scorer.champion
        return {
            "name": champion.name,
            "version": champion.version,
            "threshold": champion.model.rules.decline_threshold,
            **self.scorer.describe(),
        }


# Before BentoML reads a body: 415 unless JSON, 413 past the size limit, 400 in one sentence naming the bad field;
# /docs and an OpenAPI document that declares those answers.
harden(FraudService, max_body=Settings().serving_max_request_bytes)
