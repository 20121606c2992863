"""Fraud feature processors as they run in production (`mlsd fraud stream`: two stages, checkpointed state):
throughput of 1 and 2 processes draining a filled topic, and freshness (produced → readable online) at a steady rate.

Each measurement gets a broker, stores and data of its own (the drills' set-up, pipelines/platform/drills.py):
40 simulated days, the processors start from the first 30 and read the last 10 from Kafka.

Usage: python -m benchmarks.stream_features [--online-store sqlite|redis] [--size 400000] [--fresh-rate 5000]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from benchmarks.common import save
from pipelines.designs import find_design
from pipelines.platform.drills import DrillSpec, Fleet, drill_settings, start_replay, wait_replay
from pipelines.platform.infra import stack_env, start_broker, stop_process, wait_for_log
from pipelines.platform.stream import ensure_topics
from pipelines.settings import Settings


def run_processors(
    base: Settings, spec: DrillSpec, name: str, size: int, processors: int, rate: float | None
) -> dict[str, Any]:
    """`processors` processes in one group; rate None: the topics are filled first, then drained (throughput);
    else the processors run while the events arrive at `rate` (freshness)."""
    settings = drill_settings(base, name)
    start_broker(settings, [])
    try:
        topics = spec.topics(settings)
        ensure_topics(settings, list(topics), topics)
        env = stack_env(settings, stream_state_url="", feast_online_store=settings.feast_online_store)
        data = spec.prepare(settings, size, 7, settings.home, False)
        fleet = Fleet(settings, spec, data, name, {**env, "MLSD_STREAM_PARTITIONS": str(settings.stream_partitions)})
        if rate is None:
            start_replay(settings, spec, data.live, 0, env)
            wait_replay(settings)
        for i in range(processors):
            wait_for_log(fleet.start(f"processor-{i}"), "consuming", 180)
        if rate is not None:
            start_replay(settings, spec, data.live, rate, env)
            wait_replay(settings)
        crashes = fleet.drain(quiet_s=10, timeout_s=900)
        summaries = fleet.summaries()
    finally:
        stop_process(settings, "kafka")
    transactions = sum(s["transactions"] for s in summaries)
    seconds = max(s["seconds"] for s in summaries)
    return {
        "processors": processors,
        "events_sent": data.live_events,
        "transactions": transactions,
        "seconds": round(seconds, 2),
        "transactions_per_s": round(transactions / seconds, 1) if seconds else None,
        "per_process": [
            {"transactions": s["transactions"], "seconds": s["seconds"], "events_per_s": s["events_per_s"]}
            for s in summaries
        ],
        "freshness_ms": summaries[0]["freshness_ms"] if processors == 1 else None,
        "crashes": crashes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--online-store", choices=["sqlite", "redis"], default="sqlite")
    parser.add_argument("--size", type=int, default=400_000, help="transactions over 40 days (the last 10 are read)")
    parser.add_argument("--fresh-rate", type=float, default=5000.0)
    parser.add_argument("--fresh-size", type=int, default=600_000, help="as --size, for the freshness run")
    args = parser.parse_args()
    base = Settings().model_copy(update={"feast_online_store": args.online_store})
    drills = find_design("fraud").drills
    assert drills is not None
    spec = drills()
    started = time.monotonic()
    throughput = []
    for processors in (1, 2):
        run = run_processors(base, spec, f"bench-{args.online_store}-{processors}", args.size, processors, None)
        throughput.append(run)
        print(f"{processors} processor(s): {run['transactions_per_s']:,.0f} transactions/s ({run['transactions']:,})")
    fresh = run_processors(base, spec, f"bench-{args.online_store}-fresh", args.fresh_size, 1, args.fresh_rate)
    print(f"freshness at {args.fresh_rate:,.0f} events/s: {fresh['freshness_ms']}")
    save(
        f"stream_features_{args.online_store}",
        {
            "online_store": args.online_store,
            "setup": "mlsd fraud stream processes (customer stage, repartition by terminal, terminal stage, state "
            "checkpointed in SQLite after every batch); 4 partitions; nothing else running",
            "throughput": throughput,
            "freshness": {"rate": args.fresh_rate, **fresh},
            "targets": {"transactions_per_s_per_process": 10_000, "freshness_p99_ms": 1000},
            "seconds": round(time.monotonic() - started, 1),
        },
    )


if __name__ == "__main__":
    main()
