"""Scoring service latency: 200 req/s for 30 s (target p99 ≤ 20 ms), then the highest rate with p99 ≤ 50 ms.

Starts its own broker, trains a champion on simulated data, serves it with `mlsd fraud serve` and drives it with
the open-loop load generator. Usage: python -m benchmarks.scoring_latency [--rates 200,400,...] [--step-seconds 15]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import RESULTS, save, scratch_stack
from pipelines.fraud.loadgen import payloads_from_frame
from pipelines.fraud.simulate import config_for_size, simulate_transactions
from pipelines.fraud.train import train_fraud
from pipelines.platform.infra import free_port, stack_env, wait_for_http
from pipelines.platform.loadtest import find_max_rate, run_load_test, save_latency_histogram


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", default="200,300,400,500,600,700,800,1000")
    parser.add_argument("--step-seconds", type=float, default=15.0)
    parser.add_argument("--sustained-seconds", type=float, default=30.0)
    args = parser.parse_args()
    frame = simulate_transactions(config_for_size(200_000, seed=5))
    with tempfile.TemporaryDirectory() as tmp, scratch_stack(Path(tmp)) as settings:
        train_fraud(settings, frame)
        port = free_port()
        env = {**os.environ, **stack_env(settings, fraud_service_port=str(port))}
        service = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlsd"), "fraud", "serve"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for_http(f"{base}/readyz", 120, "the scoring service")
            payloads = payloads_from_frame(frame.tail(50_000))
            url = f"{base}/score"
            run_load_test(url, lambda i: payloads[i % len(payloads)], 100, 5)  # warm-up
            sustained = run_load_test(url, lambda i: payloads[i % len(payloads)], 200, args.sustained_seconds)
            print("200 req/s:", sustained.summary_rows())
            save_latency_histogram(sustained, RESULTS / "scoring_200rps.png", "fraud /score at 200 req/s")
            rates = [float(r) for r in args.rates.split(",")]
            best, steps = find_max_rate(
                url,
                lambda i: payloads[i % len(payloads)],
                rates,
                args.step_seconds,
                p99_budget_ms=50.0,
                cooldown_s=3.0,
                on_step=lambda r: print(f"{r.target_rps:.0f} req/s: p99 {r.p99_ms} ms, errors {r.errors}"),
            )
        finally:
            os.killpg(service.pid, signal.SIGTERM)
            service.wait(timeout=30)
    save(
        "scoring_latency",
        {
            "sustained_200rps": sustained.to_dict(),
            "max_rate_with_p99_le_50ms": best,
            "steps": [s.to_dict() for s in steps],
            "targets": {"p99_ms_at_200rps": 20, "max_rate_p99_50ms": 800},
            "workers": settings.fraud_service_workers,
        },
    )


if __name__ == "__main__":
    main()
