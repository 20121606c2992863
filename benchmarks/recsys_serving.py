"""Recommendation: training time on ~1M interactions (target ≤ 3 min) and /recommend latency with ≥ 10,000
catalogue items at 50 req/s for 30 s (target p99 ≤ 50 ms), with the per-stage split the service reports.

Simulates the interactions, trains and registers `recsys-ranker@champion` (SQLite MLflow), writes the backfilled
user and item features to the Feast online store, serves with `mlsd recsys serve` and drives it with the
open-loop load generator (10 % cold-start users). Usage:
python -m benchmarks.recsys_serving [--interactions 1000000] [--rates 50,75,100,150] [--step-seconds 15]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, save, scratch_stack
from feature_repo.recsys import ITEM_VIEW, USER_VIEW
from pipelines.platform.features import apply_feature_definitions, write_feature_rows
from pipelines.platform.infra import free_port
from pipelines.platform.loadtest import find_max_rate, run_load_test, save_latency_histogram
from pipelines.recsys.demo import stage_latency
from pipelines.recsys.features import backfill_features
from pipelines.recsys.loadgen import payloads_from_interactions
from pipelines.recsys.simulate import config_for_size, simulate_interactions
from pipelines.recsys.train import train_recsys
from tests.service_process import serving


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--rates", default="50,75,100,150,200")
    parser.add_argument("--step-seconds", type=float, default=15.0)
    parser.add_argument("--sustained-seconds", type=float, default=30.0)
    args = parser.parse_args()
    interactions, items = simulate_interactions(config_for_size(args.interactions, seed=11))
    catalogue_items = int(interactions["item_id"].nunique())
    with tempfile.TemporaryDirectory() as tmp, scratch_stack(Path(tmp), with_broker=False) as settings:
        started = time.perf_counter()
        report = train_recsys(settings, interactions, items)
        training_wall = time.perf_counter() - started
        print(f"trained on {len(interactions):,} interactions in {training_wall:.1f} s: {report.seconds}")
        save(
            "recsys_training",
            {
                "interactions": len(interactions),
                "users": report.users,
                "items": report.items,
                "ranker_rows": report.training_rows,
                "wall_seconds": training_wall,
                "seconds": report.seconds,
                "target_seconds": 180,
            },
        )
        users, item_rows = backfill_features(interactions, items)
        write_feature_rows(
            settings,
            apply_feature_definitions(settings),
            [(USER_VIEW, "user_id", users), (ITEM_VIEW, "item_id", item_rows)],
        )
        port = free_port()
        env = {
            "MLSD_HOME": str(settings.home),
            "MLSD_MLFLOW_TRACKING_URI": settings.tracking_uri,
            "MLSD_RECSYS_SERVICE_PORT": str(port),
        }
        payloads = payloads_from_interactions(interactions, k=10, limit=20_000, cold_share=0.1, seed=3)
        with serving(["recsys", "serve"], env, port, ready_s=300) as base:
            url = f"{base}/recommend"
            run_load_test(url, lambda i: payloads[i % len(payloads)], 20, 5)  # warm-up
            stages = stage_latency(url, payloads[1000:1300])
            sustained = run_load_test(url, lambda i: payloads[i % len(payloads)], 50, args.sustained_seconds)
            print("50 req/s:", sustained.summary_rows())
            save_latency_histogram(sustained, RESULTS / "recommend_50rps.png", "recsys /recommend at 50 req/s")
            best, steps = find_max_rate(
                url,
                lambda i: payloads[i % len(payloads)],
                [float(r) for r in args.rates.split(",")],
                args.step_seconds,
                p99_budget_ms=50.0,
                cooldown_s=3.0,
                on_step=lambda r: print(f"{r.target_rps:.0f} req/s: p99 {r.p99_ms} ms, errors {r.errors}"),
            )
    save(
        "recsys_latency",
        {
            "catalogue_items": catalogue_items,
            "interactions": len(interactions),
            "cold_start_share": 0.1,
            "sustained_50rps": sustained.to_dict(),
            "stages_sequential": stages,
            "max_rate_with_p99_le_50ms": best,
            "steps": [s.to_dict() for s in steps],
            "targets": {"p99_ms_at_50rps": 50},
            "cpus": os.cpu_count(),
        },
    )


if __name__ == "__main__":
    main()
