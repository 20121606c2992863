"""The rules engine that turns a model score into approve / review / decline.

Rules run in a fixed order and the first that fires wins: a blocklisted card or terminal is declined whatever the
score; a score at or above the cost-optimal threshold is declined; a score above a lower review threshold, or an
amount over the limit, goes to manual review; everything else is approved. Without a score (the online store is
down) `decide_without_score` applies the blocklist and a lower amount limit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pipelines.settings import Settings

Outcome = Literal["approve", "review", "decline"]


@dataclass(frozen=True)
class RulesConfig:
    decline_threshold: float
    review_threshold: float
    amount_limit: float = 5000.0
    blocklist: frozenset[str] = field(default_factory=frozenset)
    degraded_amount_limit: float = 1000.0  # review limit when there is no score (online store down)

    @classmethod
    def from_settings(cls, settings: Settings, threshold: float) -> RulesConfig:
        return cls(
            decline_threshold=threshold,
            review_threshold=threshold * settings.fraud_review_threshold_factor,
            amount_limit=settings.fraud_amount_limit,
            blocklist=frozenset(settings.fraud_blocklist),
            degraded_amount_limit=settings.fraud_degraded_amount_limit,
        )


def decide(score: float, amount: float, customer_id: str, terminal_id: str, rules: RulesConfig) -> tuple[Outcome, str]:
    """Return the decision and the name of the rule that made it."""
    if customer_id in rules.blocklist or terminal_id in rules.blocklist:
        return "decline", "blocklist"
    if score >= rules.decline_threshold:
        return "decline", "score_above_decline_threshold"
    if amount > rules.amount_limit:
        return "review", "amount_over_limit"
    if score >= rules.review_threshold:
        return "review", "score_above_review_threshold"
    return "approve", "score_below_review_threshold"


def decide_without_score(amount: float, customer_id: str, terminal_id: str, rules: RulesConfig) -> tuple[Outcome, str]:
    """The rules alone, for when there is no score (the features could not be read).

    The blocklist still declines; without the model, a lower amount limit sends the larger payments to a person
    rather than approving them blind.
    """
    if customer_id in rules.blocklist or terminal_id in rules.blocklist:
        return "decline", "blocklist"
    if amount > rules.degraded_amount_limit:
        return "review", "degraded_amount_over_limit"
    return "approve", "degraded_amount_within_limit"
