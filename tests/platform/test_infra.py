"""The embedded stack: processes started in the background, found again by pid file, stopped; clear port errors.
And the MLflow server command of docker-compose, which runs MLflow's basic-auth app."""

from __future__ import annotations

import configparser
import socket
import stat
import sys
import urllib.request

import pytest

from pipelines.platform.errors import InvalidInput, ServiceUnavailable
from pipelines.platform.infra import (
    MLFLOW_AUTH_REQUIRED,
    PortInUse,
    free_port,
    mlflow_server_command,
    running,
    stack_down,
    start_broker,
    start_mlflow,
    start_process,
    stop_process,
    wait_for_log,
)
from pipelines.settings import Settings


@pytest.mark.integration
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


@pytest.mark.integration
def test_broker_and_mlflow_server_start_and_stop(tmp_path, monkeypatch):
    # The embedded server stays open even in a shell that configures basic-auth for `mlsd infra mlflow-server`.
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(tmp_path / "auth" / "basic_auth.ini"))
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
            assert b"<html" in response.read().lower()  # the UI is served, without a login
        assert not (tmp_path / "auth").exists()
        assert sorted(stack_down(settings)) == ["kafka", "mlflow"]
        assert not running(settings, "kafka") and not running(settings, "mlflow")
        assert stack_down(settings) == []  # nothing left to stop
    finally:
        stop_process(settings, "kafka")
        stop_process(settings, "mlflow")


@pytest.mark.integration
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


@pytest.mark.integration
def test_a_process_that_dies_while_starting_is_reported_at_once(tmp_path):
    settings = Settings(home=tmp_path)
    process = start_process(settings, "worker", [sys.executable, "-c", "raise SystemExit(1)"])
    with pytest.raises(ServiceUnavailable, match=f"worker stopped while starting; see {process.log}"):
        wait_for_log(process, "consuming", 30)


# ---------------------------------------------------------------- MLflow basic-auth (`mlsd infra mlflow-server`)


def auth_env(tmp_path, **overrides):
    return {
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp_path / "auth" / "basic_auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": "ops",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "from-the-env-100%",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "a-static-key",
        **overrides,
    }


@pytest.mark.unit
def test_the_mlflow_server_is_open_without_an_auth_config(tmp_path):
    argv = mlflow_server_command(Settings(home=tmp_path), "0.0.0.0", env={"MLFLOW_AUTH_ADMIN_PASSWORD": "unused-pw"})
    assert "--app-name" not in argv
    assert argv[1:4] == ["-m", "mlflow", "server"]
    assert not list(tmp_path.iterdir())


@pytest.mark.unit
def test_an_auth_config_path_starts_basic_auth_with_an_ini_written_from_the_environment(tmp_path):
    # A percent-encoded database password: configparser's % interpolation must give back the URL as it was.
    store = "postgresql+psycopg2://mlsd:p%40ss@postgres:5432/mlsd"
    settings = Settings(home=tmp_path, mlflow_backend_store_uri=store)
    env = auth_env(tmp_path)
    argv = mlflow_server_command(settings, "0.0.0.0", env=env)
    assert argv[-2:] == ["--app-name", "basic-auth"]
    ini = tmp_path / "auth" / "basic_auth.ini"
    assert stat.S_IMODE(ini.stat().st_mode) == 0o600, "the ini holds passwords"
    parser = configparser.ConfigParser()  # as MLflow reads it (mlflow/server/auth/config.py)
    parser.read(ini)
    auth = parser["mlflow"]
    assert auth["admin_password"] == "from-the-env-100%"
    assert auth["admin_username"] == "ops"
    assert auth["database_uri"] == store
    assert auth["default_permission"] == "NO_PERMISSIONS"
    assert auth["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    # Every start rewrites it, so the environment stays the one place to configure it.
    mlflow_server_command(settings, "0.0.0.0", env=auth_env(tmp_path, MLFLOW_AUTH_ADMIN_PASSWORD="rotated-password"))
    parser.read(ini)
    assert parser["mlflow"]["admin_password"] == "rotated-password"


@pytest.mark.unit
def test_the_admin_name_defaults_but_no_password_or_key_does(tmp_path):
    ini = tmp_path / "auth" / "basic_auth.ini"
    mlflow_server_command(Settings(home=tmp_path), "0.0.0.0", env=auth_env(tmp_path, MLFLOW_AUTH_ADMIN_USERNAME=""))
    parser = configparser.ConfigParser()
    parser.read(ini)
    assert parser["mlflow"]["admin_username"] == "admin"
    ini.unlink()
    assert set(MLFLOW_AUTH_REQUIRED) == {"MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"}
    for name in MLFLOW_AUTH_REQUIRED:
        for env in (auth_env(tmp_path, **{name: ""}), {k: v for k, v in auth_env(tmp_path).items() if k != name}):
            with pytest.raises(InvalidInput, match=f"^MLflow authentication is on .* but {name} is not; set it"):
                mlflow_server_command(Settings(home=tmp_path), "0.0.0.0", env=env)
            assert not ini.exists()


@pytest.mark.unit
def test_an_auth_setting_with_a_line_break_is_refused(tmp_path):
    env = auth_env(tmp_path, MLFLOW_AUTH_ADMIN_PASSWORD="long-enough\nadmin_password = other")
    with pytest.raises(InvalidInput, match="line break"):
        mlflow_server_command(Settings(home=tmp_path), "0.0.0.0", env=env)
