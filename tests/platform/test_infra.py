"""The embedded stack: processes started in the background, found again by pid file, stopped; clear port errors."""

from __future__ import annotations

import socket
import urllib.request

import pytest

from pipelines.platform.infra import (
    PortInUse,
    free_port,
    running,
    stack_down,
    start_broker,
    start_mlflow,
    stop_process,
)
from pipelines.settings import Settings

pytestmark = pytest.mark.integration


def test_a_port_in_use_is_one_sentence_naming_the_setting(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        settings = Settings(home=tmp_path, kafka_port=port, kafka_bootstrap=f"127.0.0.1:{port}")
        with pytest.raises(
            PortInUse, match=f"Port {port} for the embedded Kafka broker is already in use.*MLSD_KAFKA_PORT"
        ):
            start_broker(settings, ["t"])
    assert not running(settings, "kafka")


def test_broker_and_mlflow_server_start_and_stop(tmp_path):
    kafka_port, mlflow_port = free_port(), free_port()
    settings = Settings(
        home=tmp_path, kafka_port=kafka_port, kafka_bootstrap=f"127.0.0.1:{kafka_port}", mlflow_port=mlflow_port
    )
    try:
        start_broker(settings, ["infra.test"])
        start_mlflow(settings)
        assert running(settings, "kafka") and running(settings, "mlflow")
        with urllib.request.urlopen(f"http://127.0.0.1:{mlflow_port}/health", timeout=5) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{mlflow_port}/", timeout=5) as response:
            assert b"<html" in response.read().lower()  # the UI is served
        assert sorted(stack_down(settings)) == ["kafka", "mlflow"]
        assert not running(settings, "kafka") and not running(settings, "mlflow")
        assert stack_down(settings) == []  # nothing left to stop
    finally:
        stop_process(settings, "kafka")
        stop_process(settings, "mlflow")
