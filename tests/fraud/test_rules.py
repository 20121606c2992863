"""The rules engine: blocklist, then decline threshold, then amount limit, then review band, else approve."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.fraud.rules import RulesConfig, decide
from pipelines.settings import Settings

pytestmark = pytest.mark.unit

RULES = RulesConfig(
    decline_threshold=0.8,
    review_threshold=0.4,
    amount_limit=1000.0,
    blocklist=frozenset({"C-stolen", "M-skimmer"}),
)


def check(score: float, amount: float, customer: str = "C1", terminal: str = "M1") -> tuple[str, str]:
    return decide(score, amount, customer, terminal, RULES)


@pytest.mark.parametrize(
    ("score", "amount", "expected"),
    [
        (0.1, 50.0, ("approve", "score_below_review_threshold")),
        (0.3999, 1000.0, ("approve", "score_below_review_threshold")),  # an amount at the limit is not over it
        (0.4, 50.0, ("review", "score_above_review_threshold")),  # the review threshold itself reviews
        (0.79, 50.0, ("review", "score_above_review_threshold")),
        (0.1, 1000.01, ("review", "amount_over_limit")),
        (0.8, 50.0, ("decline", "score_above_decline_threshold")),  # the decline threshold itself declines
        (0.99, 50.0, ("decline", "score_above_decline_threshold")),
    ],
)
def test_each_rule(score: float, amount: float, expected: tuple[str, str]) -> None:
    assert check(score, amount) == expected


@pytest.mark.parametrize(("customer", "terminal"), [("C-stolen", "M1"), ("C1", "M-skimmer")])
def test_a_blocklisted_card_or_terminal_is_declined_whatever_the_score(customer: str, terminal: str) -> None:
    assert check(0.0, 1.0, customer, terminal) == ("decline", "blocklist")
    assert check(0.99, 50_000.0, customer, terminal) == ("decline", "blocklist")


def test_the_decline_threshold_beats_the_amount_limit() -> None:
    assert check(0.9, 50_000.0) == ("decline", "score_above_decline_threshold")


def test_the_amount_limit_beats_the_review_band() -> None:
    assert check(0.5, 50_000.0) == ("review", "amount_over_limit")


def test_blocklist_matches_whole_ids_only() -> None:
    assert check(0.1, 50.0, "C-stolen-2", "M-skim") == ("approve", "score_below_review_threshold")


def test_rules_config_from_settings() -> None:
    settings = Settings(
        fraud_blocklist=["C00042", "M00007"],
        fraud_review_threshold_factor=0.25,
        fraud_amount_limit=750.0,
    )
    rules = RulesConfig.from_settings(settings, threshold=0.6)
    assert rules == RulesConfig(
        decline_threshold=0.6,
        review_threshold=0.15,
        amount_limit=750.0,
        blocklist=frozenset({"C00042", "M00007"}),
    )
    assert decide(0.0, 1.0, "C00042", "M1", rules) == ("decline", "blocklist")
    assert decide(0.2, 1.0, "C1", "M1", rules) == ("review", "score_above_review_threshold")
    assert decide(0.1, 800.0, "C1", "M1", rules) == ("review", "amount_over_limit")


def test_default_settings_review_at_half_the_threshold_with_no_blocklist(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    for name in ("MLSD_FRAUD_REVIEW_THRESHOLD_FACTOR", "MLSD_FRAUD_AMOUNT_LIMIT", "MLSD_FRAUD_BLOCKLIST"):
        monkeypatch.delenv(name, raising=False)
    rules = RulesConfig.from_settings(Settings(), threshold=0.5)
    assert rules.review_threshold == pytest.approx(0.25)
    assert rules.blocklist == frozenset()
    assert rules.amount_limit == 5000.0


def test_the_blocklist_can_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLSD_FRAUD_BLOCKLIST", '["C00042", "M00007"]')
    rules = RulesConfig.from_settings(Settings(), threshold=0.5)
    assert rules.blocklist == frozenset({"C00042", "M00007"})
    assert decide(0.0, 1.0, "C1", "M00007", rules) == ("decline", "blocklist")
