"""The models a service holds and how they follow the registry: slots, the gate check, hot reload.

- `ModelSlots` holds the `champion` and the `challenger`. Swapping one is a single reference assignment, so a
  request that took a model at its start finishes on it while later requests get the new one.
- `ModelWatcher` looks up the aliases every `model_refresh_seconds` in a background thread and loads a moved
  alias there, off the request path. A failed load keeps the old model and logs one line; removing the
  `challenger` alias ends a shadow or canary.
- Only what the gate approved is served: an alias is followed only to a version the registry audit says it was
  moved to (register, gated promote, rollback — `registry.approved_version`). An alias moved any other way (a bare
  MLflow client, the UI) is refused and logged once, and the slot keeps (or, at start, loads) the approved version.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

from pipelines.platform import registry
from pipelines.platform.errors import ServiceUnavailable, one_line
from pipelines.platform.predictions import Variant

log = logging.getLogger("mlsd.deployment")

# The two slots are named after the registry aliases they follow.
CHAMPION = cast(Variant, registry.CHAMPION)
CHALLENGER = cast(Variant, registry.CHALLENGER)
VARIANTS: tuple[Variant, Variant] = (CHAMPION, CHALLENGER)

M = TypeVar("M")


@dataclass(frozen=True)
class ServingModel(Generic[M]):
    """A model ready to score: what the design's loader returns for one registered version."""

    name: str
    version: str
    model: M
    info: dict[str, Any] = field(default_factory=dict)  # shown by the service's /model (threshold, strategy, ...)
    loaded_at: float = field(default_factory=time.time)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "loaded_at": self.loaded_at, **self.info}


Loader = Callable[[str], ServingModel[M]]  # registered version -> model ready to score
SwapListener = Callable[[str, "ServingModel[Any] | None", "ServingModel[Any] | None"], None]
VersionLookup = Callable[[str, str], "str | None"]  # (model name, alias) -> version or None


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


class ModelWatcher(Generic[M]):
    """Keeps the slots on the gate-approved versions the registry aliases point at.

    `check()` does one round: for each alias, the version to serve (`target`); when it differs from the slot's,
    call the loader and swap the result in. `start()` runs rounds every `interval_s` in a daemon thread. A version
    that failed to load is retried after `retry_failed_s` (not every round), and each failure is logged once. A
    removed `challenger` alias empties its slot (that stops a shadow or canary); the champion slot always keeps a
    model. A registry that cannot be reached keeps the loaded models and is logged when it goes and comes back.
    """

    def __init__(
        self,
        name: str,
        slots: ModelSlots[M],
        loader: Loader[M],
        aliases: Sequence[str] = (CHAMPION,),
        interval_s: float = 5.0,
        version_of: VersionLookup = registry.alias_version,
        retry_failed_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        approved_of: VersionLookup = registry.approved_version,
    ) -> None:
        self.name = name
        self.slots = slots
        self.loader = loader
        self.aliases = tuple(aliases)
        self.interval_s = interval_s
        self.version_of = version_of
        self.approved_of = approved_of
        self.retry_failed_s = retry_failed_s
        self.clock = clock
        self.swaps = 0
        self.failures = 0
        self.refusals: dict[str, str] = {}  # alias -> the unapproved version it points at now
        self.refused = 0  # unapproved versions seen (each counted once)
        self._unapproved: dict[str, str] = {}  # alias -> the unapproved version seen at the last look
        self._failed: dict[str, tuple[str, float]] = {}  # alias -> (version that failed, when)
        self._registry_down = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def target(self, alias: str) -> str | None:
        """The version `alias` should serve: where it points if the gate approved that, else the approved one.

        None when the alias does not exist. Registry errors propagate. The registry module moves an alias first and
        writes its audit record right after, so a version is called refused only when two looks in a row found it
        unapproved.
        """
        version = self.version_of(self.name, alias)
        current = self.slots.get(alias)
        if version is None or (current is not None and current.version == version):
            self._clear_refusal(alias)
            return version
        approved = self.approved_of(self.name, alias)
        if approved == version:
            self._clear_refusal(alias)
            return version
        if self._unapproved.get(alias) == version and self.refusals.get(alias) != version:
            self.refusals[alias] = version
            self.refused += 1
            kept = (
                f"v{current.version}"
                if current is not None
                else (
                    f"v{approved}, the last version the gate approved" if alias == CHAMPION and approved else "nothing"
                )
            )
            log.warning(
                "refusing %s@%s v%s: the registry audit has no promotion of it (the alias was moved outside the "
                "gate); serving %s; move it with `mlsd registry promote` or training's --alias",
                self.name,
                alias,
                version,
                kept,
            )
        self._unapproved[alias] = version
        if alias == CHALLENGER:  # a refused challenger never brings back an older one: keep what the slot has
            return current.version if current is not None else None
        return approved

    def _clear_refusal(self, alias: str) -> None:
        self._unapproved.pop(alias, None)
        self.refusals.pop(alias, None)

    def check(self) -> list[ServingModel[M]]:
        """One round over the aliases; returns the models swapped in."""
        swapped: list[ServingModel[M]] = []
        for alias in self.aliases:
            try:
                version = self.target(alias)
            except Exception as exc:  # registry unreachable: keep serving what we have
                if not self._registry_down:
                    log.warning("cannot look up %s@%s, keeping the loaded models: %s", self.name, alias, one_line(exc))
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
            model = self._load(alias, version, current)
            if model is not None:
                swapped.append(model)
        return swapped

    def _load(self, alias: str, version: str, current: ServingModel[M] | None) -> ServingModel[M] | None:
        failed = self._failed.get(alias)
        if failed and failed[0] == version and self.clock() - failed[1] < self.retry_failed_s:
            return None
        started = time.perf_counter()
        try:
            model = self.loader(version)
        except Exception as exc:
            self.failures += 1
            if not failed or failed[0] != version:
                kept = f"v{current.version}" if current else "nothing"
                log.warning(
                    "%s@%s v%s did not load, still serving %s: %s", self.name, alias, version, kept, one_line(exc)
                )
            self._failed[alias] = (version, self.clock())
            return None
        self._failed.pop(alias, None)
        old = self.slots.swap(alias, model)
        self.swaps += 1
        log.info(
            "%s@%s now v%s (was %s), loaded in %.2f s off the request path",
            self.name,
            alias,
            model.version,
            f"v{old.version}" if old else "empty",
            time.perf_counter() - started,
        )
        return model

    def load_champion(self, wait_for_registry: bool = False) -> bool:
        """Load the champion now; its errors propagate (no service without one).

        With `wait_for_registry`, a registry that cannot be reached is logged instead and False returned: the
        service starts without a champion (not ready) and the watcher loads one as soon as the registry answers.
        """
        try:
            version = self.target(CHAMPION)
        except Exception as exc:
            if not wait_for_registry:
                raise
            self._registry_down = True
            log.warning(
                "cannot reach the registry to find %s@%s, not ready until it answers (retrying every %.0f s): %s",
                self.name,
                CHAMPION,
                self.interval_s,
                one_line(exc),
            )
            return False
        if version is None:
            raise ServiceUnavailable(
                f"'{self.name}' has no gate-approved champion to serve; train and register one first "
                "(`mlsd <design> train`) or promote a version with `mlsd registry promote`."
            )
        self.slots.swap(CHAMPION, self.loader(version))
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "swaps": self.swaps,
            "failed_loads": self.failures,
            "refused_versions": self.refused,
            "refusing": dict(self.refusals),
            "registry_reachable": not self._registry_down,
        }

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
                log.warning("model watcher round failed: %s", one_line(exc))

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
