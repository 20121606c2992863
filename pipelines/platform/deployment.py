"""Deployment patterns every serving design shares: hot reload, shadow and canary routing, the prediction log.

A design supplies only a loader (`alias -> ServingModel`: fetch from the registry, check, prepare for scoring)
and its scoring code; this module decides which model answers a request and keeps the models current:

- `ModelSlots` holds the `champion` and the `challenger`. Swapping one is a single reference assignment, so a
  request that took a model at its start finishes on it while later requests get the new one.
- `ModelWatcher` looks up the aliases every `model_refresh_seconds` in a background thread and loads a moved
  alias there, off the request path. A failed load keeps the old model and logs one line; removing the
  `challenger` alias ends a shadow or canary.
- `TrafficRouter`: `serving_mode` off | shadow | canary. Canary traffic is chosen by a seeded hash of a key
  (the customer for fraud), so the same key always lands on the same variant and a test can predict it.
- `ShadowRunner` runs the challenger after the response is computed, on the event loop's next turn when there is
  one; its errors are counted and logged, never raised.
- `PredictionLogger` sends one `PredictionRecord` per prediction, served or shadow, to `<design>.predictions`.
- `DeploymentMetrics`: Prometheus gauges and counters (model versions, predictions, shadow errors).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast, get_args

from pipelines.platform import registry
from pipelines.platform.predictions import PredictionRecord, Variant, predictions_topic
from pipelines.platform.stream import encode, make_producer
from pipelines.settings import Settings

if TYPE_CHECKING:
    from kafka import KafkaProducer

log = logging.getLogger("mlsd.deployment")

ServingMode = Literal["off", "shadow", "canary"]
SERVING_MODES: tuple[str, ...] = get_args(ServingMode)
# The two slots are named after the registry aliases they follow.
CHAMPION = cast(Variant, registry.CHAMPION)
CHALLENGER = cast(Variant, registry.CHALLENGER)
VARIANTS: tuple[Variant, Variant] = (CHAMPION, CHALLENGER)

M = TypeVar("M")


@dataclass(frozen=True)
class ServingModel(Generic[M]):
    """A model ready to score: what the design's loader returns for one alias."""

    name: str
    version: str
    model: M
    info: dict[str, Any] = field(default_factory=dict)  # shown by the service's /model (threshold, strategy, ...)
    loaded_at: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "loaded_at": self.loaded_at, **self.info}


Loader = Callable[[str], ServingModel[M]]
SwapListener = Callable[[str, "ServingModel[Any] | None", "ServingModel[Any] | None"], None]


class ModelSlots(Generic[M]):
    """The champion and the challenger a service scores with.

    Readers take `slots.champion` once per request and keep that object; `swap` replaces the reference in one
    assignment, which is atomic in Python, so nobody ever sees a half-loaded model and nobody waits for a load.
    """

    def __init__(self) -> None:
        self.champion: ServingModel[M] | None = None
        self.challenger: ServingModel[M] | None = None
        self._listeners: list[SwapListener] = []

    def get(self, variant: str) -> ServingModel[M] | None:
        return self.champion if variant == CHAMPION else self.challenger

    def swap(self, variant: str, model: ServingModel[M] | None) -> ServingModel[M] | None:
        """Put `model` in the slot; return what was there."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; use one of {', '.join(VARIANTS)}")
        old = self.get(variant)
        setattr(self, variant, model)
        for listener in self._listeners:
            listener(variant, model, old)
        return old

    def on_swap(self, listener: SwapListener) -> None:
        self._listeners.append(listener)

    def describe(self) -> dict[str, dict[str, Any] | None]:
        return {variant: (m.describe() if (m := self.get(variant)) else None) for variant in VARIANTS}


def alias_version(name: str, alias: str) -> str | None:
    """The version `name@alias` points at now, or None when there is no such alias (one small registry query)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            return None
        raise


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class ModelWatcher(Generic[M]):
    """Keeps the slots on the versions the registry aliases point at.

    `check()` does one round: for each alias whose version differs from the slot's, call the loader and swap the
    result in. `start()` runs rounds every `interval_s` in a daemon thread. A version that failed to load is
    retried after `retry_failed_s` (not every round), and each failure is logged once. A removed `challenger`
    alias empties its slot (that stops a shadow or canary); the champion slot always keeps a model.
    """

    def __init__(
        self,
        name: str,
        slots: ModelSlots[M],
        loader: Loader[M],
        aliases: Sequence[str] = (CHAMPION,),
        interval_s: float = 5.0,
        version_of: Callable[[str, str], str | None] = alias_version,
        retry_failed_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.slots = slots
        self.loader = loader
        self.aliases = tuple(aliases)
        self.interval_s = interval_s
        self.version_of = version_of
        self.retry_failed_s = retry_failed_s
        self.clock = clock
        self.swaps = 0
        self.failures = 0
        self._failed: dict[str, tuple[str, float]] = {}  # alias -> (version that failed, when)
        self._registry_down = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> list[ServingModel[M]]:
        """One round over the aliases; returns the models swapped in."""
        swapped: list[ServingModel[M]] = []
        for alias in self.aliases:
            try:
                version = self.version_of(self.name, alias)
            except Exception as exc:  # registry unreachable: keep serving what we have
                if not self._registry_down:
                    log.warning("cannot look up %s@%s, keeping the loaded models: %s", self.name, alias, _one_line(exc))
                self._registry_down = True
                return swapped
            if self._registry_down:
                log.warning("registry reachable again; watching %s", self.name)
                self._registry_down = False
            current = self.slots.get(alias)
            if version is None and alias == CHALLENGER and current is not None:
                # Removing the alias is how a shadow or canary is stopped; the champion slot is never emptied.
                self.slots.swap(alias, None)
                self.swaps += 1
                log.info("%s@%s removed: champion only from now on (was v%s)", self.name, alias, current.version)
                continue
            if version is None or (current is not None and current.version == version):
                continue
            failed = self._failed.get(alias)
            if failed and failed[0] == version and self.clock() - failed[1] < self.retry_failed_s:
                continue
            started = time.perf_counter()
            try:
                model = self.loader(alias)
            except Exception as exc:
                self.failures += 1
                if not failed or failed[0] != version:
                    kept = f"v{current.version}" if current else "nothing"
                    log.warning(
                        "%s@%s v%s did not load, still serving %s: %s", self.name, alias, version, kept, _one_line(exc)
                    )
                self._failed[alias] = (version, self.clock())
                continue
            self._failed.pop(alias, None)
            old = self.slots.swap(alias, model)
            self.swaps += 1
            swapped.append(model)
            log.info(
                "%s@%s now v%s (was %s), loaded in %.2f s off the request path",
                self.name,
                alias,
                model.version,
                f"v{old.version}" if old else "empty",
                time.perf_counter() - started,
            )
        return swapped

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception as exc:  # the watcher must outlive any surprise; the slots keep their models
                log.warning("model watcher round failed: %s", _one_line(exc))

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None


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
            log.warning("shadow prediction failed (%d so far): %s", self.errors, _one_line(exc))
        if self.on_error is not None:
            self.on_error(exc)


class PredictionLogger:
    """Sends prediction records to the design's predictions topic; Kafka batches them in the background."""

    def __init__(self, producer: KafkaProducer | None, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self.sent = 0
        self.dropped = 0

    @classmethod
    def for_design(cls, settings: Settings, design: str, publish: bool = True) -> PredictionLogger:
        # linger: a send only appends to a buffer on the request path; the I/O thread ships ~100 ms batches.
        # gzip: kafka-python checksums each batch (CRC-32C) in pure Python, ~0.2 ms per KB with the GIL held, which
        # showed up as a request's p99; the records' JSON shrinks ~8x in C first, so the checksum has little to do.
        producer = make_producer(settings, linger_ms=100, compression_type="gzip") if publish else None
        return cls(producer, predictions_topic(design))

    def log(self, record: PredictionRecord) -> None:
        if self.producer is None:
            return
        try:
            # Keyed by request: the served and the shadow record of a request share a partition and their order.
            self.producer.send(self.topic, encode(record), key=record.request_id.encode())
            self.sent += 1
        except Exception as exc:  # the log must never fail the request it describes
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "prediction record not sent to %s (%d so far): %s", self.topic, self.dropped, _one_line(exc)
                )

    def close(self) -> None:
        if self.producer is not None:
            self.producer.flush(timeout=5)
            self.producer.close(timeout=5)
            self.producer = None


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

    def model_swapped(self, variant: str, new: ServingModel[Any] | None, old: ServingModel[Any] | None) -> None:
        if old is not None:
            self.version_info.labels(self.design, variant, old.version).set(0)
        if new is not None:
            self.version_info.labels(self.design, variant, new.version).set(1)

    def predicted(self, variant: Variant, served: bool) -> None:
        self._counters[(variant, served)].inc()

    def shadow_failed(self, _exc: BaseException | None = None) -> None:
        self._shadow_errors.inc()


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
        version_of: Callable[[str, str], str | None] = alias_version,
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
            model_name, self.slots, loader, aliases, settings.model_refresh_seconds, version_of
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
        deployment.load()
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
            raise RuntimeError("no champion loaded; call load() first")
        return champion

    def load(self) -> None:
        """Load the champion now (its errors propagate: no service without one), then whatever else is registered."""
        self.slots.swap(CHAMPION, self.loader(CHAMPION))
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
            raise RuntimeError("no champion loaded; call load() first")
        assignment = self.router.assign(key, challenger is not None)
        if assignment.served == CHALLENGER and challenger is not None:
            return assignment, challenger, None
        return assignment, champion, challenger if assignment.shadow else None

    def log(self, record: PredictionRecord) -> None:
        self.logger.log(record)
        if self.metrics is not None:
            self.metrics.predicted(record.variant, record.served)

    def describe(self) -> dict[str, Any]:
        return {
            "mode": self.router.mode,
            "canary_share": self.router.canary_share,
            **self.slots.describe(),
            "shadow": {"ran": self.shadow.ran, "errors": self.shadow.errors},
            "reload": {"swaps": self.watcher.swaps, "failed_loads": self.watcher.failures},
            "prediction_log": {"topic": self.logger.topic, "sent": self.logger.sent, "dropped": self.logger.dropped},
        }

    def close(self) -> None:
        self.watcher.stop()
        self.logger.close()
