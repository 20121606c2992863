"""`mlsd deploy shadow-report | canary-report` (pipelines/monitoring/deploy_cli.py) read the prediction log to its
end, on the real broker."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from pipelines.fraud.events import PREDICTIONS_TOPIC as FRAUD_PREDICTIONS_TOPIC
from pipelines.fraud.events import LabelEvent
from pipelines.platform.predictions import PredictionRecord
from pipelines.settings import Settings
from tests.conftest import unique
from tests.factories import T0, recommendation, record


@pytest.mark.integration
def test_deploy_reports_read_the_prediction_log_to_its_end(
    kafka_settings: Settings, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app
    from pipelines.fraud.events import LABELS_TOPIC
    from pipelines.platform.stream import encode, ensure_topics, make_producer, read_topic

    mine = [unique("req") for _ in range(10)]
    producer = make_producer(kafka_settings)
    for i, request in enumerate(mine):
        producer.send(FRAUD_PREDICTIONS_TOPIC, encode(record(request, 0.1 * i, "approve")))
        producer.send(FRAUD_PREDICTIONS_TOPIC, encode(record(request, 0.1 * i + 0.05, "approve", "challenger", False)))
        producer.send(
            LABELS_TOPIC,
            encode(
                LabelEvent(transaction_id=request, customer_id="c", terminal_id="t", timestamp=T0, label_timestamp=T0)
            ),
        )
    # A bad message is skipped and counted, not fatal (on a topic of its own: the others are shared).
    scratch = unique("deploy-read")
    ensure_topics(kafka_settings, [scratch])
    for request in mine[:3]:
        producer.send(scratch, encode(record(request, 0.5, "approve")))
    producer.send(scratch, b"not json")
    producer.flush()
    producer.close()

    valid, invalid = read_topic(kafka_settings, scratch, PredictionRecord)
    assert ([r.request_id for r in valid], invalid) == (mine[:3], 1)
    records, _ = read_topic(kafka_settings, FRAUD_PREDICTIONS_TOPIC, PredictionRecord)
    assert set(mine) <= {r.request_id for r in records}

    monkeypatch.setenv("MLSD_KAFKA_BOOTSTRAP", kafka_settings.kafka_bootstrap)
    runner = CliRunner()
    shadow = runner.invoke(app, ["deploy", "shadow-report", "--json-out", str(tmp_path / "shadow.json")])
    assert shadow.exit_code == 0, shadow.output
    report = json.loads((tmp_path / "shadow.json").read_text())
    assert report["pairs"] >= len(mine)
    assert "same decision on" in report["verdict"]

    # Other tests share the broker and its labels, so count every transaction (no label-delay cut-off).
    canary = runner.invoke(
        app, ["deploy", "canary-report", "--all-predictions", "--json-out", str(tmp_path / "canary.json")]
    )
    assert canary.exit_code == 0, canary.output
    report = json.loads((tmp_path / "canary.json").read_text())
    assert report["variants"]["champion"]["frauds"] >= len(mine)
    assert report["mature_before"] is None and report["verdict"]
    assert "canary report" in canary.output

    # The recommendation log: lists compared in the shadow report, later interactions as the canary's outcomes.
    from pipelines.recsys.events import INTERACTIONS_TOPIC, InteractionEvent
    from pipelines.recsys.events import PREDICTIONS_TOPIC as RECSYS_PREDICTIONS_TOPIC

    producer = make_producer(kafka_settings)
    for i, request in enumerate(mine):
        user, variant = f"{request}-user", ("champion", "challenger")[i % 2]
        producer.send(RECSYS_PREDICTIONS_TOPIC, encode(recommendation(request, user, ["a", "b"], variant)))
        producer.send(RECSYS_PREDICTIONS_TOPIC, encode(recommendation(request, user, ["b", "a"], "challenger", False)))
        taken = InteractionEvent(user_id=user, item_id="a", event_type="click", timestamp=T0 + timedelta(hours=1))
        producer.send(INTERACTIONS_TOPIC, encode(taken))
    producer.send(
        INTERACTIONS_TOPIC,
        encode(InteractionEvent(user_id="clock", item_id="z", event_type="view", timestamp=T0 + timedelta(days=2))),
    )
    producer.flush()
    producer.close()
    shadow = runner.invoke(
        app, ["deploy", "shadow-report", "--design", "recsys", "--json-out", str(tmp_path / "recsys-shadow.json")]
    )
    assert shadow.exit_code == 0, shadow.output
    assert "lists" in json.loads((tmp_path / "recsys-shadow.json").read_text())
    canary = runner.invoke(
        app, ["deploy", "canary-report", "--design", "recsys", "--json-out", str(tmp_path / "recsys-canary.json")]
    )
    assert canary.exit_code == 0, canary.output
    report = json.loads((tmp_path / "recsys-canary.json").read_text())
    assert report["variants"]["challenger"]["hits"] >= len(mine) // 2 and report["verdict"]
