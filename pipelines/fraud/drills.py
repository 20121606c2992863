"""The fraud design's part of the fault drills (pipelines/platform/drills.py): its data, commands and row check.

The drill simulates 40 days of payments: 30 days of history (the processors start from it) and the last 10 replayed
through Kafka. Afterwards every customer and terminal row the processors wrote offline is compared with the batch
backfill of the same payments (as a multiset: a row written twice is one too many), and every customer's and
terminal's online row with the backfill's newest row for it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.platform.drills import DrillData, DrillSpec
from pipelines.platform.service_drills import ServiceDrillSpec
from pipelines.settings import Settings

HISTORY_DAYS = 30
DAYS = 40
ROUND = 6  # the engine rounds means and risks to 6 decimals


def prepare(settings: Settings, size: int, seed: int, folder: Path, halves: bool) -> DrillData:
    from pipelines.fraud.features import backfill_features
    from pipelines.fraud.simulate import config_for_size, simulate_transactions
    from pipelines.platform.dataio import write_table

    frame = simulate_transactions(config_for_size(size, days=DAYS, seed=seed))
    times = pd.to_datetime(frame["timestamp"], utc=True)
    cut = times.min() + pd.Timedelta(days=HISTORY_DAYS)
    history, live = frame[(times < cut).to_numpy()], frame[(times >= cut).to_numpy()]
    write_table(history, folder / "history.parquet")
    write_table(live, folder / "live.parquet")
    first = second = None
    if halves:
        live_times = pd.to_datetime(live["timestamp"], utc=True)
        middle = live_times.min() + (live_times.max() - live_times.min()) / 2
        first, second = folder / "live-1.parquet", folder / "live-2.parquet"
        write_table(live[(live_times < middle).to_numpy()], first)
        write_table(live[(live_times >= middle).to_numpy()], second)
    ordered = frame.sort_values(["timestamp", "transaction_id"], kind="stable").reset_index(drop=True)
    customers, terminals = backfill_features(frame, settings.fraud_label_delay_days)
    in_live = ordered["transaction_id"].isin(set(live["transaction_id"])).to_numpy()
    expected = {
        "customers": customers[in_live].reset_index(drop=True),
        "terminals": terminals[in_live].reset_index(drop=True),
        "all_customers": customers,
        "all_terminals": terminals,
        "live_ids": set(live["transaction_id"]),
    }
    sent = len(live) + int((live["is_fraud"] == 1).sum())  # payments and their chargebacks
    return DrillData(folder / "history.parquet", folder / "live.parquet", sent, expected, second, first)


def processor(data: DrillData, group: str, summary: Path) -> list[str]:
    return ["fraud", "stream", "--history", str(data.history), "--group", group, "--json-out", str(summary)]


def replay(path: Path, rate: float) -> list[str]:
    return ["fraud", "replay", "--transactions", str(path), "--rate", f"{rate:g}"]


def topics(settings: Settings) -> dict[str, int]:
    from pipelines.fraud.events import PARTITIONED_TOPICS, TOPICS

    return {topic: settings.stream_partitions if topic in PARTITIONED_TOPICS else 1 for topic in TOPICS}


def _rows(frame: pd.DataFrame, key: str, columns: list[str]) -> pd.DataFrame:
    out = frame[[key, "event_timestamp", *columns]].copy()
    # Microseconds, the unit Feast stores; the backfill's frames hold nanoseconds.
    out["event_timestamp"] = (
        pd.to_datetime(out["event_timestamp"], utc=True).astype("datetime64[us, UTC]").astype("int64")
    )
    out[columns] = out[columns].astype(float).round(ROUND)
    return out


def _multiset_difference(actual: pd.DataFrame, expected: pd.DataFrame) -> tuple[int, int]:
    """(rows expected but not written, rows written but not expected), counting repeated rows."""
    columns = list(expected.columns)
    a = actual.groupby(columns, dropna=False).size().rename("actual")
    e = expected.groupby(columns, dropna=False).size().rename("expected")
    both = pd.concat([a, e], axis=1).fillna(0)
    missing = int((both["expected"] - both["actual"]).clip(lower=0).sum())
    extra = int((both["actual"] - both["expected"]).clip(lower=0).sum())
    return missing, extra


def compare(settings: Settings, data: DrillData) -> dict[str, Any]:
    from feature_repo.fraud import (
        CUSTOMER_FEATURES,
        CUSTOMER_VIEW,
        FEATURE_SERVICE,
        TERMINAL_FEATURES,
        TERMINAL_VIEW,
        fraud_feature_objects,
    )
    from pipelines.platform.features import apply_feature_definitions, latest_per_entity, read_offline, read_online

    expected = data.expected
    out: dict[str, Any] = {}
    differing = 0
    for name, view, key, columns in (
        ("customers", CUSTOMER_VIEW, "customer_id", CUSTOMER_FEATURES),
        ("terminals", TERMINAL_VIEW, "terminal_id", TERMINAL_FEATURES),
    ):
        written = read_offline(settings, view)
        want = _rows(expected[name], key, columns)
        got = _rows(written, key, columns) if not written.empty else want.iloc[0:0]
        missing, extra = _multiset_difference(got, want)
        out[f"offline_{name}"] = {"expected": len(want), "written": len(got), "missing": missing, "extra": extra}
        differing += max(missing, extra)
    store = apply_feature_definitions(settings, [fraud_feature_objects])
    customers = latest_per_entity(expected["all_customers"], "customer_id").set_index("customer_id")
    terminals = latest_per_entity(expected["all_terminals"], "terminal_id").set_index("terminal_id")
    live_customers = sorted(set(expected["customers"]["customer_id"]))
    live_terminals = sorted(set(expected["terminals"]["terminal_id"]))
    online_differing = 0
    for entities, key, table, columns, other in (
        (live_customers, "customer_id", customers, CUSTOMER_FEATURES, ("terminal_id", "T-none")),
        (live_terminals, "terminal_id", terminals, TERMINAL_FEATURES, ("customer_id", "C-none")),
    ):
        online = read_online(store, FEATURE_SERVICE, [{key: e, other[0]: other[1]} for e in entities])
        served = online[columns].to_numpy(dtype=float)
        backfilled = table.loc[entities, columns].to_numpy(dtype=float)
        wrong = ~np.isclose(served, backfilled, rtol=1e-6, atol=1e-6, equal_nan=True).all(axis=1)
        online_differing += int(wrong.sum())
        out[f"online_{key.split('_')[0]}s"] = {"entities": len(entities), "differing": int(wrong.sum())}
    out["rows_differing"] = differing + online_differing
    out["events_lost"] = out["offline_customers"]["missing"]
    return out


# A catalogue of bad events of every kind, each with the start of the reason it must be dead-lettered with.
POISON: list[tuple[str, str, dict[str, Any] | bytes | None, str]] = [
    ("not JSON", "fraud.transactions", b"{oops", "not valid JSON"),
    ("empty message", "fraud.transactions", None, "empty message"),
    ("boolean amount", "fraud.transactions", {"amount": True}, "amount:"),
    ("numeric string amount", "fraud.transactions", {"amount": "12.50"}, "amount:"),
    ("negative amount", "fraud.transactions", {"amount": -5.0}, "amount:"),
    ("amount out of range", "fraud.transactions", {"amount": 5e7}, "amount:"),
    ("year 2300", "fraud.transactions", {"timestamp": "2300-01-01T00:00:00Z"}, "timestamp:"),
    ("year 1", "fraud.transactions", {"timestamp": "0001-01-01T00:00:00Z"}, "timestamp:"),
    ("control character in an id", "fraud.transactions", {"customer_id": "C\u0007BELL"}, "customer_id:"),
    ("empty id", "fraud.transactions", {"terminal_id": ""}, "terminal_id:"),
    ("id over 64 characters", "fraud.transactions", {"transaction_id": "T" * 65}, "transaction_id:"),
    ("missing field", "fraud.transactions", {"terminal_id": ...}, "terminal_id:"),
    ("label from the future", "fraud.labels", {"label_timestamp": "2300-01-01T00:00:00Z"}, "label_timestamp:"),
    ("oversized", "fraud.transactions", {"note": "x" * 1_200_000}, "size:"),
    ("years late", "fraud.transactions", {"timestamp": "2020-01-01T00:00:00Z"}, "timestamp:"),
]


def poison(settings: Settings, data: DrillData) -> dict[str, Any]:
    """Send the catalogue's bad events, spread over the first seconds of the replay (so they interleave with good
    ones); returns what was sent."""
    from pipelines.platform.stream import encode, make_producer

    good = pd.read_parquet(data.live).head(1).iloc[0]
    base = {
        "transaction_id": "BAD-0",
        "timestamp": pd.Timestamp(good["timestamp"]).isoformat(),
        "customer_id": str(good["customer_id"]),
        "terminal_id": str(good["terminal_id"]),
        "amount": 10.0,
    }
    label_base = {**base, "label_timestamp": base["timestamp"], "is_fraud": 1}

    def send() -> None:
        producer = make_producer(settings, max_request_size=4 * 1024 * 1024)
        time.sleep(2)  # the replay is under way
        for i, (kind, topic, change, _) in enumerate(POISON):
            if isinstance(change, dict):
                body = {**(label_base if topic.endswith("labels") else base), "transaction_id": f"BAD-{i}"}
                body.update({k: v for k, v in change.items() if v is not ...})
                for k in [k for k, v in change.items() if v is ...]:
                    body.pop(k)
                value: bytes | None = encode(body)
            else:
                value = change
            producer.send(topic, value, key=f"bad-{kind}".encode())
            time.sleep(0.1)
        producer.flush()
        producer.close()

    threading.Thread(target=send, daemon=True).start()
    return {"sent": len(POISON), "kinds": [kind for kind, *_ in POISON], "reasons": {k: r for k, _, _, r in POISON}}


def check_poison(settings: Settings, sent: dict[str, Any]) -> dict[str, Any]:
    """Which of the catalogue's events reached a dead-letter topic with the reason they deserve."""
    from pipelines.platform.stream import read_dead_letters

    letters = read_dead_letters(settings, "fraud.transactions") + read_dead_letters(settings, "fraud.labels")
    by_key = {(letter.key or b"").decode(): letter for letter in letters}
    found: dict[str, dict[str, Any]] = {}
    for kind, _, _, reason in POISON:
        letter = by_key.get(f"bad-{kind}")
        found[kind] = {
            "dead_lettered": letter is not None,
            "reason": letter.reason if letter else None,
            "reason_ok": bool(letter and letter.reason.startswith(reason)),
        }
    caught = sum(1 for f in found.values() if f["dead_lettered"] and f["reason_ok"])
    return {"sent": len(POISON), "dead_lettered_with_reason": caught, "share": caught / len(POISON), "events": found}


def prepare_service(settings: Settings, size: int, seed: int) -> list[dict[str, Any]]:
    """A champion trained on simulated payments (class weighting only: the drill is about serving) and the online
    store filled with every customer's and terminal's newest row; the last payments as request bodies."""
    from pipelines.fraud.loadgen import payloads_from_frame
    from pipelines.fraud.simulate import config_for_size, simulate_transactions
    from pipelines.fraud.train import train_fraud

    frame = simulate_transactions(config_for_size(size, seed=seed))
    train_fraud(settings, frame, strategies=("class_weight",))
    return payloads_from_frame(frame.tail(5_000))


def _all_topics() -> list[str]:
    from pipelines.fraud.design import DESIGN

    return list(DESIGN.all_topics)


def _feature_objects(folder: Path) -> list[Any]:
    from feature_repo.fraud import fraud_feature_objects

    return list(fraud_feature_objects(folder))


SERVICE_DRILLS = ServiceDrillSpec(
    prepare=prepare_service,
    serve=("fraud", "serve"),
    path="/score",
    port_setting="fraud_service_port",
    topics=_all_topics,
    feature_objects=(_feature_objects,),
)

DRILLS = DrillSpec(
    prepare=prepare,
    processor=processor,
    replay=replay,
    compare=compare,
    poison=poison,
    check_poison=check_poison,
    topics=topics,
    source_topic="fraud.transactions",
    service=SERVICE_DRILLS,
)


def drill_spec() -> DrillSpec:
    return DRILLS
