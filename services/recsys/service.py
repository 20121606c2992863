"""BentoML service for recommendations: POST /recommend with a user id and k, get k items with their stage.

Thin on purpose: Settings come from MLSD_* variables, the work happens in `pipelines.recsys.serving.Recommender`.
Serving mode (MLSD_SERVING_MODE off | shadow | canary) and hot reload of the `champion` / `challenger` aliases
come from `pipelines.platform.deployment`, as in the fraud service. Health: /livez and /readyz (ready once the
champion is loaded); /model shows both slots and the item table; /metrics adds `mlsd_model_version_info`,
`mlsd_predictions_total` and `mlsd_shadow_errors_total` to BentoML's own series; OpenAPI docs at /docs.
"""

from __future__ import annotations

import gc
import logging

import bentoml

from pipelines.recsys.serving import RecommendRequest, RecommendResponse

with bentoml.importing():
    from pipelines.platform.deployment import DeploymentMetrics
    from pipelines.platform.http import harden, unavailable_as_503
    from pipelines.recsys.serving import Recommender
    from pipelines.settings import Settings


@bentoml.service(
    name="recsys-recommender",
    traffic={"timeout": 10, "concurrency": 128},
    logging={"access": {"enabled": False}},
    tracing={"excluded_urls": ["/recommend", "/livez", "/readyz", "/metrics"]},
)
class RecommendService:
    def __init__(self) -> None:
        # Imported here, in the worker: BentoML sets the multiprocess metrics folder before __init__ runs.
        import prometheus_client

        logging.getLogger("mlsd").setLevel(logging.INFO)  # model swaps get a line in the service log
        self.recommender = Recommender(Settings(), metrics=DeploymentMetrics("recsys", prometheus_client))
        gc.collect()
        gc.freeze()  # long-lived start-up objects stay out of full collections (request stalls)

    @bentoml.on_shutdown
    def close(self) -> None:
        # Stops the watcher and the item refresh, flushes the prediction records still in the producer's batch.
        self.recommender.close()

    def __is_ready__(self) -> bool:
        return self.recommender.deployment.slots.champion is not None

    @bentoml.api(route="/recommend")
    async def recommend(self, request: RecommendRequest, /) -> RecommendResponse:
        # ~10 ms of CPU per request, run on the event loop; only the user-row read goes to a thread, waited for at
        # most its budget (then the most popular items answer). A shadow runs on the loop's next turn.
        with unavailable_as_503():
            return await self.recommender.recommend_async(request)

    @bentoml.api(route="/model")
    async def model(self) -> dict:
        with unavailable_as_503():
            champion = self.recommender.champion
        return {"name": champion.name, "version": champion.version, **self.recommender.describe()}


# Before BentoML reads a body: 415 unless JSON, 413 past the size limit, 400 in one sentence naming the bad field;
# /docs and an OpenAPI document that declares those answers.
harden(RecommendService, max_body=Settings().serving_max_request_bytes)
