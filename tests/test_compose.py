"""docker-compose.yml and infra/Dockerfile, checked against the code they run.

No Docker engine is needed: the compose file is parsed, every `mlsd` command in it is resolved against the real
typer app (so a renamed command or option fails here, not at `docker compose up`), every MLSD_* variable is checked
against Settings, and the common settings block is validated by Settings itself.
"""

from __future__ import annotations

import ast
import configparser
import functools
import json
import re
import shlex
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import typer.main
import yaml

import pipelines.cli
from pipelines.settings import Settings

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "infra" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
TOPICS_FILE = ROOT / "infra" / "kafka-topics.txt"
PROMETHEUS_FILE = ROOT / "infra" / "prometheus.yml"
GRAFANA_DIR = ROOT / "infra" / "grafana"

ENV_PREFIX = "MLSD_"
FRAUD_SERVICES = {
    "kafka", "redis", "postgres", "mlflow", "init-topics", "init-feast", "simulator", "trainer",
    "stream-processor", "scoring-service", "traffic-producer",
}  # fmt: skip
MONITORING_SERVICES = {"fraud-monitor", "prometheus", "grafana"}
# BentoML 1.4's own HTTP series (RunnerTrafficMetricsMiddleware; prefixed with the configured metrics namespace).
BENTOML_SERIES = {
    "request_duration_seconds": "histogram", "request_total": "counter", "request_in_progress": "gauge",
    "last_request_timestamp_seconds": "gauge",
}  # fmt: skip
# Long-running services allowed to go without a healthcheck, and why. Nothing may wait for them to be healthy.
# None today: the stream processors answer /healthz on their metrics port.
NO_HEALTHCHECK: dict[str, str] = {}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)
WHOLE_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?-|:?\?)[^}]*)?\}")
# `${VAR:?message}`: compose refuses to start while VAR is unset or empty, and prints the message.
REQUIRED_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]+\}")
REFERENCE_MARK = "<ref>"
REQUIRED_MARK = "<required>"
URL_PASSWORD = re.compile(r"://[^/:@\s]+:(?P<password>[^@\s]+)@")
_REFERENCE = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
# PromQL pieces that are not metric names: strings, label matchers, ranges, Grafana variables, grouping lists.
_PROMQL_NOT_NAMES = re.compile(
    r'\{(?:"(?:[^"\\]|\\.)*"|[^}"])*\}|"(?:[^"\\]|\\.)*"|\[[^\]]*\]|\$\w+'
    r"|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
)
_PROMQL_WORD = re.compile(r"\b[A-Za-z_][A-Za-z0-9_:]*\b(?!\s*\()")  # not followed by "(": not a function
_PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right"}
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?)(?P<arg>.*))?", re.DOTALL)


# ---------------------------------------------------------------- helpers (also used by the integration tests)


def interpolate(value: str, env: Mapping[str, str] | None = None) -> str:
    """Resolve `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}` and `$$` as compose does.

    Without `env`, the variables compose requires have .env.example's placeholders (as after `cp .env.example .env`)
    and every other variable is unset, so that references take their compose defaults."""
    env = required_example_env() if env is None else env

    def replace(match: re.Match[str]) -> str:
        if match["dollar"]:
            return "$"
        if match["named"]:
            return env.get(match["named"], "")
        braced = _BRACED.fullmatch(match["braced"])
        if braced is None:
            raise ValueError(f"unsupported interpolation ${{{match['braced']}}}")
        name, op, arg = braced["name"], braced["op"], braced["arg"] or ""
        current = env.get(name)
        if op in (":-", ":?") and not current:
            current = None
        if current is not None:
            return current
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise ValueError(f"{name} is required: {arg}")
        return ""

    return _REFERENCE.sub(replace, value)


def load_compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def raw_environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, whichever of the two compose forms it uses, `${...}` left as written."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): str(value) for key, value in env.items()}


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment, interpolated as `interpolate` does without an explicit environment."""
    return {key: interpolate(value) for key, value in raw_environment(service).items()}


def references(value: str) -> Iterator[tuple[str, str, str]]:
    """(name, operator, argument) of every `${...}` reference in a string; `$VAR` gives (VAR, "", "")."""
    for match in _REFERENCE.finditer(value):
        if match["named"]:
            yield match["named"], "", ""
        elif match["braced"] is not None and (braced := _BRACED.fullmatch(match["braced"])):
            yield braced["name"], braced["op"] or "", braced["arg"] or ""


def required_variables(compose: Mapping[str, Any] | None = None) -> set[str]:
    """Variables the compose file requires (`${VAR:?message}`); comments do not count."""
    compose = compose or load_compose()
    return {name for _, value in strings(compose) for name, op, _ in references(value) if op == ":?"}


def example_env() -> dict[str, str]:
    """The variables .env.example sets, with their values."""
    return dict(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE))


@functools.cache
def required_example_env() -> dict[str, str]:
    """.env.example's placeholders for the variables compose requires."""
    example = example_env()
    return {name: example[name] for name in required_variables() if name in example}


def settings_fields(env: Mapping[str, str]) -> dict[str, str]:
    """MLSD_* environment variables as Settings field names and values."""
    return {key[len(ENV_PREFIX) :].lower(): value for key, value in env.items() if key.startswith(ENV_PREFIX)}


def common_settings_env(compose: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The x-common-env block every project service gets, with compose defaults filled in."""
    compose = compose or load_compose()
    return {key: interpolate(str(value)) for key, value in compose["x-common-env"].items()}


def command(service: Mapping[str, Any]) -> list[str]:
    raw = service.get("command") or []
    argv = shlex.split(raw) if isinstance(raw, str) else [str(part) for part in raw]
    return [interpolate(part) for part in argv]


class CommandError(Exception):
    """`mlsd` would refuse this command line (unknown command or option, missing or malformed value)."""


def resolve_mlsd(argv: list[str]) -> Any:
    """Parse `mlsd ...` with the real CLI without running it; return the parsed context (`.params`)."""
    if not argv or argv[0] != "mlsd":
        raise CommandError(f"not an mlsd command: {argv}")
    current = typer.main.get_command(pipelines.cli.app)
    path, args = ["mlsd"], argv[1:]
    while (subcommands := getattr(current, "commands", None)) is not None:
        if not args:
            raise CommandError(f"`{' '.join(path)}` needs a subcommand")
        name = args.pop(0)
        if name not in subcommands:
            raise CommandError(f"`{' '.join(path)}` has no command {name!r}")
        current, path = subcommands[name], [*path, name]
    try:
        return current.make_context(" ".join(path), args)
    except typer.TyperException as exc:  # typer's usage errors: unknown option, missing or bad value
        raise CommandError(f"`{' '.join(path)}`: {exc.format_message()}") from exc


def url_passwords(value: str) -> list[str]:
    """Passwords in `scheme://user:password@host` URLs, with every required `${VAR:?...}` reference replaced by
    REQUIRED_MARK and every other `${...}` reference by REFERENCE_MARK."""

    def mark(match: re.Match[str]) -> str:
        return REQUIRED_MARK if REQUIRED_REFERENCE.fullmatch(match[0]) else REFERENCE_MARK

    masked = WHOLE_REFERENCE.sub(mark, value)
    return [match["password"] for match in URL_PASSWORD.finditer(masked)]


def secret_problems(node: Any) -> list[tuple[str, str]]:
    """(where, value) of every string that lets compose start with a known secret: a literal value under a secret's
    key or as a URL's password, or a reference to a secret with a default instead of `${VAR:?message}` (whose
    message names the variable and .env, so that the person starting compose knows what to set and where)."""

    def problem(key: str, value: str) -> bool:
        if SECRET_KEY.search(key) and not REQUIRED_REFERENCE.fullmatch(value):
            return True
        if any(password != REQUIRED_MARK for password in url_passwords(value)):
            return True
        return any(
            SECRET_KEY.search(name) and (op != ":?" or name not in arg or ".env" not in arg)
            for name, op, arg in references(value)
        )

    return [(".".join(path), value) for path, value in strings(node) if problem(path[-1] if path else "", value)]


def is_project(service: Mapping[str, Any]) -> bool:
    return "build" in service


def is_one_shot(service: Mapping[str, Any]) -> bool:
    return service.get("restart") == "no"


def depends_on(service: Mapping[str, Any]) -> Any:
    return service.get("depends_on") or {}


def strings(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], str]]:
    """Every string in the YAML tree with the keys leading to it."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from strings(value, (*path, str(key)))
    elif isinstance(node, list):
        for item in node:
            yield from strings(item, path)
    elif isinstance(node, str):
        yield path, node


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), " ".join(rest.split())))
    return result


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads."""
    words = _PROMQL_WORD.findall(_PROMQL_NOT_NAMES.sub(" ", expr))
    return {word for word in words if word not in _PROMQL_KEYWORDS}


def exposed_names(registry: Any) -> set[str]:
    """The series names a prometheus_client registry exposes (counters with _total, histograms with their parts)."""
    names: set[str] = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}{part}" for part in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


def listening_ports(service: Mapping[str, Any]) -> set[int]:
    """Ports a service listens on inside the compose network: its published container ports and `--metrics-port`."""
    ports = {int(interpolate(str(port)).rsplit(":", 1)[1]) for port in service.get("ports", [])}
    if is_project(service) and (metrics_port := resolve_mlsd(command(service)).params.get("metrics_port")):
        ports.add(int(metrics_port))
    return ports


def bind_mounts(service: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Bind mounts of a service as {repository path: (container path, options)}."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *options = volume.split(":")
        if source.startswith("./"):
            mounts[source[2:]] = (target, ",".join(options))
    return mounts


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def project(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: service for name, service in services.items() if is_project(service)}


@pytest.fixture(scope="module")
def common_settings(compose: dict[str, Any]) -> Settings:
    return Settings(_env_file=None, **settings_fields(common_settings_env(compose)))  # type: ignore[call-arg,arg-type]


# ---------------------------------------------------------------- the interpolation helper itself


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "value", "EMPTY": ""}
    assert interpolate("${SET:-x}|${EMPTY:-x}|${EMPTY-x}|${UNSET-x}|${UNSET}|$SET|$${SET}", env) == (
        "value|x||x||value|${SET}"
    )
    with pytest.raises(ValueError, match="UNSET is required"):
        interpolate("${UNSET:?set it}", env)


# ---------------------------------------------------------------- services and commands


def test_the_fraud_design_services_are_all_there(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) >= FRAUD_SERVICES, f"missing: {sorted(FRAUD_SERVICES - set(services))}"
    assert set(services) >= MONITORING_SERVICES, f"missing: {sorted(MONITORING_SERVICES - set(services))}"


def test_project_services_share_one_image_built_from_infra(project: dict[str, dict[str, Any]]) -> None:
    assert FRAUD_SERVICES - {"kafka", "redis", "postgres"} <= set(project)
    images = {service.get("image") for service in project.values()}
    assert len(images) == 1, f"project services use several images: {images}"
    for name, service in project.items():
        assert service["build"] == {"context": ".", "dockerfile": "infra/Dockerfile"}, name
        assert "entrypoint" not in service, f"{name} overrides the entrypoint; run mlsd through `command`"
    assert DOCKERFILE.is_file()


def test_infrastructure_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if not is_project(service):
            image = service["image"]
            tag = image.rpartition(":")[2] if ":" in image else ""
            assert tag and tag != "latest", f"{name} uses an unpinned image {image!r}"


def test_every_project_service_runs_a_real_mlsd_command(project: dict[str, dict[str, Any]]) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["mlsd"] == "pipelines.cli:main", "the image's `mlsd` must be the app resolved here"
    problems = []
    for name, service in project.items():
        argv = command(service)
        try:
            resolve_mlsd(argv)
        except CommandError as exc:
            problems.append(f"{name}: {exc}")
    assert not problems, "\n".join(problems)


def test_the_resolver_rejects_what_mlsd_would_reject() -> None:
    assert resolve_mlsd(["mlsd", "fraud", "replay", "--transactions", "f.parquet", "--rate", "5"]).params["rate"] == 5
    for argv, reason in (
        (["python", "-m", "pipelines.cli"], "not an mlsd command"),
        (["mlsd", "fraud"], "needs a subcommand"),
        (["mlsd", "fraud", "no-such-command"], "no command"),
        (["mlsd", "fraud", "replay", "--rate", "5"], "--transactions"),
        (["mlsd", "fraud", "replay", "--transactions", "f.parquet", "--speed", "5"], "--speed"),
        (["mlsd", "fraud", "replay", "--transactions", "f.parquet", "--rate", "fast"], "Invalid value for .--rate."),
    ):
        with pytest.raises(CommandError, match=reason):
            resolve_mlsd(argv)


def test_servers_listen_on_every_interface(services: dict[str, dict[str, Any]]) -> None:
    for name in ("mlflow", "scoring-service"):
        assert resolve_mlsd(command(services[name])).params["host"] == "0.0.0.0", name


def test_the_transaction_files_are_shared_through_a_volume(services: dict[str, dict[str, Any]]) -> None:
    simulated = str(resolve_mlsd(command(services["simulator"])).params["out"])
    split = resolve_mlsd(command(services["splitter"])).params
    assert str(split["transactions"]) == simulated
    history, live = str(split["history_out"]), str(split["live_out"])
    assert str(resolve_mlsd(command(services["trainer"])).params["transactions"]) == history
    assert str(resolve_mlsd(command(services["stream-processor"])).params["history"]) == history
    assert str(resolve_mlsd(command(services["traffic-producer"])).params["transactions"]) == live
    for name in ("simulator", "splitter", "trainer", "stream-processor", "traffic-producer"):
        mounts = [volume.split(":")[1] for volume in services[name].get("volumes", [])]
        for path in (simulated, history, live):
            assert any(path.startswith(mount.rstrip("/") + "/") for mount in mounts), f"{name} cannot see {path}"


def test_named_volumes_are_declared(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source!r}"


# ---------------------------------------------------------------- settings


def test_every_mlsd_variable_is_a_settings_field() -> None:
    fields = set(Settings.model_fields)
    for path in (COMPOSE_FILE, ENV_EXAMPLE):
        names = set(re.findall(r"\bMLSD_[A-Z0-9_]+\b", path.read_text()))
        unknown = sorted(name for name in names if name[len(ENV_PREFIX) :].lower() not in fields)
        assert not unknown, f"{path.name} sets variables Settings does not read: {unknown}"
    assert Settings.model_config["env_prefix"] == ENV_PREFIX


def test_compose_defaults_of_settings_equal_the_settings_defaults() -> None:
    defaults = dict(re.findall(r"\$\{(MLSD_[A-Z0-9_]+):-([^}]*)\}", COMPOSE_FILE.read_text()))
    assert len(defaults) >= 10
    for variable, value in defaults.items():
        name = variable[len(ENV_PREFIX) :].lower()
        parsed = Settings(_env_file=None, **{name: value})  # type: ignore[call-arg,arg-type]
        assert getattr(parsed, name) == Settings.model_fields[name].default, variable
    # .env.example shows each of them with the same default, so that copying it changes nothing.
    example = dict(re.findall(r"^(MLSD_[A-Z0-9_]+)=(.*)$", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert {variable: example.get(variable) for variable in defaults} == defaults


def test_env_example_lists_every_variable_the_compose_file_reads() -> None:
    read = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))
    listed = set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert read <= listed, f".env.example does not list {sorted(read - listed)}"
    assert {name for name in read if name.endswith("_HOST_PORT")} >= {"PROMETHEUS_HOST_PORT", "GRAFANA_HOST_PORT"}


def test_common_settings_validate_and_point_at_the_compose_services(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    s = Settings(_env_file=None, **settings_fields(common_settings_env(compose)))  # type: ignore[call-arg,arg-type]
    assert s.kafka_embedded is False
    assert s.kafka_bootstrap == "kafka:9092"
    assert s.feast_online_store == "redis"
    assert s.feast_redis_url.split(",")[0] == "redis:6379"
    assert s.home == Path("/data")
    assert s.offline_dir.is_relative_to(s.home), "the Feast offline Parquet folder must be on the shared volume"
    assert s.tracking_uri == f"http://mlflow:{s.mlflow_port}"
    for uri in (s.feast_registry, s.backend_store_uri):
        assert uri.startswith("postgresql+psycopg2://") and "@postgres:5432/" in uri, uri
    hosts = {
        s.kafka_bootstrap.rpartition(":")[0],
        s.feast_redis_url.split(",")[0].rpartition(":")[0],
        urlsplit(s.tracking_uri).hostname,
        urlsplit(s.feast_registry).hostname,
        urlsplit(s.backend_store_uri).hostname,
    }
    assert hosts <= set(services), f"settings name hosts that are not compose services: {hosts - set(services)}"


def test_project_services_all_get_the_common_settings(compose: dict[str, Any], project: dict[str, Any]) -> None:
    common = common_settings_env(compose)
    for name, service in project.items():
        env = environment(service)
        assert {key: env.get(key) for key in common} == common, f"{name} does not use the common settings"


def test_ports_and_health_urls_match_the_settings(
    common_settings: Settings, services: dict[str, dict[str, Any]]
) -> None:
    for name, port, path in (
        ("mlflow", common_settings.mlflow_port, "/health"),
        ("scoring-service", common_settings.fraud_service_port, "/readyz"),
    ):
        service = services[name]
        published = [interpolate(str(p)).rsplit(":", 1)[1] for p in service.get("ports", [])]
        assert published == [str(port)], f"{name} publishes {published}, listens on {port}"
        assert f"127.0.0.1:{port}{path}" in " ".join(service["healthcheck"]["test"]), name


# ---------------------------------------------------------------- Kafka


def test_kafka_runs_in_kraft_mode_without_zookeeper(
    services: dict[str, dict[str, Any]], common_settings: Settings
) -> None:
    for name, service in services.items():
        assert "zookeeper" not in name and "zookeeper" not in str(service.get("image", "")), name
    kafka = services["kafka"]
    env = environment(kafka)
    assert kafka["image"].startswith("apache/kafka:")
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].startswith(f"{env['KAFKA_NODE_ID']}@")
    assert not any("ZOOKEEPER" in key for key in env)
    assert f"://{common_settings.kafka_bootstrap}" in env["KAFKA_ADVERTISED_LISTENERS"]
    assert "kafka-" in " ".join(kafka["healthcheck"]["test"]) and ".sh" in " ".join(kafka["healthcheck"]["test"])


def test_the_broker_keeps_its_log_on_a_volume_and_processors_checkpoint_to_postgres(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    kafka = services["kafka"]
    mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in kafka["volumes"]}
    assert mounts.get(environment(kafka)["KAFKA_LOG_DIRS"]) in set(compose["volumes"]), "a restart would lose the log"
    s = Settings(_env_file=None, **settings_fields(common_settings_env(compose)))  # type: ignore[call-arg,arg-type]
    assert s.stream_state_url.startswith("postgresql") and "@postgres:5432/" in s.stream_state_url
    assert s.stream_partitions >= 2
    fraud = services["stream-processor"]
    assert 2 <= int(interpolate(str(fraud["deploy"]["replicas"]))) <= s.stream_partitions
    for name in ("stream-processor", "recsys-stream-processor"):
        assert services[name]["restart"] == "unless-stopped"
        assert "postgres" in services[name]["depends_on"]
        assert "ports" not in services[name], "replicas cannot share a host port"


def test_topics_are_created_explicitly(services: dict[str, dict[str, Any]]) -> None:
    from pipelines.designs import all_topics

    assert environment(services["kafka"]).get("KAFKA_AUTO_CREATE_TOPICS_ENABLE") == "false"
    assert command(services["init-topics"]) == ["mlsd", "infra", "create-topics"]
    listed = [line.strip() for line in TOPICS_FILE.read_text().splitlines() if line.strip()]
    assert [line for line in listed if not line.startswith("#")] == list(all_topics())


# ---------------------------------------------------------------- start order and health


def test_every_service_says_whether_it_is_one_shot(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        assert service.get("restart") in {"no", "unless-stopped", "always", "on-failure"}, name


def test_every_depends_on_uses_the_right_condition(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        deps = depends_on(service)
        assert isinstance(deps, Mapping), f"{name}: depends_on must be the long form with conditions"
        for target, options in deps.items():
            assert target in services, f"{name} depends on unknown service {target}"
            dependency = services[target]
            if is_one_shot(dependency):
                expected = "service_completed_successfully"
            elif "healthcheck" in dependency:
                expected = "service_healthy"
            else:
                expected = "service_started"
            assert (options or {}).get("condition") == expected, f"{name} -> {target}: expected {expected}"
            if "profiles" not in service:
                assert "profiles" not in dependency, f"{name} depends on profile-only {target}"


def test_long_running_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    long_running = {name for name, service in services.items() if not is_one_shot(service)}
    assert set(NO_HEALTHCHECK) <= long_running
    for name in long_running - set(NO_HEALTHCHECK):
        check = services[name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name


def test_one_shots_run_in_order(services: dict[str, dict[str, Any]]) -> None:
    def waits_for(name: str) -> set[str]:
        direct = set(depends_on(services[name]))
        return direct.union(*(waits_for(d) for d in direct)) if direct else set()

    assert {"simulator", "init-feast", "mlflow"} <= waits_for("trainer")
    assert {"trainer", "init-topics"} <= waits_for("scoring-service")
    assert {"recsys-trainer", "init-topics"} <= waits_for("recommend-service")  # it logs to recsys.predictions
    assert {"trainer", "init-topics"} <= waits_for("stream-processor")
    assert {"simulator", "init-topics", "stream-processor"} <= waits_for("traffic-producer")


# ---------------------------------------------------------------- metrics: Prometheus, Grafana, /metrics endpoints


@pytest.fixture(scope="module")
def prometheus_config() -> dict[str, Any]:
    return yaml.safe_load(PROMETHEUS_FILE.read_text())


@pytest.fixture(scope="module")
def datasource() -> dict[str, Any]:
    provisioned = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = provisioned["datasources"]
    return source


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict[str, Any]]:
    files = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
    assert files, "infra/grafana/dashboards holds no dashboard"
    return {path.name: json.loads(path.read_text()) for path in files}


@pytest.fixture(scope="module")
def known_metrics() -> set[str]:
    """Every series the stack exposes: the project's registries as the code builds them, BentoML's, Prometheus's."""
    import inspect

    import bentoml
    import prometheus_client
    from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware

    from pipelines.monitoring.monitor import MonitorMetrics
    from pipelines.monitoring.retrain import RetrainMetrics
    from pipelines.platform.deployment import DeploymentMetrics
    from pipelines.platform.metrics import StreamMetrics

    deployment = prometheus_client.CollectorRegistry()
    DeploymentMetrics("fraud", prometheus_client, registry=deployment)
    ours = exposed_names(StreamMetrics("fraud").registry) | exposed_names(MonitorMetrics().registry)
    ours |= exposed_names(RetrainMetrics().registry)
    ours |= exposed_names(deployment)
    # BentoML 1.4 services: RunnerTrafficMetricsMiddleware's series under the namespace of the default configuration.
    config = Path(bentoml.__file__).parent / "_internal" / "configuration" / "v2" / "default_configuration.yaml"
    namespace = yaml.safe_load(config.read_text())["services"]["metrics"]["namespace"]
    source = inspect.getsource(RunnerTrafficMetricsMiddleware)
    bento = set()
    for name, kind in BENTOML_SERIES.items():
        assert f'name="{name}"' in source, f"BentoML no longer exposes {name}"
        if kind == "histogram":
            bento |= {f"{namespace}_{name}{part}" for part in ("_bucket", "_sum", "_count")}
        elif kind == "counter":  # a counter's series ends in _total whether or not its name does
            bento.add(f"{namespace}_{name.removesuffix('_total')}_total")
        else:
            bento.add(f"{namespace}_{name}")
    return ours | bento | {"up", "scrape_duration_seconds"}


def test_metrics_endpoints_listen_on_every_interface_and_stream_processors_are_probed_there(
    common_settings: Settings, services: dict[str, dict[str, Any]]
) -> None:
    assert common_settings.metrics_host == "0.0.0.0", "prometheus scrapes from another container"
    for name in ("stream-processor", "recsys-stream-processor"):
        port = resolve_mlsd(command(services[name])).params["metrics_port"]
        assert port, f"{name} serves no metrics"
        assert f"127.0.0.1:{port}/healthz" in " ".join(services[name]["healthcheck"]["test"]), name
    monitor = resolve_mlsd(command(services["fraud-monitor"]))
    assert monitor.params["design"] == "fraud" and monitor.params["metrics_port"]
    assert f"127.0.0.1:{monitor.params['metrics_port']}/" in " ".join(services["fraud-monitor"]["healthcheck"]["test"])


def test_prometheus_scrapes_every_metrics_endpoint_by_service_name_and_port(
    prometheus_config: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    scraped: dict[str, int] = {}
    for job in prometheus_config["scrape_configs"]:
        assert job.get("metrics_path", "/metrics") == "/metrics", job["job_name"]
        for target in (t for group in job["static_configs"] for t in group["targets"]):
            host, _, port = target.rpartition(":")
            assert host in services, f"{job['job_name']} scrapes {host}, which is not a compose service"
            assert int(port) in listening_ports(services[host]), f"{host} does not listen on {port}"
            assert job["job_name"] == host, "one job per service, named after it: the dashboard groups by job"
            scraped[host] = int(port)
    serving = {
        name for name, service in services.items() if command(service)[1:3] in (["fraud", "serve"], ["recsys", "serve"])
    }
    with_metrics_port = {name for name, service in services.items() if "--metrics-port" in command(service)}
    expected = serving | with_metrics_port | {"prometheus"}
    assert serving == {"scoring-service", "recommend-service"}
    assert expected <= set(scraped), f"not scraped: {sorted(expected - set(scraped))}"


def test_prometheus_and_grafana_read_their_files_from_infra(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    config_flag = next(arg for arg in command(prometheus) if arg.startswith("--config.file="))
    assert bind_mounts(prometheus)["infra/prometheus.yml"] == (config_flag.partition("=")[2], "ro")
    grafana = bind_mounts(services["grafana"])
    assert grafana["infra/grafana/provisioning"] == ("/etc/grafana/provisioning", "ro")
    dashboards_target, options = grafana["infra/grafana/dashboards"]
    assert options == "ro"
    provider = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "mlsd.yml").read_text())
    assert [p["options"]["path"] for p in provider["providers"]] == [dashboards_target]
    home = environment(services["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_target + "/")
    assert (GRAFANA_DIR / "dashboards" / home.removeprefix(dashboards_target + "/")).is_file(), home
    assert depends_on(services["grafana"]) == {"prometheus": {"condition": "service_healthy"}}


def test_grafana_provisions_the_compose_prometheus(datasource: dict[str, Any], services: dict[str, Any]) -> None:
    assert datasource["type"] == "prometheus" and datasource["uid"] and datasource.get("isDefault") is True
    url = urlsplit(datasource["url"])
    assert url.hostname in services and url.port in listening_ports(services[url.hostname]), datasource["url"]
    assert services[url.hostname]["image"].startswith("prom/prometheus:")


def test_dashboard_panels_are_laid_out_and_query_the_provisioned_datasource(
    dashboards: dict[str, dict[str, Any]], datasource: dict[str, Any]
) -> None:
    for file, dashboard in dashboards.items():
        assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int), file
        panels = dashboard["panels"]
        assert len({panel["id"] for panel in panels}) == len(panels), f"{file}: panel ids repeat"
        cells: set[tuple[int, int]] = set()
        for panel in panels:
            grid = panel["gridPos"]
            assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, f"{file}: {panel['title']}"
            taken = {
                (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
            }
            assert not taken & cells, f"{file}: {panel['title']} overlaps another panel"
            cells |= taken
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": datasource["uid"]}, panel["title"]
            targets = panel["targets"]
            assert targets and all(target["expr"].strip() for target in targets), f"{panel['title']} has no query"
            assert len({target["refId"] for target in targets}) == len(targets), panel["title"]
            assert all(target["datasource"]["uid"] == datasource["uid"] for target in targets), panel["title"]


def test_dashboard_queries_name_only_series_the_stack_exposes(
    dashboards: dict[str, dict[str, Any]], known_metrics: set[str]
) -> None:
    queried: set[str] = set()
    for file, dashboard in dashboards.items():
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                names = metric_names(target["expr"])
                assert names, f"{file}: {panel['title']}: no metric in {target['expr']!r}"
                unknown = names - known_metrics
                assert not unknown, f"{file}: {panel['title']} queries {sorted(unknown)}, which nothing exposes"
                queried |= names
    overview = {"bentoml_service_request_total", "bentoml_service_request_duration_seconds_bucket"}
    overview |= {name for name in known_metrics if name.startswith("mlsd_") and not name.endswith(("_sum", "_count"))}
    assert overview <= queried, f"the dashboards show nothing of {sorted(overview - queried)}"


def test_the_promql_name_reader() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (job, le) (rate(a_bucket{code=~"5..", x="b{c}"}[$__rate_interval]))) '
        "/ ignoring (x) group_left b_total offset 5m and time() - max without (le) (c) > bool 1"
        ' + label_replace(d, "dst", "$1", "src", "(.*)")'
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c", "d"}


def test_no_secret_has_a_literal_value_or_a_default(compose: dict[str, Any]) -> None:
    problems = secret_problems(compose)
    assert not problems, "secrets must be ${VAR:?set VAR in .env ...}, without a value or default: " + "; ".join(
        f"{where}={value!r}" for where, value in problems
    )
    assert ".env" in DOCKERIGNORE.read_text().split(), ".env must stay out of the image"


def test_the_secret_check_catches_literals_and_defaults() -> None:
    compose = {
        "services": {
            "db": {
                "environment": {
                    "POSTGRES_PASSWORD": "hunter2",
                    "GF_SECURITY_ADMIN_PASSWORD": "${GRAFANA_ADMIN_PASSWORD:-admin}",
                    "API_TOKEN": "${API_TOKEN:?required}",  # the message does not say what to set where
                    "URL": "pg://u:pw@db/x",
                    "DEFAULTED_URL": "pg://${U:-u}:${P:-mlsd}@db/x",
                    "OPTIONAL_URL": "pg://${U:-u}:${P}@db/x",
                    "OK_URL": "pg://${U:-u}:${P:?set P in .env}@db/x",
                    "SECRET_KEY": "${SECRET_KEY:?set SECRET_KEY in .env (copy .env.example)}",
                    "USER": "${GRAFANA_ADMIN_USER:-admin}",
                }
            }
        }
    }
    assert [where.rpartition(".")[2] for where, _ in secret_problems(compose)] == [
        "POSTGRES_PASSWORD", "GF_SECURITY_ADMIN_PASSWORD", "API_TOKEN", "URL", "DEFAULTED_URL", "OPTIONAL_URL",
    ]  # fmt: skip


def test_compose_refuses_to_start_without_each_secret(compose: dict[str, Any]) -> None:
    required = required_variables(compose)
    secrets = {"POSTGRES_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"}
    assert secrets | {"GRAFANA_ADMIN_PASSWORD"} <= required
    values = [value for _, value in strings(compose)]
    for name in sorted(required):
        without = {key: value for key, value in required_example_env().items() if key != name}
        for env in (without, {**without, name: ""}):
            with pytest.raises(ValueError, match=f"{name} is required: set {name} in .env"):
                for value in values:
                    interpolate(value, env)


def test_env_example_has_a_placeholder_for_every_required_variable(compose: dict[str, Any]) -> None:
    example = example_env()
    for name in sorted(required_variables(compose)):
        assert name in example, f".env.example does not list {name}, which compose requires"
        assert "change-me" in example[name], f".env.example must show a change-me placeholder for {name}"
    assert "change every value that reads change-me" in ENV_EXAMPLE.read_text().lower()


# ---------------------------------------------------------------- MLflow authentication


def test_the_mlflow_server_runs_the_basic_auth_app(
    tmp_path: Path, services: dict[str, dict[str, Any]], common_settings: Settings
) -> None:
    from pipelines.platform.infra import MLFLOW_AUTH_APP, mlflow_server_command

    server = services["mlflow"]
    assert command(server)[:3] == ["mlsd", "infra", "mlflow-server"]
    raw = raw_environment(server)
    for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert REQUIRED_REFERENCE.fullmatch(raw.get(name, "")), f"the mlflow service needs {name} from .env"
    env = environment(server)
    config = env.get("MLFLOW_AUTH_CONFIG_PATH", "")
    mounted = [volume.split(":")[1] for volume in server.get("volumes", [])]
    assert config.startswith("/"), "MLFLOW_AUTH_CONFIG_PATH turns basic-auth on and must be an absolute path"
    assert not any(config.startswith(target.rstrip("/") + "/") for target in mounted), (
        "the ini holds passwords: keep it off the volumes other services mount"
    )
    # What `mlsd infra mlflow-server` runs in that container, with the ini redirected to tmp_path.
    ini = tmp_path / "basic_auth.ini"
    argv = mlflow_server_command(common_settings, "0.0.0.0", env={**env, "MLFLOW_AUTH_CONFIG_PATH": str(ini)})
    assert argv[-2:] == ["--app-name", MLFLOW_AUTH_APP] and MLFLOW_AUTH_APP == "basic-auth"
    parser = configparser.ConfigParser()  # MLflow reads it this way (mlflow/server/auth/config.py)
    parser.read(ini)
    assert parser["mlflow"]["admin_password"] == env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert parser["mlflow"]["admin_username"] == env["MLFLOW_AUTH_ADMIN_USERNAME"]
    assert parser["mlflow"]["database_uri"] == common_settings.backend_store_uri
    assert "@postgres:5432/" in parser["mlflow"]["database_uri"], "the users must outlive the container"


def test_every_mlflow_client_signs_in_as_the_admin_the_server_creates(services: dict[str, dict[str, Any]]) -> None:
    server = raw_environment(services["mlflow"])
    clients = {
        name
        for name, service in services.items()
        if {"MLSD_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"} & set(raw_environment(service))
    }
    assert {"trainer", "scoring-service", "recsys-trainer", "recommend-service", "fraud-monitor"} <= clients
    for name in sorted(clients):
        env = raw_environment(services[name])
        assert env.get("MLFLOW_TRACKING_USERNAME") == server["MLFLOW_AUTH_ADMIN_USERNAME"], name
        assert env.get("MLFLOW_TRACKING_PASSWORD") == server["MLFLOW_AUTH_ADMIN_PASSWORD"], name


def test_health_probes_reach_mlflow_without_credentials(services: dict[str, dict[str, Any]]) -> None:
    """The compose healthcheck and connect_mlflow's probe call /health without credentials: the basic-auth app must
    leave it open. Its module is read, not imported: importing it reads the auth config and opens its store."""
    import inspect

    import mlflow

    from pipelines.platform.registry import connect_mlflow

    source = (Path(mlflow.__file__).parent / "server" / "auth" / "__init__.py").read_text()
    found = re.search(r"^_UNPROTECTED_PATH_PREFIXES = (\(.*?\))$", source, re.MULTILINE)
    assert found, "MLflow's basic-auth app no longer lists its unprotected paths where this test looks"
    assert "/health" in ast.literal_eval(found[1])
    assert "/health" in " ".join(services["mlflow"]["healthcheck"]["test"])
    assert '/health"' in inspect.getsource(connect_mlflow)


def test_the_image_installs_what_the_basic_auth_app_imports() -> None:
    """mlflow.server.auth imports Flask-WTF, which MLflow installs only with its `auth` extra; the image installs the
    project's non-dev dependencies from uv.lock, so one of the two must be there or the mlflow service cannot start."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    (project,) = [package for package in lock["package"] if package["name"] == "mlsd"]
    runtime = project["dependencies"]
    assert any(
        dependency["name"] == "flask-wtf" or (dependency["name"] == "mlflow" and "auth" in dependency.get("extra", []))
        for dependency in runtime
    ), "add mlflow[auth] (or flask-wtf) to the project dependencies"


# ---------------------------------------------------------------- image


def test_dockerfile_builds_one_locked_non_root_image() -> None:
    instructions = dockerfile_instructions()
    text = [f"{keyword} {args}" for keyword, args in instructions]
    assert text[0] == "FROM python:3.11-slim"
    syncs = [args for keyword, args in instructions if keyword == "RUN" and "uv sync" in args]
    assert syncs and all("--frozen" in args and "--no-dev" in args for args in syncs), syncs
    assert any(k == "RUN" and re.search(r"pip install .*\buv\b", a) for k, a in instructions)
    assert ("WORKDIR", "/app") in instructions
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the image must end as a non-root user"
    env = " ".join(args for keyword, args in instructions if keyword == "ENV")
    assert "MLSD_HOME=/data" in env and "/app/.venv/bin" in env


def test_dockerfile_copies_the_lock_before_the_source_and_every_package() -> None:
    copies = [args for keyword, args in dockerfile_instructions() if keyword == "COPY"]
    copied = [source for args in copies for source in args.split()[:-1]]
    lock_at = next(i for i, args in enumerate(copies) if "uv.lock" in args.split())
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [*pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"], "feature_repo"]
    for package in packages:
        assert package in copied or "." in copied, f"infra/Dockerfile does not copy {package}/"
    for args in copies[: lock_at + 1]:
        extra = set(args.split()[:-1]) - {"pyproject.toml", "uv.lock"}
        assert not extra, f"{extra} is copied before the dependencies are installed: every change reinstalls them"
    assert "pyproject.toml" in copies[lock_at].split()
    assert pyproject["project"]["readme"] in copied


def test_dockerignore_keeps_local_state_out_and_sources_in() -> None:
    ignored = {line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip()}
    assert {".venv", ".mlsd", ".git"} <= ignored
    assert any("__pycache__" in line for line in ignored)
    for needed in ("pyproject.toml", "uv.lock", "README.md", "pipelines", "services", "feature_repo", "infra"):
        assert needed not in ignored and f"/{needed}" not in ignored, needed
