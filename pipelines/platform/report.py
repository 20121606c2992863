"""What the demo prints and writes: progress bars, fact tables, served predictions read back, one HTML page."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    from pipelines.settings import Settings


def progress_bar(console: Console) -> Progress:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:,}/{task.total:,}"),
        TimeElapsedColumn(),
        console=console,
    )


def facts_table(title: str, rows: list[tuple[str, str]]) -> Table:
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for name, value in rows:
        table.add_row(name, value)
    return table


def served_predictions(settings: Settings, topic: str) -> pd.DataFrame:
    """The served predictions on a prediction log, read from the start without a consumer group."""
    import pandas as pd

    from pipelines.platform.predictions import PredictionRecord
    from pipelines.platform.stream import read_topic

    records, _ = read_topic(settings, topic, PredictionRecord)
    return pd.DataFrame([record.model_dump() for record in records if record.served])


def image(path: Path) -> str:
    """A PNG embedded in the page, so the report is one file."""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}"><figcaption>{html.escape(path.name)}</figcaption></figure>'


def write_html_page(path: Path, title: str, sections: list[str]) -> Path:
    """One self-contained page: a title and the sections in order."""
    body = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}
td,th{{padding:4px 10px;border-bottom:1px solid #ddd}}
img{{max-width:480px}}figure{{display:inline-block;margin:8px}}</style></head><body>
<h1>{html.escape(title)}</h1>
{"".join(sections)}
</body></html>"""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return path
