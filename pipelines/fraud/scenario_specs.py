"""The fraud drift scenarios by name and the world they run in: plain declarations, cheap to import.

What each scenario does to the stream is in pipelines/fraud/scenarios.py; `mlsd drift-test` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.platform.design import Scenario

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("control", "no change: the stream continues as the history went", (), 9.5),
        Scenario(
            "covariate-shift",
            "every amount grows by 0.25 standard deviations of the history's amounts (the model's inputs move, "
            "fraud does not)",
            ("data_drift", "prediction_drift"),
            3.0,
        ),
        Scenario(
            "new-fraud-pattern",
            "a breached merchant network: at 3% of terminals, 40% of ordinary-looking payments turn out to be "
            "fraud (charged back 1-7 days later); the inputs do not move, only what they mean",
            ("performance_decay",),
            11.0,
            label_based=True,
        ),
        Scenario(
            "prior-shift",
            "fraud of the known kinds becomes three times as common (each fraud repeated twice more within two "
            "hours); what fraud looks like does not change",
            ("label_shift",),
            11.0,
            label_based=True,
        ),
        Scenario(
            "schema-break",
            "an upstream release sends amounts in cents, and renames customer_id in 5% of events",
            ("data_quality",),
            2.5,
        ),
        Scenario(
            "stale-features",
            "the feature processor stops: the service keeps reading the last customer and terminal rows it wrote",
            ("data_drift", "prediction_drift"),
            3.0,
        ),
    )
}


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 7
    size: int = 5000  # customers
    # Terminal features look back 30 days behind the 7-day label delay: the champion's validation days (the last
    # quarter of the history, its drift reference) must come after that warm-up, as the stream does.
    history_days: int = 52
    start_after_windows: float = 2.5  # the change starts in the middle of the third window
    shift_sigma: float = 0.25

    @property
    def key(self) -> str:
        return f"seed{self.seed}-c{self.size}-h{self.history_days}"
