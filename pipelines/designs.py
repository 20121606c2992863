"""The composition root: the designs this project runs, each plugged in once.

Everything generic (the embedded stack, monitoring, the gate, the retraining loop, the CLI, the demo, the compose
checks) iterates over `DESIGNS` or looks one up with `design()`; nothing outside a design's own package branches on
a design's name. A new design is a package with a `design.py` and one line here.
"""

from __future__ import annotations

from typing import Any, Literal

from pipelines.fraud.design import DESIGN as FRAUD
from pipelines.platform.design import Design
from pipelines.platform.errors import InvalidInput
from pipelines.recsys.design import DESIGN as RECSYS

DESIGNS: tuple[Design, ...] = (FRAUD, RECSYS)
NAMES: tuple[str, ...] = tuple(d.name for d in DESIGNS)
# The names as a type the CLI turns into a choice (`--design fraud|recsys`).
DesignName: Any = Literal[NAMES]  # type: ignore[valid-type]


def find_design(name: str | Design) -> Design:
    """The design called `name`, or the one whose registered model is `name` (`fraud` or `fraud-xgboost`).

    Functions that serve every design take a `Design` or its name and pass it here.
    """
    if isinstance(name, Design):
        return name
    for candidate in DESIGNS:
        if name in (candidate.name, candidate.model_name):
            return candidate
    known = ", ".join(f"{d.name} ({d.model_name})" for d in DESIGNS)
    raise InvalidInput(f"'{name}' is not a design or a registered model of one; use one of {known}.")


def all_topics() -> list[str]:
    """Every topic the stack needs: each design's own, its prediction log, and the monitoring alerts."""
    from pipelines.platform.predictions import ALERTS_TOPIC
    from pipelines.platform.stream import DLQ_SUFFIX

    return [topic for d in DESIGNS for topic in d.all_topics] + [ALERTS_TOPIC, ALERTS_TOPIC + DLQ_SUFFIX]


def topic_partitions(settings: Any) -> dict[str, int]:
    """Every topic with its partition count: `stream_partitions` for the topics designs split, else 1."""
    split = {topic for d in DESIGNS for topic in d.partitioned_topics}
    return {topic: settings.stream_partitions if topic in split else 1 for topic in all_topics()}


def feature_definitions() -> list:
    """Every design's Feast objects builder, for `feast apply` of the whole project."""
    return [d.feature_objects for d in DESIGNS]
