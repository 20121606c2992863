"""The services' HTTP edge (pipelines/platform/http.py) as plain ASGI: what reaches the app, and what is answered
before it (415, 413 for declared and chunked bodies, 400 in one sentence), and BentoML's own 4xx bodies rewritten
to the declared shape. The running services are fuzzed in tests/e2e."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict

from pipelines.platform.events import Amount, EntityId, EventTime
from pipelines.platform.http import RequestGuard, _rewrite

pytestmark = pytest.mark.unit


class Payment(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payment_id: EntityId
    timestamp: EventTime
    amount: Amount


GOOD = {"payment_id": "p1", "timestamp": "2026-03-01T12:00:00Z", "amount": 12.5}


def call(
    body: bytes | list[bytes], content_type: str | None = "application/json", declared: int | None = None
) -> tuple[int, dict[str, Any], bytes | None]:
    """POST /pay through the guard; returns (status, JSON body, the body the app received or None)."""
    chunks = body if isinstance(body, list) else [body]
    headers = [] if content_type is None else [(b"content-type", content_type.encode())]
    if declared is not None:
        headers.append((b"content-length", str(declared).encode()))
    scope = {"type": "http", "method": "POST", "path": "/pay", "headers": headers}
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1} for i, chunk in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []
    received: list[bytes] = []

    async def app(_scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        received.append(message["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b'{"ok": true}'})

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(RequestGuard(app, models={"/pay": Payment}, max_body=1024)(scope, receive, send))
    status = sent[0]["status"]
    return status, json.loads(b"".join(m.get("body", b"") for m in sent[1:])), (received[0] if received else None)


def test_a_valid_json_body_reaches_the_app_unchanged() -> None:
    body = json.dumps(GOOD).encode()
    assert call(body) == (200, {"ok": True}, body)
    assert call(body, content_type=None)[0] == 200  # no content type: read as JSON, as BentoML does


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({**GOOD, "amount": False}, "Field 'amount' is invalid: input should be a valid number."),
        ({"payment_id": "p1"}, "Field 'timestamp' is missing: add it (also check 'amount')."),
        ({**GOOD, "timestamp": 0}, "Field 'timestamp' must be an RFC 3339 date-time such as 2026-01-01T12:00:00Z."),
        ({**GOOD, "timestamp": "1969-12-31T23:59:59Z"}, "Field 'timestamp' is before 1970."),
        ({**GOOD, "timestamp": "0001-01-01T00:00:00+01:00"}, "Field 'timestamp' is out of range."),
        (
            {**GOOD, "payment_id": "a\x00b"},
            "Field 'payment_id' is invalid: string should match pattern '^[^\\x00-\\x1f\\x7f]+$'.",
        ),
        ({**GOOD, "extra": 1}, "Field 'extra' is not allowed: remove it."),
        ([GOOD], "The body must be a JSON object (not an array, a string, a number or null)."),
    ],
)
def test_a_body_that_does_not_validate_gets_one_sentence_naming_the_field(body: Any, detail: str) -> None:
    status, answer, reached = call(json.dumps(body).encode())
    assert (status, answer, reached) == (400, {"error": "Invalid request body", "detail": detail}, None)


def test_other_content_types_and_bodies_over_the_limit_never_reach_the_app() -> None:
    status, answer, reached = call(b"--x\r\n", content_type="multipart/form-data")
    assert (status, answer["error"], reached) == (415, "Unsupported media type", None)
    status, answer, reached = call(b"{}", declared=10_000_000)  # refused on the declared length, nothing read
    assert (status, answer["error"], reached) == (413, "Request body too large", None)
    status, _, reached = call([b"x" * 600, b"x" * 600])  # chunked: counted as it arrives
    assert (status, reached) == (413, None)
    status, answer, _ = call(b"{not json")
    assert status == 400 and answer["detail"].startswith("The body is not valid JSON")


def test_bentomls_own_4xx_bodies_are_rewritten_to_the_declared_shape() -> None:
    listed = json.dumps(
        {"error": "1 validation error", "detail": [{"type": "missing", "loc": ["k"], "msg": "Field required"}]}
    )
    assert json.loads(_rewrite(400, listed.encode())) == {
        "error": "Invalid request body",
        "detail": "Field 'k' is missing: add it.",
    }
    assert json.loads(_rewrite(415, b'[{"error": "Unsupported Media Type"}]')) == {
        "error": "Unsupported Media Type",
        "detail": "Unsupported Media Type.",
    }
