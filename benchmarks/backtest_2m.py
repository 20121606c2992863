"""Prequential backtest on about two million simulated transactions, every imbalance strategy, four folds.

Usage: python -m benchmarks.backtest_2m [--transactions 2000000] [--folds 4]
"""

from __future__ import annotations

import argparse
import time

from benchmarks.common import save
from pipelines.fraud.backtest import BacktestConfig, run_backtest
from pipelines.fraud.simulate import config_for_size, simulate_transactions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--transactions", type=int, default=2_000_000)
    parser.add_argument("--folds", type=int, default=4)
    args = parser.parse_args()
    frame = simulate_transactions(config_for_size(args.transactions, seed=13))
    started = time.perf_counter()
    result = run_backtest(frame, BacktestConfig(folds=args.folds), progress=print)
    wall = time.perf_counter() - started
    for strategy, metrics in result["summary"].items():
        print(strategy, {k: f"{v['mean']:.3f} ± {v['std']:.3f}" for k, v in metrics.items()})
    save(
        "backtest",
        {"transactions": len(frame), "wall_seconds": wall, "summary": result["summary"], "folds": result["folds"]},
    )


if __name__ == "__main__":
    main()
