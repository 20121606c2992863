"""Deployment patterns every serving design shares: routing, shadow, degraded answers, the prediction log.

A design supplies only a loader (`version -> ServingModel`: fetch from the registry, check, prepare for scoring)
and its scoring code; this module decides which model answers a request:

- the slots and the watcher that keeps them on the gate-approved versions live in `pipelines.platform.watcher`;
- `TrafficRouter`: `serving_mode` off | shadow | canary. Canary traffic is chosen by a seeded hash of a key
  (the customer for fraud), so the same key always lands on the same variant and a test can predict it.
- `ShadowRunner` runs the challenger after the response is computed, on the event loop's next turn when there is
  one; its errors are counted and logged, never raised.
- `PredictionLogger` (`pipelines.platform.predictions`) queues one `PredictionRecord` per prediction, served or
  shadow, for `<design>.predictions`, without waiting for the broker.
- `DeploymentMetrics`: Prometheus gauges and counters (model versions, predictions, degraded answers, shadow errors).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar, get_args

from pipelines.platform import registry
from pipelines.platform.errors import ServiceUnavailable, one_line
from pipelines.platform.predictions import PredictionLogger, PredictionRecord, Variant
from pipelines.platform.watcher import (
    CHALLENGER,
    CHAMPION,
    VARIANTS,
    Loader,
    ModelSlots,
    ModelWatcher,
    ServingModel,
    VersionLookup,
)
from pipelines.settings import Settings

log = logging.getLogger("mlsd.deployment")

ServingMode = Literal["off", "shadow", "canary"]
SERVING_MODES: tuple[str, ...] = get_args(ServingMode)

M = TypeVar("M")


@dataclass(frozen=True)
class Assignment:
    """Which variant answers a request, and which one (if any) scores it in the shadow."""

    served: Variant
    shadow: Variant | None = None


CHAMPION_ONLY = Assignment(CHAMPION)
SHADOWED = Assignment(CHAMPION, CHALLENGER)
CANARY = Assignment(CHALLENGER)


class TrafficRouter:
    """Decides per request: champion only, champion + challenger in the shadow, or a canary share to the challenger.

    The canary bucket is a keyed hash of the routing key into [0, 1): deterministic for a given seed (a customer
    stays on one variant, a test knows where a key goes) and independent of Python's per-process hash seed.
    """

    def __init__(self, mode: str = "off", canary_share: float = 0.1, seed: int = 7) -> None:
        if mode not in SERVING_MODES:
            raise ValueError(f"unknown serving mode {mode!r}; use one of {', '.join(SERVING_MODES)}")
        if not 0.0 <= canary_share <= 1.0:
            raise ValueError(f"canary share {canary_share} is not between 0 and 1")
        self.mode = mode
        self.canary_share = canary_share
        self._key = seed.to_bytes(8, "little", signed=True)

    def bucket(self, key: str) -> float:
        digest = hashlib.blake2b(key.encode(), digest_size=8, key=self._key).digest()
        return int.from_bytes(digest, "little") / 2.0**64

    def assign(self, key: str, challenger_ready: bool) -> Assignment:
        if self.mode == "off" or not challenger_ready:
            return CHAMPION_ONLY
        if self.mode == "shadow":
            return SHADOWED
        return CANARY if self.bucket(key) < self.canary_share else CHAMPION_ONLY


def defer_to_event_loop(task: Callable[[], None]) -> None:
    """Run `task` on the running event loop's next turn (after the current response), or now without a loop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        task()
        return
    loop.call_soon(task)


class ShadowRunner:
    """Runs shadow work so that it can never change or fail the request it shadows."""

    LOG_EVERY = 1000  # after the first error, one log line per this many errors

    def __init__(
        self,
        defer: Callable[[Callable[[], None]], Any] = defer_to_event_loop,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.defer = defer
        self.on_error = on_error
        self.ran = 0
        self.errors = 0

    def submit(self, work: Callable[[], None]) -> None:
        try:
            self.defer(lambda: self._run(work))
        except Exception as exc:  # a defer that cannot take work (e.g. a closing loop) is a shadow error too
            self._failed(exc)

    def _run(self, work: Callable[[], None]) -> None:
        self.ran += 1
        try:
            work()
        except Exception as exc:
            self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.errors == 1 or self.errors % self.LOG_EVERY == 0:
            log.warning("shadow prediction failed (%d so far): %s", self.errors, one_line(exc))
        if self.on_error is not None:
            self.on_error(exc)


class DeploymentMetrics:
    """Prometheus series for one design: which versions serve, how many predictions each variant made, shadow errors.

    `prometheus` is the prometheus-client API (the `prometheus_client` module, or `bentoml.metrics` which
    forwards to it); a service creates this in its worker so the series land in BentoML's /metrics.
    """

    def __init__(self, design: str, prometheus: Any, registry: Any = None) -> None:
        extra = {} if registry is None else {"registry": registry}
        self.design = design
        self.version_info = prometheus.Gauge(
            "mlsd_model_version_info",
            "1 for the model version each variant serves now, 0 for versions it served before",
            ["design", "variant", "version"],
            multiprocess_mode="max",
            **extra,
        )
        self.predictions = prometheus.Counter(
            "mlsd_predictions_total",
            "Predictions made, by variant; served=false is a shadow",
            ["design", "variant", "served"],
            **extra,
        )
        self.shadow_errors = prometheus.Counter(
            "mlsd_shadow_errors_total",
            "Shadow predictions that raised (the response was not affected)",
            ["design"],
            **extra,
        )
        # Label lookups resolved once: the request path only increments.
        self._counters = {
            (variant, served): self.predictions.labels(design, variant, str(served).lower())
            for variant in VARIANTS
            for served in (True, False)
        }
        self._shadow_errors = self.shadow_errors.labels(design)
        self.degraded = prometheus.Counter(
            "mlsd_degraded_answers_total",
            "Answers given without a dependency (rules only, popularity, ...), by the dependency that failed",
            ["design", "dependency"],
            **extra,
        )

    def model_swapped(self, variant: str, new: ServingModel[Any] | None, old: ServingModel[Any] | None) -> None:
        if old is not None:
            self.version_info.labels(self.design, variant, old.version).set(0)
        if new is not None:
            self.version_info.labels(self.design, variant, new.version).set(1)

    def predicted(self, variant: Variant, served: bool) -> None:
        self._counters[(variant, served)].inc()

    def shadow_failed(self, _exc: BaseException | None = None) -> None:
        self._shadow_errors.inc()

    def answered_degraded(self, dependency: str) -> None:
        self.degraded.labels(self.design, dependency).inc()


class Deployment(Generic[M]):
    """Everything a design's scorer needs to serve by the registry aliases: slots, watcher, router, shadow, log.

    Typical use in a scorer: `deployment.load()` at start (raises if the champion cannot load), `start()` for hot
    reload; per request take `assign(key)`, score with the slot it names, `log()` the record, and hand the
    challenger's work to `shadow.submit()` after the response is built.
    """

    def __init__(
        self,
        design: str,
        model_name: str,
        loader: Loader[M],
        settings: Settings,
        logger: PredictionLogger,
        metrics: DeploymentMetrics | None = None,
        defer: Callable[[Callable[[], None]], Any] = defer_to_event_loop,
        version_of: VersionLookup = registry.alias_version,
        approved_of: VersionLookup = registry.approved_version,
    ) -> None:
        self.design = design
        self.model_name = model_name
        self.loader = loader
        self.logger = logger
        self.metrics = metrics
        self.router = TrafficRouter(settings.serving_mode, settings.canary_share, settings.seed)
        self.slots: ModelSlots[M] = ModelSlots()
        if metrics is not None:
            self.slots.on_swap(metrics.model_swapped)
        self.shadow = ShadowRunner(defer, on_error=metrics.shadow_failed if metrics else None)
        aliases = (CHAMPION,) if self.router.mode == "off" else VARIANTS
        self.watcher: ModelWatcher[M] = ModelWatcher(
            model_name, self.slots, loader, aliases, settings.model_refresh_seconds, version_of, approved_of=approved_of
        )

    @classmethod
    def serving(
        cls,
        design: str,
        model_name: str,
        loader: Loader[M],
        settings: Settings,
        publish: bool = True,
        metrics: DeploymentMetrics | None = None,
        defer: Callable[[Callable[[], None]], Any] = defer_to_event_loop,
        watch: bool = True,
    ) -> Deployment[M]:
        """A design scorer's deployment, ready: the design's prediction log, the champion loaded and, with `watch`,
        the aliases followed (hot reload)."""
        deployment = cls(
            design, model_name, loader, settings, PredictionLogger.for_design(settings, design, publish), metrics, defer
        )
        deployment.load(wait_for_registry=watch)
        if watch:
            deployment.start()
        return deployment

    @property
    def mode(self) -> str:
        return self.router.mode

    @property
    def champion(self) -> ServingModel[M]:
        champion = self.slots.champion
        if champion is None:
            raise self._not_ready()
        return champion

    def load(self, wait_for_registry: bool = False) -> None:
        """Load the champion now (its errors propagate: no service without one), then whatever else is registered.

        With `wait_for_registry`, an unreachable registry only delays the champion (see `ModelWatcher`)."""
        if not self.watcher.load_champion(wait_for_registry):
            return
        self.watcher.check()
        if self.router.mode != "off" and self.slots.challenger is None:
            log.warning(
                "%s mode without a %s@%s yet: serving the champion only until one is registered",
                self.router.mode,
                self.model_name,
                CHALLENGER,
            )

    def start(self) -> None:
        self.watcher.start()

    def assign(self, key: str) -> tuple[Assignment, ServingModel[M], ServingModel[M] | None]:
        """The routing decision with the models it names, taken once so a swap mid-request changes nothing."""
        champion, challenger = self.slots.champion, self.slots.challenger
        if champion is None:
            raise self._not_ready()
        assignment = self.router.assign(key, challenger is not None)
        if assignment.served == CHALLENGER and challenger is not None:
            return assignment, challenger, None
        return assignment, champion, challenger if assignment.shadow else None

    def _not_ready(self) -> ServiceUnavailable:
        return ServiceUnavailable(
            f"No {self.model_name} champion is loaded yet (the registry has not answered); retry shortly."
        )

    def log(self, record: PredictionRecord) -> None:
        self.logger.log(record)
        if self.metrics is not None:
            self.metrics.predicted(record.variant, record.served)

    def log_degraded(self, record: PredictionRecord, reason: str, dependency: str) -> None:
        """A degraded answer's record, flagged with why, and counted by the dependency that failed."""
        self.log(record.model_copy(update={"degraded": reason}))
        if self.metrics is not None:
            self.metrics.answered_degraded(dependency)

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.router.mode,
            "canary_share": self.router.canary_share,
            **self.slots.describe(),
            "shadow": {"ran": self.shadow.ran, "errors": self.shadow.errors},
            "reload": self.watcher.describe(),
            "prediction_log": self.logger.describe(),
        }

    def close(self) -> None:
        self.watcher.stop()
        self.logger.close()
