"""Request payloads for load tests: real transactions from a file, or freshly simulated ones."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.settings import Settings


def transaction_payloads(settings: Settings, path: Path | None, limit: int = 50_000) -> list[dict[str, Any]]:
    """JSON bodies for POST /score, in time order: from `path`, else the demo's live days, else simulated."""
    if path is None and (settings.data_dir / "live.parquet").exists():
        path = settings.data_dir / "live.parquet"  # customers and terminals the online store knows
    if path is not None:
        from pipelines.fraud.data import read_transactions

        frame = read_transactions(path, settings.fraud_label_delay_days).tail(limit)
    else:
        from pipelines.fraud.simulate import config_for_size, simulate_transactions

        frame = simulate_transactions(config_for_size(limit, seed=settings.seed)).tail(limit)
    return payloads_from_frame(frame)


def payloads_from_frame(frame: pd.DataFrame) -> list[dict[str, Any]]:
    columns = frame[["transaction_id", "timestamp", "customer_id", "terminal_id", "amount"]].copy()
    columns["timestamp"] = pd.to_datetime(columns["timestamp"], utc=True).map(lambda t: t.isoformat())
    return [{str(k): v for k, v in row.items()} for row in columns.to_dict(orient="records")]
