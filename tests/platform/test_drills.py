"""Small versions of the fault drills (`mlsd drill`): real processor processes, a broker of their own, SIGKILLs.

The full-size runs and their figures are in benchmarks/results/drills/ (docs/designs/fraud.md).
"""

from __future__ import annotations

import pytest

from pipelines.designs import find_design
from pipelines.platform.drills import run_drill
from pipelines.settings import Settings

pytestmark = pytest.mark.integration


def drill(tmp_path, scenario: str, **options):  # type: ignore[no-untyped-def]
    spec = find_design("fraud").drills
    assert spec is not None
    settings = Settings(home=tmp_path, mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    # quiet for 8 s (more than the 5 s after which a caught-up origin is idle) counts as drained
    return run_drill(settings, spec(), "fraud", scenario, seed=11, idle_s=8, **options).to_dict()


def test_killed_processors_resume_from_their_checkpoint_without_losing_or_double_counting(tmp_path) -> None:
    result = drill(tmp_path, "stream-crash", size=12_000, processors=2, kills=1, rate=400)
    assert len(result["kills"]) == 1 and result["recovery_s"], result["kills"]
    assert result["sent"] > 2_000
    assert result["events_lost"] == 0
    assert result["rows_differing"] == 0, (result["comparison"], result["processed"])
    assert result["crashes"] == 0


def test_every_kind_of_bad_event_is_dead_lettered_with_its_reason_and_the_good_ones_all_count(tmp_path) -> None:
    result = drill(tmp_path, "poison-events", size=4_000, processors=1, rate=0)
    poison = result["poison"]
    missed = {kind: e for kind, e in poison["events"].items() if not e["reason_ok"]}
    assert poison["share"] == 1.0, missed
    assert result["events_lost"] == 0 and result["rows_differing"] == 0, result["comparison"]
    assert result["crashes"] == 0
