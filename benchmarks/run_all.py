"""Run every benchmark in turn; each writes its JSON into benchmarks/results/."""

from __future__ import annotations

import subprocess
import sys
import tempfile

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as recsys:  # trained once, served with and without the live stream
        scripts = [
            ["benchmarks.stream_features"],
            ["benchmarks.stream_features", "--online-store", "redis"],
            ["benchmarks.scoring_latency"],
            ["benchmarks.training_time"],
            ["benchmarks.backtest_2m"],
            ["benchmarks.recsys_serving", "--workdir", recsys],
            ["benchmarks.recsys_serving", "--workdir", recsys, "--replay-rate", "0"],
            ["benchmarks.hot_reload"],
            ["benchmarks.drift_detection"],
        ]
        failed = [s for s in scripts if subprocess.call([sys.executable, "-m", *s]) != 0]
    if failed:
        sys.exit(f"benchmarks failed: {failed}")
