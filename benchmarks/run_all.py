"""Run every benchmark in turn; each writes its JSON into benchmarks/results/."""

from __future__ import annotations

import subprocess
import sys

SCRIPTS = [
    ["benchmarks.stream_features"],
    ["benchmarks.stream_features", "--online-store", "redis"],
    ["benchmarks.scoring_latency"],
    ["benchmarks.training_time"],
    ["benchmarks.backtest_2m"],
    ["benchmarks.recsys_serving"],
    ["benchmarks.hot_reload"],
    ["benchmarks.drift_detection"],
]

if __name__ == "__main__":
    failed = [s for s in SCRIPTS if subprocess.call([sys.executable, "-m", *s]) != 0]
    if failed:
        sys.exit(f"benchmarks failed: {failed}")
