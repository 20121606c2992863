"""MLflow registry access shared by the designs: tracking URI, registration, aliases, champion loading, audit trail.

Names follow `<design>-<model>` and the aliases `champion` / `challenger` (never the deprecated stages).

Every alias change made through this module (register, promote, reject, rollback), and every retrain the
retraining loop starts, is also written as one run of the
MLflow experiment `registry-audit`: tags say what changed, why, when and by whom, metrics hold the gate numbers. The
trail lives in the same backend as the registry (SQLite locally, PostgreSQL in compose) and shows in the MLflow UI.

Rollback semantics: the champion history is a stack. A register (as champion) or a promote pushes a version, a
rollback pops one, so v1 → v2 → v3 then rollback gives v2 and a second rollback gives v1.
"""

from __future__ import annotations

import getpass
import os
import re
import shlex
import socket
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pipelines.platform.errors import InvalidInput, ServiceUnavailable
from pipelines.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

CHAMPION = "champion"
CHALLENGER = "challenger"
ALIASES = (CHAMPION, CHALLENGER)
AUDIT_EXPERIMENT = "registry-audit"
Action = Literal["register", "promote", "reject", "rollback"]
# `retrain` moves no alias: it records an incident the retraining loop acted on (pipelines/monitoring/retrain.py),
# so that the trail shows the whole chain alert → retrain → register challenger → promote or reject.
ACTIONS: tuple[str, ...] = ("register", "promote", "reject", "rollback", "retrain")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


class RegistryError(InvalidInput):
    """A registry request that cannot be carried out; the message says why and what to do instead."""


def connect_mlflow(settings: Settings, check: bool = True) -> str:
    """Point MLflow at the tracking server (or a database URI) and, with `check`, fail in one sentence if it is down.

    Services pass `check=False`: their model watcher says when the registry is away and loads once it is back.
    """
    import mlflow

    uri = settings.tracking_uri
    if check and uri.startswith("http"):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5):
                pass
        except OSError as exc:
            raise ServiceUnavailable(
                f"The MLflow server at {uri} is not reachable; start it with `mlsd up` or set MLSD_MLFLOW_TRACKING_URI."
            ) from exc
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def _client() -> MlflowClient:
    from mlflow import MlflowClient

    return MlflowClient()


def _check_name(name: str) -> str:
    # Names end up inside MLflow filter strings; refusing quotes here keeps those filters injection-free.
    if not _NAME.fullmatch(name):
        raise RegistryError(f"'{name}' is not a valid model name; use letters, digits, '-', '_' or '.' only.")
    return name


# ---------------------------------------------------------------- versions and aliases


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as the lifecycle commands show it."""

    name: str
    version: str
    aliases: tuple[str, ...]
    tags: dict[str, str]
    created: datetime
    run_id: str
    source: str

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["aliases"] = list(self.aliases)
        out["created"] = self.created.isoformat()
        return out


def model_exists(name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        _client().get_registered_model(_check_name(name))
    except MlflowException:
        return False
    return True


def require_model(name: str) -> None:
    if not model_exists(name):
        raise RegistryError(f"No registered model is called '{name}'; train one first or check the name.")


def list_versions(name: str) -> list[VersionInfo]:
    """Every version of `name`, newest first, with the aliases that point at it and its tags."""
    require_model(name)
    client = _client()
    aliases: dict[str, list[str]] = {}
    for alias, version in (client.get_registered_model(name).aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    versions = client.search_model_versions(f"name = '{name}'")
    out = [
        VersionInfo(
            name=name,
            version=str(v.version),
            aliases=tuple(sorted(aliases.get(str(v.version), []))),
            tags=dict(v.tags or {}),
            created=datetime.fromtimestamp((v.creation_timestamp or 0) / 1000, UTC),
            run_id=v.run_id or "",
            source=v.source or "",
        )
        for v in versions
    ]
    return sorted(out, key=lambda v: int(v.version), reverse=True)


def alias_version(name: str, alias: str) -> str | None:
    """The version `name@alias` points at, or None when the alias (or the model) does not exist.

    Any other failure (the registry is unreachable) raises: a model watcher must tell "no challenger" from
    "cannot look".
    """
    from mlflow.exceptions import MlflowException

    try:
        return str(_client().get_model_version_by_alias(_check_name(name), alias).version)
    except MlflowException as exc:
        if exc.error_code in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"}:
            return None
        raise


def _require_version(name: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        _client().get_model_version(name, version)
    except MlflowException:
        raise RegistryError(f"'{name}' has no version {version}; see `mlsd registry list --model {name}`.") from None


# ---------------------------------------------------------------- audit trail


def current_command() -> str:
    """The command line of this process, as a person would have typed it (the console script shows as `mlsd`)."""
    program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python"
    if program in {"__main__.py", "mlsd"}:
        program = "mlsd"
    return shlex.join([program, *sys.argv[1:]])[:500]


def current_user() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, as in some containers
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class AuditRecord:
    """One alias change: which model and alias, from and to which version, why, when, who, and the gate numbers."""

    model: str
    alias: str
    action: str
    from_version: str | None
    to_version: str | None
    reason: str
    at: datetime
    user: str
    command: str
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    run_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["at"] = self.at.isoformat()
        return out


_RECORD_TAGS = ("model", "alias", "action", "from_version", "to_version", "reason", "at", "user", "command")
_DETAIL_PREFIX = "detail."
_TAG_LIMIT = 5000  # MLflow refuses longer tag values


def _audit_experiment_id(client: MlflowClient) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if experiment is not None:
        return str(experiment.experiment_id)
    try:
        return str(client.create_experiment(AUDIT_EXPERIMENT, tags={"mlsd.purpose": "registry alias changes"}))
    except MlflowException:  # another process created it first
        experiment = client.get_experiment_by_name(AUDIT_EXPERIMENT)
        if experiment is None:
            raise
        return str(experiment.experiment_id)


def _record_from_run(run: Run) -> AuditRecord:
    tags = run.data.tags
    return AuditRecord(
        model=tags.get("model", ""),
        alias=tags.get("alias", ""),
        action=tags.get("action", ""),
        from_version=tags.get("from_version") or None,
        to_version=tags.get("to_version") or None,
        reason=tags.get("reason", ""),
        at=datetime.fromisoformat(tags["at"])
        if tags.get("at")
        else datetime.fromtimestamp(run.info.start_time / 1000, UTC),
        user=tags.get("user", ""),
        command=tags.get("command", ""),
        metrics=dict(run.data.metrics),
        details={k.removeprefix(_DETAIL_PREFIX): v for k, v in tags.items() if k.startswith(_DETAIL_PREFIX)},
        run_id=run.info.run_id,
    )


def _audit_runs(name: str, alias: str | None = None, limit: int | None = None) -> Iterator[Run]:
    """Audit runs of `name`, newest first (all of them when `limit` is None)."""
    client = _client()
    experiment = client.get_experiment_by_name(AUDIT_EXPERIMENT)
    if experiment is None:
        return
    query = f"tags.model = '{_check_name(name)}'" + (f" and tags.alias = '{alias}'" if alias else "")
    token: str | None = None
    left = limit
    while left is None or left > 0:
        page = client.search_runs(
            [experiment.experiment_id],
            query,
            max_results=min(left or 1000, 1000),
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        yield from page
        if left is not None:
            left -= len(page)
        token = page.token
        if not token or not len(page):
            return


def history(name: str, limit: int | None = 50, alias: str | None = None) -> list[AuditRecord]:
    """The alias changes of `name` (optionally of one alias), newest first."""
    return [_record_from_run(run) for run in _audit_runs(name, alias, limit)]


# The actions that point an alias at a version on purpose: training's registration, a gated (or forced and so
# audited) promotion, a rollback. A `reject` record names the rejected version and approves nothing.
APPROVING_ACTIONS = ("register", "promote", "rollback")


def approved_version(name: str, alias: str) -> str | None:
    """The version the audit trail last pointed `name@alias` at, or None when it never did.

    Serving follows an alias only to this version: an alias moved outside this module leaves no record.
    """
    for run in _audit_runs(name, alias, limit=None):  # pages lazily: stops at the first approving record
        if run.data.tags.get("action") in APPROVING_ACTIONS:
            return run.data.tags.get("to_version") or None
    return None


def record_change(
    name: str,
    alias: str,
    action: str,
    from_version: str | None,
    to_version: str | None,
    reason: str,
    metrics: Mapping[str, float] | None = None,
    details: Mapping[str, str] | None = None,
    command: str | None = None,
    user: str | None = None,
) -> AuditRecord:
    """Write one audit run; times are made strictly increasing per model so that history order is exact."""
    import math

    from mlflow.entities import Metric, RunTag

    if action not in ACTIONS:
        raise ValueError(f"unknown registry action '{action}'; use one of {', '.join(ACTIONS)}.")
    client = _client()
    experiment_id = _audit_experiment_id(client)
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    latest = next(_audit_runs(name, limit=1), None)
    at_ms = max(now_ms, latest.info.start_time + 1) if latest is not None else now_ms
    record = AuditRecord(
        model=name,
        alias=alias,
        action=action,
        from_version=from_version,
        to_version=to_version,
        reason=reason,
        at=datetime.fromtimestamp(at_ms / 1000, UTC),
        user=user or current_user(),
        command=command or current_command(),
        metrics={k: float(v) for k, v in (metrics or {}).items() if v is not None and math.isfinite(float(v))},
        details={k: str(v) for k, v in (details or {}).items()},
    )
    values = record.to_dict()
    tags = {key: str(values[key] or "") for key in _RECORD_TAGS}
    tags |= {f"{_DETAIL_PREFIX}{k}": v for k, v in record.details.items()}
    tags |= {"mlflow.user": record.user, "mlflow.note.content": reason}
    tags = {key: value[:_TAG_LIMIT] for key, value in tags.items()}
    target = f"v{to_version}" if to_version else "none"
    run = client.create_run(experiment_id, start_time=at_ms, run_name=f"{action} {name}@{alias} {target}")
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(key, value, at_ms, 0) for key, value in record.metrics.items()],
        tags=[RunTag(key, value) for key, value in tags.items()],
    )
    client.set_terminated(run.info.run_id, end_time=at_ms)
    return replace(record, run_id=run.info.run_id)


def set_alias(
    name: str,
    alias: str,
    version: str,
    action: Action,
    reason: str,
    metrics: Mapping[str, float] | None = None,
    details: Mapping[str, str] | None = None,
    command: str | None = None,
    expected_from: str | None | Literal["any"] = "any",
) -> AuditRecord:
    """Point `name@alias` at `version` and audit the move.

    `expected_from` guards against a concurrent change: when given, the alias must still point where the caller
    saw it (None: nowhere) or nothing is changed.
    """
    require_model(name)
    _require_version(name, version)
    previous = alias_version(name, alias)
    if expected_from != "any" and previous != expected_from:
        raise RegistryError(
            f"{name}@{alias} moved from v{expected_from} to v{previous} while this command ran; run it again."
        )
    _client().set_registered_model_alias(name, alias, version)
    return record_change(name, alias, action, previous, version, reason, metrics, details, command)


def remove_alias(name: str, alias: str) -> str | None:
    """Delete `name@alias` if it exists; returns the version it pointed at."""
    version = alias_version(name, alias)
    if version is not None:
        _client().delete_registered_model_alias(name, alias)
    return version


def pinned_requirements(*packages: str) -> list[str]:
    """`package==installed version` for a logged model: MLflow would otherwise spend 8-30 s inferring them.

    On Linux XGBoost is installed as `xgboost-cpu` (the same `import xgboost` without the CUDA libraries); the pin
    names the distribution that is installed.
    """
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for name in packages:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(f"{name}-cpu=={version(name + '-cpu')}")
    return pins


def register_version(
    model_uri: str,
    name: str,
    alias: str | None,
    tags: dict[str, str] | None = None,
    reason: str = "registered by training",
    metrics: Mapping[str, float] | None = None,
    command: str | None = None,
) -> str:
    """Register a logged model (`models:/<model id>`) as a new version of `name`, tagged, and point `alias` at it
    (audited). The client API is used rather than `mlflow.register_model`, which prints to stderr."""
    from mlflow.exceptions import MlflowException

    client = _client()
    try:
        client.create_registered_model(_check_name(name))
    except MlflowException as exc:
        if exc.error_code not in {"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"}:
            raise
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    created = client.create_model_version(name, model_uri, tags=dict(tags or {}), model_id=model_id)
    version = str(created.version)
    if alias:
        set_alias(name, alias, version, "register", reason, metrics=metrics, command=command)
    return version


def promote_version(
    name: str,
    version: str,
    reason: str,
    metrics: Mapping[str, float] | None = None,
    details: Mapping[str, str] | None = None,
    command: str | None = None,
    expected_champion: str | None | Literal["any"] = "any",
) -> AuditRecord:
    """Make `version` the champion; the challenger alias is removed when it pointed at that version."""
    record = set_alias(name, CHAMPION, version, "promote", reason, metrics, details, command, expected_champion)
    if alias_version(name, CHALLENGER) == version:
        remove_alias(name, CHALLENGER)
    return record


def record_rejection(
    name: str,
    version: str,
    reason: str,
    metrics: Mapping[str, float] | None = None,
    details: Mapping[str, str] | None = None,
    command: str | None = None,
) -> AuditRecord:
    """Audit a challenger that did not pass the gate; the champion stays and the challenger keeps its alias."""
    champion = alias_version(name, CHAMPION)
    return record_change(name, CHAMPION, "reject", champion, version, reason, metrics, details, command)


def champion_stack(name: str) -> list[str]:
    """The champion history as a stack, oldest first, replayed from the audit trail (see the module docstring)."""
    stack: list[str] = []
    for record in reversed(history(name, limit=None, alias=CHAMPION)):
        if record.to_version is None:
            continue
        if record.action in ("register", "promote"):
            stack.append(record.to_version)
        elif record.action == "rollback":
            if stack:
                stack.pop()
            if not stack or stack[-1] != record.to_version:
                stack.append(record.to_version)
    return stack


def rollback_target(name: str) -> tuple[str, str]:
    """(current champion, the champion before it); fails in one sentence when there is none."""
    require_model(name)
    current = alias_version(name, CHAMPION)
    if current is None:
        raise RegistryError(f"'{name}' has no champion to roll back from; promote a version first.")
    stack = champion_stack(name)
    while stack and stack[-1] == current:
        stack.pop()
    if not stack:
        raise RegistryError(
            f"'{name}' has no earlier champion than v{current} in the audit trail, so there is nothing to roll back to."
        )
    return current, stack[-1]


def rollback(name: str, reason: str = "rollback", command: str | None = None) -> AuditRecord:
    """Point the champion back at the champion before the current one (repeat to walk further back)."""
    current, target = rollback_target(name)
    return set_alias(name, CHAMPION, target, "rollback", reason, command=command, expected_from=current)


# ---------------------------------------------------------------- loading


def require_alias(name: str, alias: str, train_hint: str) -> str:
    """The version behind `name@alias`; fails in one sentence (with how to train one) when there is none."""
    version = alias_version(name, alias)
    if version is None:
        raise ServiceUnavailable(f"No model '{name}' has the alias '{alias}' yet; train one first with {train_hint}.")
    return version


def check_servable(settings: Settings, name: str, train_hint: str) -> str | None:
    """Before a service starts: fail in one sentence when there is nothing it may serve; when the registry cannot be
    reached now, return a warning instead (the service starts not ready and loads its champion once it answers)."""
    try:
        connect_mlflow(settings)
        require_alias(name, CHAMPION, train_hint)
        approved = approved_version(name, CHAMPION)
    except ServiceUnavailable as exc:
        if "not reachable" not in str(exc):
            raise
        return f"{exc} The service starts anyway, not ready until the registry answers."
    if approved is None:
        raise ServiceUnavailable(
            f"'{name}@{CHAMPION}' was never set by training, the gate or a rollback, so no service will serve it; "
            f"promote a version with `mlsd registry promote` or train one with {train_hint}."
        )
    return None


def version_tags(name: str, version: str) -> dict[str, str]:
    """The tags of one registered version; a version that does not exist fails in one sentence."""
    from mlflow.exceptions import MlflowException

    try:
        return dict(_client().get_model_version(name, version).tags or {})
    except MlflowException:
        raise RegistryError(f"'{name}' has no version {version}; see `mlsd registry list --model {name}`.") from None


def download_version(name: str, version: str) -> Path:
    """The files of one registered version in a local folder (the MLflow model directory), nothing loaded.

    Designs load their models from these files in formats that execute no code (XGBoost's own format, arrays,
    index files), never through a pickle.
    """
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(f"models:/{_check_name(name)}/{version}"))
