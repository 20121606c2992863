"""Training time for all four imbalance strategies on about one million simulated transactions (target ≤ 2 min).

Usage: python -m benchmarks.training_time [--transactions 1000000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks.common import save, scratch_stack
from pipelines.fraud.simulate import config_for_size, simulate_transactions
from pipelines.fraud.train import train_fraud


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=1_000_000)
    args = parser.parse_args()
    frame = simulate_transactions(config_for_size(args.transactions, seed=9))
    with tempfile.TemporaryDirectory() as tmp, scratch_stack(Path(tmp), with_broker=False) as settings:
        started = time.perf_counter()
        report = train_fraud(settings, frame, progress=print)
        wall = time.perf_counter() - started
    print(f"{len(frame):,} transactions: {wall:.1f} s end to end; {report.seconds}")
    save(
        "training_time",
        {"transactions": len(frame), "wall_seconds": wall, "report": report.to_dict(), "target_seconds": 120},
    )


if __name__ == "__main__":
    main()
