"""The fault drills at full size, one after another (`make drills`): the figures in docs/designs/fraud.md and
docs/designs/monitoring.md.

Each runs `mlsd drill` in a scratch directory and writes benchmarks/results/drills/<name>.json. About 35 minutes on
2 cores (17 for the stream drills, 4 for each service drill); nothing else should run meanwhile (the recovery times,
the rates and the latencies depend on it).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import RESULTS

FULL = ["--size", "360000", "--rate", "2000"]  # 93,791 live events after 30 days of history
DRILLS = {
    "stream-crash": ["--scenario", "stream-crash", "--processors", "2", "--kills", "3", *FULL],
    "poison-events": ["--scenario", "poison-events", "--processors", "2", *FULL],
    "rebalance": ["--scenario", "rebalance", "--processors", "2", *FULL],
    "broker-restart": ["--scenario", "broker-restart", "--processors", "2", *FULL],
    "stream-crash-4-processors": ["--scenario", "stream-crash", "--processors", "4", "--kills", "3", *FULL],
    "stream-crash-1-processor": ["--scenario", "stream-crash", "--processors", "1", "--kills", "3", *FULL],
}
# The service under 100 req/s; its dependency away for 20 s after 20 s, then 20 s more.
SERVICE = ["--rps", "100", "--outage", "20", "--around", "20"]
DRILLS |= {
    "online-store-outage-sqlite": ["--scenario", "online-store-outage", "--online-store", "sqlite", *SERVICE],
    "online-store-outage-redis": ["--scenario", "online-store-outage", "--online-store", "redis", *SERVICE],
    "broker-outage": ["--scenario", "broker-outage", *SERVICE],
    "registry-outage": ["--scenario", "registry-outage", *SERVICE],
}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help=f"drills to run (default: all): {', '.join(DRILLS)}")
    chosen = parser.parse_args().names or list(DRILLS)
    if unknown := [n for n in chosen if n not in DRILLS]:
        parser.error(f"unknown drill {', '.join(unknown)}; choose from {', '.join(DRILLS)}")
    out = RESULTS / "drills"
    out.mkdir(parents=True, exist_ok=True)
    mlsd = str(Path(sys.executable).with_name("mlsd"))
    failed = []
    for name in chosen:
        with tempfile.TemporaryDirectory() as scratch:  # the drill's home (.mlsd) lives there
            command = [mlsd, "drill", *DRILLS[name], "--json-out", str(out / f"{name}.json")]
            if subprocess.call(command, cwd=scratch) != 0:
                failed.append(name)
    if failed:
        sys.exit(f"drills failed: {failed}")
