"""The `mlsd` command: every command documents itself, and mistakes a user can make end in one sentence."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import typer
from typer.testing import CliRunner

from pipelines.cli import app, main
from pipelines.fraud.data import read_transactions
from pipelines.platform.infra import free_port

pytestmark = pytest.mark.unit

MLSD = Path(sys.executable).parent / "mlsd"
VALID_HEADER = "transaction_id,timestamp,customer_id,terminal_id,amount,is_fraud"
ROOT = typer.main.get_command(app)


def command_paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and group below `command`, as the words typed after `mlsd`."""
    paths = [path]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        paths += command_paths(sub, (*path, name))
    return paths


ALL_COMMANDS = command_paths(ROOT)
GROUPS = [
    path for path in ALL_COMMANDS if path == () or (len(path) == 1 and hasattr(ROOT.commands[path[0]], "commands"))
]
# The in-process runner covers every command; the installed script is checked on the top level and one group.
SCRIPT_HELP = [(), ("fraud",)]


def one_sentence(text: str) -> str:
    """The message with line wrapping undone."""
    return " ".join(text.split())


def write_csv(path: Path, header: str, *rows: str) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


# ---------------------------------------------------------------- the installed console script


@dataclass
class ScriptRun:
    """`mlsd ARGS` started in its own folder (cwd and MLSD_HOME), so nothing lands in the repository."""

    folder: Path
    env: dict[str, str]
    process: subprocess.Popen[str]
    _result: subprocess.CompletedProcess[str] | None = field(default=None, init=False)

    def result(self) -> subprocess.CompletedProcess[str]:
        if self._result is None:
            stdout, stderr = self.process.communicate(timeout=300)
            self._result = subprocess.CompletedProcess(self.process.args, self.process.returncode, stdout, stderr)
        return self._result


def start_mlsd(folder: Path, *args: str, **env: str) -> ScriptRun:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MLSD_")}
    environment["MLSD_HOME"] = str(folder / "home")
    environment.update(env)
    process = subprocess.Popen(
        [str(MLSD), *args],
        cwd=folder,
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return ScriptRun(folder, env, process)


@pytest.fixture(scope="module")
def script(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ScriptRun]]:
    """Each console-script case, all started at once (start-up imports dominate) and awaited by its test."""

    def folder() -> Path:
        return tmp_path_factory.mktemp("mlsd")

    replay_folder = folder()
    write_csv(replay_folder / "tx.csv", VALID_HEADER, "t1,2026-01-01T00:00:00Z,c1,m1,3.5,0")
    port = free_port()
    runs = {
        "missing file": start_mlsd(folder(), "fraud", "train", "--transactions", "missing.csv"),
        "no broker": start_mlsd(
            replay_folder, "fraud", "replay", "--transactions", "tx.csv", MLSD_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}"
        ),
        "bad setting": start_mlsd(folder(), "status", MLSD_FEAST_ONLINE_STORE="bogus"),
        "simulate": start_mlsd(folder(), "fraud", "simulate", "--out", "data/tx.parquet", "--transactions", "20000"),
    }
    for path in SCRIPT_HELP:
        runs[" ".join(["help", *path])] = start_mlsd(folder(), *path, "--help")
    yield runs
    for run in runs.values():
        if run.process.poll() is None:
            run.process.kill()
            run.process.communicate()


def assert_user_error(result: subprocess.CompletedProcess[str]) -> str:
    """Exit code 1, no traceback, and one sentence starting with 'error:'; returns the sentence."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    message = one_sentence(result.stderr)  # errors go to stderr, output to stdout
    assert message.startswith("error: ")
    assert message.endswith(".") and ". " not in message, message
    return message


# ---------------------------------------------------------------- help


def test_the_command_tree_has_the_fraud_stages() -> None:
    fraud_stages = {("fraud", name) for name in ("simulate", "replay", "stream", "train", "backtest", "serve")}
    assert fraud_stages <= set(ALL_COMMANDS)
    assert {("up",), ("down",), ("status",), ("demo",)} <= set(ALL_COMMANDS)
    assert {(), ("fraud",), ("loadtest",), ("infra",)} <= set(GROUPS)


@pytest.mark.parametrize("path", ALL_COMMANDS, ids=lambda path: " ".join(path) or "mlsd")
def test_every_command_answers_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert " ".join(path) in result.output


@pytest.mark.parametrize("group", [g for g in GROUPS if g], ids=lambda path: " ".join(path))
def test_every_groups_summary_names_its_commands(group: tuple[str, ...]) -> None:
    """What `mlsd --help` says of a group lists what the group holds."""
    command = ROOT.commands[group[0]]
    summary = one_sentence(command.get_short_help_str(limit=1000)) + " " + one_sentence(command.help or "")
    missing = [name for name in getattr(command, "commands", {}) if name not in summary]
    assert missing == [], f"mlsd {group[0]}: {summary}"


def test_the_top_level_help_describes_every_design() -> None:
    from pipelines.designs import DESIGNS

    text = one_sentence(ROOT.help or "")
    for design in DESIGNS:
        assert design.summary in text and design.title.lower() in text
    assert "monitoring" in text


def test_version_and_config() -> None:
    from importlib.metadata import version

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"mlsd {version('mlsd')}"
    secret = {"MLSD_MLFLOW_BACKEND_STORE_URI": "postgresql+psycopg2://mlsd:s3cr3t@db:5432/mlsd"}
    shown = CliRunner().invoke(app, ["config"], env=secret)
    assert shown.exit_code == 0, shown.output
    assert "s3cr3t" not in shown.output and "postgresql+psycopg2://mlsd:***@db:5432/mlsd" in shown.output
    for variable in ("MLSD_KAFKA_BOOTSTRAP", "MLSD_SERVING_MODE", "MLSD_GATE_MIN_IMPROVEMENT", "MLSD_STREAM_BATCH_MS"):
        assert variable in shown.output


def test_every_setting_is_described_and_in_a_section() -> None:
    from pipelines.settings import SECTIONS, Settings, describe_settings, masked

    assert all(info.description for info in Settings.model_fields.values())
    groups = describe_settings(Settings(_env_file=None))  # type: ignore[call-arg]
    assert sum(len(rows) for rows in groups.values()) == len(Settings.model_fields)
    assert set(groups) <= {"General", *(title for title, _ in SECTIONS)}
    assert masked("redis:6379,password=hunter2") == "redis:6379,password=***"


@pytest.mark.parametrize(
    ("args", "choices"),
    [
        (["recsys", "evaluate", "--interactions", "x.csv", "--split", "random"], "temporal"),
        (["drift-test", "--scenario", "nope"], "covariate-shift"),
        (["monitor", "--design", "churn"], "fraud"),
        (["fraud", "serve", "--mode", "blue"], "canary"),
        (["deploy", "shadow-report", "--design", "churn"], "recsys"),
    ],
)
def test_options_with_a_fixed_set_of_values_are_choices(args: list[str], choices: str) -> None:
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert choices in one_sentence(result.output)


def test_the_evaluate_splits_are_the_splitter_s_methods() -> None:
    from typing import get_args

    from pipelines.recsys.cli import Split
    from pipelines.recsys.splits import SPLIT_METHODS

    assert get_args(Split) == SPLIT_METHODS


@pytest.mark.parametrize("path", SCRIPT_HELP, ids=lambda path: " ".join(path) or "mlsd")
def test_the_console_script_answers_help(script: dict[str, ScriptRun], path: tuple[str, ...]) -> None:
    result = script[" ".join(["help", *path])].result()
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert "Traceback" not in result.stderr
    for name in getattr(ROOT.commands[path[0]] if path else ROOT, "commands", {}):
        assert name in result.stdout


# ---------------------------------------------------------------- mistakes a user can make


def test_a_missing_transactions_file_is_one_line(script: dict[str, ScriptRun]) -> None:
    run = script["missing file"]
    message = assert_user_error(run.result())
    assert len(run.result().stderr.strip().splitlines()) == 1
    assert "missing.csv" in message and "does not exist" in message
    assert not (run.folder / "home").exists()  # a refused command leaves nothing behind


def test_replay_without_a_broker_says_to_start_it(script: dict[str, ScriptRun]) -> None:
    run = script["no broker"]
    message = assert_user_error(run.result())
    assert f"No Kafka broker answers at {run.env['MLSD_KAFKA_BOOTSTRAP']}" in message
    assert "`mlsd up`" in message


def test_an_invalid_setting_is_one_sentence(script: dict[str, ScriptRun]) -> None:
    message = assert_user_error(script["bad setting"].result())
    assert "MLSD_FEAST_ONLINE_STORE" in message
    assert "'sqlite' or 'redis'" in message


def test_simulate_writes_a_readable_transactions_file(script: dict[str, ScriptRun]) -> None:
    run = script["simulate"]
    result = run.result()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    frame = read_transactions(run.folder / "data" / "tx.parquet")
    assert 15_000 <= len(frame) <= 25_000
    assert f"wrote {len(frame):,} transactions" in one_sentence(result.stdout)
    assert set(frame["is_fraud"]) == {0, 1}
    assert isinstance(frame["timestamp"].dtype, pd.DatetimeTZDtype)
    assert (frame["label_timestamp"] >= frame["timestamp"]).all()


# ---------------------------------------------------------------- the same entry point, in this process


def run_main(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *args: str) -> int | str | None:
    """`main()` as the console script calls it; returns the exit code."""
    monkeypatch.chdir(tmp_path)
    for key in [key for key in os.environ if key.startswith("MLSD_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLSD_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(sys, "argv", ["mlsd", *args])
    with pytest.raises(SystemExit) as stopped:
        main()
    return stopped.value.code


def test_a_missing_column_names_the_file_and_the_column(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    write_csv(
        tmp_path / "tx.csv",
        "transaction_id,timestamp,customer_id,terminal_id,is_fraud",
        "t1,2026-01-01T00:00:00Z,c1,m1,0",
    )
    code = run_main(monkeypatch, tmp_path, "fraud", "replay", "--transactions", "tx.csv")
    out, err = capsys.readouterr()
    assert code == 1
    message = one_sentence(err)
    assert message.startswith("error: tx.csv: required column 'amount' is missing")
    assert message.endswith(".") and ". " not in message
    assert "Traceback" not in out + err


def test_error_messages_show_column_names_as_written(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    write_csv(
        tmp_path / "tx.csv",
        "transaction_id,timestamp,customer_id,terminal_id,amount[eur],is_fraud",
        "t1,2026-01-01T00:00:00Z,c1,m1,3.5,0",
    )
    assert run_main(monkeypatch, tmp_path, "fraud", "replay", "--transactions", "tx.csv") == 1
    assert "amount[eur]" in one_sentence(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("fraud", "trian"), "No such command"),
        (("fraud", "simulate", "--transactions", "many"), "valid integer"),
        (("fraud", "train"), "Missing"),
    ],
    ids=["unknown command", "bad option value", "missing option"],
)
def test_usage_errors_exit_2_with_a_message(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    args: tuple[str, ...],
    words: str,
) -> None:
    assert run_main(monkeypatch, tmp_path, *args) == 2
    out, err = capsys.readouterr()
    assert words in out + err
