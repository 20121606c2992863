"""BentoML service for recommendations: POST /recommend with a user id and k, get k items with their stage.

Thin on purpose: Settings come from MLSD_* variables, the work happens in `pipelines.recsys.serving.Recommender`.
Health: /livez and /readyz; OpenAPI docs at /docs.
"""

from __future__ import annotations

import gc

import bentoml

from pipelines.recsys.serving import RecommendRequest, RecommendResponse

with bentoml.importing():
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
        self.recommender = Recommender(Settings())
        gc.collect()
        gc.freeze()  # long-lived start-up objects stay out of full collections (request stalls)

    @bentoml.api(route="/recommend")
    async def recommend(self, request: RecommendRequest, /) -> RecommendResponse:
        return self.recommender.recommend(request)
