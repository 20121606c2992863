"""The embedded stack: processes started in the background, found again by pid file, stopped; clear port errors."""

from __future__ import annotations

import socket
import sys
import urllib.request

import pytest

from pipelines.platform.errors import ServiceUnavailable
from pipelines.platform.infra import (
    PortInUse,
    free_port,
    running,
    stack_down,
    start_broker,
    start_mlflow,
    start_process,
    stop_process,
    wait_for_log,
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


def test_waiting_for_a_log_line_ignores_what_an_earlier_run_wrote(tmp_path):
    settings = Settings(home=tmp_path)
    script = "import time; time.sleep(1.5); print('consuming', flush=True); time.sleep(30)"
    first = start_process(settings, "worker", [sys.executable, "-c", "print('consuming', flush=True)"])
    wait_for_log(first, "consuming", 10)
    second = start_process(settings, "worker", [sys.executable, "-c", script])
    assert second.log == first.log and second.log_offset > 0
    try:
        with pytest.raises(ServiceUnavailable, match="worker did not finish starting within 1 s"):
            wait_for_log(second, "consuming", 1)  # the first run's line is in the file, not this run's
        wait_for_log(second, "consuming", 10)
    finally:
        stop_process(settings, "worker")


def test_a_process_that_dies_while_starting_is_reported_at_once(tmp_path):
    settings = Settings(home=tmp_path)
    process = start_process(settings, "worker", [sys.executable, "-c", "raise SystemExit(1)"])
    with pytest.raises(ServiceUnavailable, match=f"worker stopped while starting; see {process.log}"):
        wait_for_log(process, "consuming", 30)
