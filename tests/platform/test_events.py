"""Implausible events are refused the same way everywhere (pipelines/platform/events.py), with a reason."""

from __future__ import annotations

import pytest

from pipelines.fraud.events import LabelEvent, TransactionEvent
from pipelines.platform.stream import EventLimits, decode
from pipelines.recsys.events import InteractionEvent

pytestmark = pytest.mark.unit

GOOD = b'{"transaction_id":"T1","timestamp":"2026-03-01T10:00:00Z","customer_id":"C1","terminal_id":"M1","amount":12.5}'


def reason(value: bytes | None, schema=TransactionEvent, limits: EventLimits | None = None) -> str:
    with pytest.raises(ValueError) as refused:
        decode("fraud.transactions", value, schema, limits)
    return str(refused.value)


def with_field(name: str, raw: str) -> bytes:
    import json

    body = json.loads(GOOD)
    body[name] = "__RAW__"
    return json.dumps(body).replace('"__RAW__"', raw).encode()


def test_a_good_event_passes_and_integer_amounts_are_numbers() -> None:
    event = decode("fraud.transactions", GOOD, TransactionEvent)
    assert isinstance(event, TransactionEvent) and event.amount == 12.5
    assert decode("fraud.transactions", with_field("amount", "12"), TransactionEvent).amount == 12.0


@pytest.mark.parametrize(
    ("name", "raw", "starts"),
    [
        ("amount", "true", "amount: Input should be a valid number"),
        ("amount", '"12.5"', "amount: Input should be a valid number"),
        ("amount", "-1", "amount: Input should be greater than or equal to 0"),
        ("timestamp", '"2300-01-01T00:00:00Z"', "timestamp: Value error, is more than 1 day, 0:00:00 ahead of now"),
        ("timestamp", '"0001-01-01T00:00:00Z"', "timestamp: Value error, is before 1970"),
        ("customer_id", '"C\\u0007BELL"', "customer_id: String should match pattern"),
        ("terminal_id", '""', "terminal_id: String should have at least 1 character"),
        ("transaction_id", '"' + "T" * 65 + '"', "transaction_id: String should have at most 64 characters"),
    ],
)
def test_implausible_fields_are_refused_with_a_reason(name: str, raw: str, starts: str) -> None:
    assert reason(with_field(name, raw)).startswith(starts)


def test_broken_messages_are_refused_with_a_reason() -> None:
    assert reason(b"{oops") == "not valid JSON"
    assert reason(None) == "empty message"
    assert reason(GOOD, limits=EventLimits(max_bytes=50)) == f"size: {len(GOOD)} bytes is over the 50-byte event limit"
    label = GOOD[:-1] + b',"label_timestamp":"2300-01-01T00:00:00Z"}'
    assert reason(label, LabelEvent).startswith("label_timestamp: Value error, is more than")


def test_the_future_bound_comes_from_the_limits() -> None:
    soon = with_field("timestamp", '"2026-12-03T23:59:00Z"')
    decode("fraud.transactions", soon, TransactionEvent, EventLimits(max_future_s=10 * 86_400))
    interaction = b'{"user_id":"U\\u0000","item_id":"I1","timestamp":"2026-03-01T00:00:00Z"}'
    assert reason(interaction, InteractionEvent).startswith("user_id: String should match pattern")
