"""Streaming features: throughput of one processor, and freshness (produced → readable online) at 1,000 tx/s.

Usage: python -m benchmarks.stream_features [--transactions 100000] [--fresh-rate 1000] [--fresh-seconds 30]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd

from benchmarks.common import save, scratch_stack
from feature_repo.fraud import fraud_feature_objects
from pipelines.fraud.simulate import config_for_size, simulate_transactions
from pipelines.fraud.stream import SCHEMAS, FraudFeatureSink, replay_transactions, warm_engine
from pipelines.platform.features import apply_feature_definitions
from pipelines.platform.microbatch import run_micro_batches
from pipelines.platform.stream import make_consumer, make_producer, percentile_summary


def joined_consumer(settings, group: str):  # type: ignore[no-untyped-def]
    """A consumer that has its partitions and sits at the end of them: only new events count."""
    consumer = make_consumer(settings, list(SCHEMAS), group, auto_offset_reset="latest")
    while not consumer.assignment():
        consumer.poll(timeout_ms=200)
    consumer.seek_to_end()
    for partition in consumer.assignment():
        consumer.position(partition)
    return consumer


def process(settings, history, consumer, idle_s: float):  # type: ignore[no-untyped-def]
    store = apply_feature_definitions(settings, [fraud_feature_objects])
    sink = FraudFeatureSink(settings, store, warm_engine(history, settings.fraud_label_delay_days))
    producer = make_producer(settings)
    stats = run_micro_batches(
        consumer, producer, SCHEMAS, sink, settings.stream_batch_size, settings.stream_batch_ms, idle_stop_s=idle_s
    )
    consumer.close()
    producer.close()
    return stats, sink


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--fresh-rate", type=float, default=1000.0)
    parser.add_argument("--fresh-seconds", type=float, default=30.0)
    parser.add_argument("--online-store", choices=["sqlite", "redis"], default="sqlite")
    args = parser.parse_args()
    frame = simulate_transactions(config_for_size(400_000, seed=3))
    cut = frame["timestamp"].min() + pd.Timedelta(days=40)
    history, live = frame[frame["timestamp"] < cut], frame[frame["timestamp"] >= cut]
    throughput_events = live.head(args.transactions)
    fresh_events = live.iloc[args.transactions :].head(int(args.fresh_rate * (args.fresh_seconds + 5)))

    with tempfile.TemporaryDirectory() as tmp, scratch_stack(Path(tmp)) as base:
        settings = base.model_copy(update={"feast_online_store": args.online_store})
        producer = make_producer(settings)
        # 1) throughput: the topic is filled first, then one processor drains it as fast as it can.
        replay_transactions(producer, throughput_events, rate=0)
        consumer = make_consumer(settings, list(SCHEMAS), "bench-throughput")
        stats, sink = process(settings, history, consumer, idle_s=3)
        throughput = {
            "events": stats.processed,
            "transactions": sink.stats.transactions,
            "seconds": stats.seconds,
            "transactions_per_s": sink.stats.transactions / stats.seconds,
            "batches": stats.batches,
            "batch_size": settings.stream_batch_size,
        }
        print(f"throughput: {throughput['transactions_per_s']:,.0f} transactions/s over {stats.processed:,} events")

        # 2) freshness: events produced at a steady rate while the processor runs.
        result: dict = {}
        consumer = joined_consumer(settings, "bench-freshness")
        worker = threading.Thread(
            target=lambda: result.update(
                zip(("stats", "sink"), process(settings, None, consumer, idle_s=3), strict=True)
            )
        )
        worker.start()
        time.sleep(1)
        # The first seconds after start-up (group join, first writes) are not steady state: warm up, then measure.
        warm_up = fresh_events.head(int(args.fresh_rate * 5))
        replay_transactions(producer, warm_up, rate=args.fresh_rate)
        time.sleep(2)
        sent = replay_transactions(producer, fresh_events.iloc[len(warm_up) :], rate=args.fresh_rate)
        worker.join()
        values = result["sink"].stats.freshness_ms[len(warm_up) :]
        freshness = percentile_summary(values)
        print(
            f"freshness at {sent['rate']:,.0f} events/s: p50 {freshness['p50']:.0f} ms, p99 {freshness['p99']:.0f} ms"
        )
        producer.close()
    save(
        f"stream_features_{args.online_store}",
        {
            "online_store": args.online_store,
            "throughput": throughput,
            "freshness": {"target_rate": args.fresh_rate, "achieved_rate": sent["rate"], "ms": freshness},
            "targets": {"transactions_per_s": 10_000, "freshness_p99_ms": 1000},
        },
    )


if __name__ == "__main__":
    main()
