"""Generated requests against a running service's OpenAPI document (schemathesis), for the services' e2e tests.

Every built-in check runs on every answer: no server error, status codes, content types and bodies as the document
declares them, valid requests accepted and invalid ones refused. For each POST operation (the API routes),
`EXAMPLES` valid and `EXAMPLES` invalid generated requests; hypothesis shrinks a failure to its smallest case.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

EXAMPLES = 200  # per kind (valid, invalid) on an API route; 400 cases in all, plus a few on /model
SMALL = 50  # on the other operations (/model, which takes an empty object): few distinct requests exist
# An event time must lie between 1970 and a day ahead of now, which JSON Schema cannot say: valid bodies are
# generated with times in that range (invalid ones still get every other kind of value).
schemathesis.openapi.format(
    "date-time",
    st.datetimes(
        min_value=datetime(1970, 1, 2), max_value=datetime.now() - timedelta(days=1), timezones=st.just(UTC)
    ).map(lambda value: value.isoformat().replace("+00:00", "Z")),
)


def fuzz(base: str, route: str, examples: int = EXAMPLES) -> collections.Counter[tuple[str, str, int]]:
    """Run every check on generated requests to `base`; returns the answers counted by (path, mode, status).

    Raises (with the smallest failing request) on the first check that fails.
    """
    document = schemathesis.openapi.from_url(f"{base}/docs.json").include(method="POST")
    answers: collections.Counter[tuple[str, str, int]] = collections.Counter()
    operations = [result.ok() for result in document.get_all_operations()]
    assert operations, f"{base}/docs.json declares no POST operation"
    for operation in operations:
        for mode in GenerationMode:
            many = examples if operation.path == route else min(examples, SMALL)
            run = _checks(operation.as_strategy(generation_mode=mode), base, mode.value, many, answers)
            run()
    return answers


def _checks(
    strategy: Any, base: str, mode: str, examples: int, answers: collections.Counter[tuple[str, str, int]]
) -> Callable[[], None]:
    @hypothesis_settings(
        max_examples=examples, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck)
    )
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        response = case.call_and_validate(base_url=base, timeout=10)
        answers[(case.path, mode, response.status_code)] += 1

    return run
