"""What every `mlsd` command prints with: one console, tables of facts, `--json-out` files, one-sentence failures."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

# Piped output (CI, `make demo | tee`) gets a wide fixed width so tables keep their columns.
console = Console(width=None if sys.stdout.isatty() else 150)
error_console = Console(stderr=True)


def print_facts(rows: Iterable[tuple[str, str]], title: str) -> None:
    """A two-column table of (name, value)."""
    table = Table(title=title, show_header=False)
    for key, value in rows:
        table.add_row(key, value)
    console.print(table)


def print_table(title: str, columns: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(value) for value in row))
    console.print(table)


def write_json_out(path: Path | None, payload: Any) -> None:
    """`--json-out`: the command's results as JSON, when asked for."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2, default=str))


def fail(message: str) -> None:
    """Print one plain sentence on stderr (no markup parsing of user data) and exit 1."""
    from rich.markup import escape

    error_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise SystemExit(1)


def warn(message: str) -> None:
    """Print one plain sentence on stderr (no markup parsing of user data) and go on."""
    from rich.markup import escape

    error_console.print(f"[yellow]warning:[/yellow] {escape(message)}", soft_wrap=True)
