"""docker-compose.yml and infra/Dockerfile, checked against the code they run.

No Docker engine is needed: the compose file is parsed, every `mlsd` command in it is resolved against the real
typer app (so a renamed command or option fails here, not at `docker compose up`), every MLSD_* variable is checked
against Settings, and the common settings block is validated by Settings itself.
"""

from __future__ import annotations

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

ENV_PREFIX = "MLSD_"
FRAUD_SERVICES = {
    "kafka", "redis", "postgres", "mlflow", "init-topics", "init-feast", "simulator", "trainer",
    "stream-processor", "scoring-service", "traffic-producer",
}  # fmt: skip
# Long-running services allowed to go without a healthcheck, and why. Nothing may wait for them to be healthy.
NO_HEALTHCHECK = {
    "stream-processor": "a Kafka consumer with no endpoint to probe; Docker restarts it if it exits",
    "recsys-stream-processor": "the same, for the recommendation features",
}
SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)
WHOLE_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?-|:?\?)[^}]*)?\}")
REFERENCE_MARK = "<ref>"
URL_PASSWORD = re.compile(r"://[^/:@\s]+:(?P<password>[^@\s]+)@")
_REFERENCE = re.compile(r"\$(?:(?P<dollar>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?)(?P<arg>.*))?", re.DOTALL)


# ---------------------------------------------------------------- helpers (also used by the integration tests)


def interpolate(value: str, env: Mapping[str, str] | None = None) -> str:
    """Resolve `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}` and `$$` as compose does."""
    env = env or {}

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


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's environment as a dict, whichever of the two compose forms it uses, interpolated with defaults."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(key): interpolate(str(value)) for key, value in env.items()}


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
    """Passwords in `scheme://user:password@host` URLs, with every `${...}` reference replaced by REFERENCE_MARK."""
    masked = WHOLE_REFERENCE.sub(REFERENCE_MARK, value)
    return [match["password"] for match in URL_PASSWORD.finditer(masked)]


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
    return Settings(_env_file=None, **settings_fields(common_settings_env(compose)))  # type: ignore[call-arg]


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


def test_common_settings_validate_and_point_at_the_compose_services(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    s = Settings(_env_file=None, **settings_fields(common_settings_env(compose)))  # type: ignore[call-arg]
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


def test_topics_are_created_explicitly(services: dict[str, dict[str, Any]]) -> None:
    from pipelines.platform.infra import all_topics

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
    assert {"trainer", "init-topics"} <= waits_for("stream-processor")
    assert {"simulator", "init-topics", "stream-processor"} <= waits_for("traffic-producer")


# ---------------------------------------------------------------- secrets


def test_no_literal_secrets(compose: dict[str, Any]) -> None:
    for path, value in strings(compose):
        where = ".".join(path)
        if SECRET_KEY.search(path[-1] if path else ""):
            assert WHOLE_REFERENCE.fullmatch(value), f"{where} holds a literal secret; use ${{VAR:-...}}"
        for password in url_passwords(value):
            assert password == REFERENCE_MARK, f"{where} has a literal password in a URL"
    assert ".env" in DOCKERIGNORE.read_text().split(), ".env must stay out of the image"


def test_the_secret_check_catches_literals() -> None:
    literal = {
        "services": {
            "db": {
                "environment": {"POSTGRES_PASSWORD": "hunter2", "URL": "pg://u:pw@db/x", "OK": "pg://${U}:${P:-x}@db"}
            }
        }
    }
    flagged = [
        value
        for path, value in strings(literal)
        if (SECRET_KEY.search(path[-1]) and not WHOLE_REFERENCE.fullmatch(value))
        or any(password != REFERENCE_MARK for password in url_passwords(value))
    ]
    assert flagged == ["hunter2", "pg://u:pw@db/x"]


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
