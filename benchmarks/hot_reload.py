"""Hot reload under load: the fraud service at 100 req/s while `champion` moves twice; zero failed requests wanted.

Trains one champion on simulated data, registers two more versions of it, serves it with `mlsd fraud serve` and
drives it with the open-loop generator in three back-to-back segments: steady, then the alias moved at the start
of the second and of the third. A thread polls /model to see when the new version answers. Then what the
deployment layer costs per request: CPU per `FraudScorer.score` call in its own process, and latency at 200 req/s,
each with serving mode off and shadow (and, with --compare-with, from another source tree of this project, e.g.
`git archive <commit> | tar -x -C /tmp/before`).

Usage: python -m benchmarks.hot_reload [--segment-seconds 10] [--rps 100] [--hot-path-seconds 10] [--rounds 3]
       [--compare-with DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from benchmarks.common import save, scratch_stack
from pipelines.fraud.loadgen import payloads_from_frame
from pipelines.fraud.simulate import config_for_size, simulate_transactions
from pipelines.fraud.train import MODEL_NAME, train_fraud
from pipelines.platform.infra import free_port, stack_env
from pipelines.platform.loadtest import LoadTestResult, run_load_test
from pipelines.settings import Settings
from tests.service_process import post, serving


def summary(result: LoadTestResult) -> dict[str, Any]:
    keys = ("sent", "ok", "errors", "error_kinds", "p50_ms", "p95_ms", "p99_ms", "max_ms", "late_sends")
    return {key: result.to_dict()[key] for key in keys}


def service_env(settings: Settings, port: int, mode: str) -> dict[str, str]:
    return stack_env(settings, fraud_service_port=str(port), serving_mode=mode)


@contextmanager
def fraud_service(settings: Settings, mode: str, source: Path | None = None) -> Iterator[str]:
    """`mlsd fraud serve` from this tree, or from `source` (its `pipelines` and `services` first on the path)."""
    port = free_port()
    env = service_env(settings, port, mode)
    args = ["fraud", "serve"]
    if source is not None:
        # serving() runs `mlsd`; the other tree's CLI is started through Python with that tree first on sys.path.
        env["PYTHONPATH"] = str(source)
    with serving(args, env, port, ready_s=300) as base:
        yield base


def payload_at(payloads: list[dict[str, Any]], offset: int, i: int) -> dict[str, Any]:
    return payloads[(offset + i) % len(payloads)]


def champion_version(base: str) -> str:
    status, body = post(f"{base}/model", {})
    return str(body.get("version", "")) if status == 200 else ""


class SwapWatch:
    """Polls /model from a thread until the champion is `version`; records when it saw it."""

    def __init__(self, base: str, version: str) -> None:
        self.base, self.version = base, version
        self.seen_at: float | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if champion_version(self.base) == self.version:
                self.seen_at = time.monotonic()
                return
            time.sleep(0.05)


def register_copies(n: int) -> list[str]:
    """New versions of the champion's model (same artifact, same tags): what a retrain + promotion looks like."""
    from mlflow import MlflowClient

    from pipelines.platform.registry import register_version

    client = MlflowClient()
    first = client.get_model_version(MODEL_NAME, "1")
    return [register_version(str(first.source), MODEL_NAME, None, tags=dict(first.tags)) for _ in range(n)]


def reload_under_load(settings: Settings, payloads: list[dict[str, Any]], rps: float, seconds: float) -> dict[str, Any]:
    from pipelines.fraud.scoring import load_fraud_model
    from pipelines.platform.registry import alias_version, promote_version

    versions = register_copies(2)
    started = time.perf_counter()
    load_fraud_model(settings, str(alias_version(MODEL_NAME, "champion")))
    load_seconds = time.perf_counter() - started
    segments: dict[str, Any] = {}
    swaps = []
    with fraud_service(settings, "off") as base:
        url = f"{base}/score"

        def load(offset: int) -> LoadTestResult:
            return run_load_test(url, lambda i: payloads[(offset + i) % len(payloads)], rps, seconds)

        load(0)  # warm-up, not reported
        segments["before"] = summary(load(1000))
        for n, version in enumerate(versions, start=1):
            watch = SwapWatch(base, version)
            moved_at = time.monotonic()
            # Through the registry module, as the gate does: an alias moved any other way is never served.
            promote_version(MODEL_NAME, version, "hot-reload benchmark", command="benchmarks/hot_reload.py")
            watch.thread.start()
            segments[f"during_reload_{n}"] = summary(load(1000 * (n + 1)))
            watch.thread.join(60)
            swaps.append(
                {
                    "to_version": version,
                    "seconds_until_served": None if watch.seen_at is None else round(watch.seen_at - moved_at, 3),
                }
            )
    return {
        "rps": rps,
        "segment_seconds": seconds,
        "model_refresh_seconds": settings.model_refresh_seconds,
        "load_seconds_in_process": round(load_seconds, 3),
        "segments": segments,
        "swaps": swaps,
        "failed_requests": sum(s["errors"] for s in segments.values()),
    }


def hot_path(
    settings: Settings, payloads: list[dict[str, Any]], seconds: float, rounds: int, compare_with: Path | None
) -> dict[str, Any]:
    """p50/p99 at 200 req/s, the variants served side by side and loaded in turns, so a busy spell of the shared
    machine hits each of them instead of whichever happened to run then; the median round is the figure to quote."""
    import os
    import statistics
    from contextlib import ExitStack

    variants: list[tuple[str, str, Path | None]] = [("this tree, mode off", "off", None)]
    if compare_with is not None:
        from pipelines.platform.stream import ensure_topics

        ensure_topics(settings, ["fraud.decisions"])  # the topic an older tree may still publish to
        variants.append((f"{compare_with}, mode off", "off", compare_with))
    variants.append(("this tree, mode shadow", "shadow", None))
    results: dict[str, Any] = {}
    with ExitStack() as stack:
        urls = {}
        for name, mode, source in variants:
            url = f"{stack.enter_context(fraud_service(settings, mode, source))}/score"
            _, first = post(url, payloads[0])
            run_load_test(url, lambda i: payloads[i % len(payloads)], 100, 5)  # warm-up
            urls[name] = url
            results[name] = {"response_fields": sorted(first), "rounds": []}  # shows which code answered
        for n in range(rounds):
            for name, url in urls.items():
                load_1m = os.getloadavg()[0]
                result = run_load_test(url, partial(payload_at, payloads, 777 * n), 200, seconds)
                results[name]["rounds"].append({**summary(result), "load_average_1m": round(load_1m, 2)})
                print(f"{name} round {n}: p50 {result.p50_ms} ms, p99 {result.p99_ms} ms, errors {result.errors}")
    for entry in results.values():
        p99s = [r["p99_ms"] for r in entry["rounds"] if r["p99_ms"] is not None]
        p50s = [r["p50_ms"] for r in entry["rounds"] if r["p50_ms"] is not None]
        entry["median_p99_ms"] = statistics.median(p99s) if p99s else None
        entry["median_p50_ms"] = statistics.median(p50s) if p50s else None
        entry["errors"] = sum(r["errors"] for r in entry["rounds"])
    return {"rps": 200, "seconds_per_round": seconds, "rounds": rounds, "variants": results}


CPU_SNIPPET = """
import json, sys, time
from pipelines.fraud.events import TransactionEvent
from pipelines.fraud.scoring import FraudScorer
from pipelines.settings import Settings
events = [TransactionEvent(**p) for p in json.load(open(sys.argv[1]))]
scorer = FraudScorer(Settings())
for event in events[:500]:
    scorer.score(event)
cpu, wall = time.process_time(), time.perf_counter()
for event in events[500:]:
    scorer.score(event)
n = len(events) - 500
print(json.dumps({"requests": n, "cpu_ms_per_request": (time.process_time() - cpu) * 1000 / n,
                  "wall_ms_per_request": (time.perf_counter() - wall) * 1000 / n}))
scorer.close()
"""


def cpu_per_request(
    settings: Settings, payloads: list[dict[str, Any]], compare_with: Path | None, requests: int = 3000
) -> dict[str, Any]:
    """CPU time of FraudScorer.score in a process of its own (no HTTP): steadier than latency on a shared machine.

    Includes the Kafka producer's I/O thread and the alias watcher, which run in the same process.
    """
    import json
    import os
    import subprocess

    path = Path(settings.home) / "cpu_payloads.json"
    path.write_text(json.dumps(payloads[: requests + 500]))
    runs: list[tuple[str, str, Path | None]] = [("this tree, mode off", "off", None)]
    if compare_with is not None:
        runs.append((f"{compare_with}, mode off", "off", compare_with))
    runs.append(("this tree, mode shadow", "shadow", None))
    results = {}
    for name, mode, source in runs:
        env = {**os.environ, **service_env(settings, 0, mode)}
        if source is not None:
            env["PYTHONPATH"] = str(source)
        # `python -c` puts the working folder first on sys.path: run it in the tree under test.
        done = subprocess.run(
            [sys.executable, "-c", CPU_SNIPPET, str(path)],
            env=env,
            cwd=source or Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        results[name] = json.loads(lines[-1]) if lines else {"error": done.stderr[-2000:]}
        print(name, results[name], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rps", type=float, default=100.0)
    parser.add_argument("--segment-seconds", type=float, default=10.0)
    parser.add_argument("--hot-path-seconds", type=float, default=10.0, help="Seconds per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--compare-with", type=Path, default=None, help="Another source tree to serve for the check")
    args = parser.parse_args()
    if args.compare_with is not None and not (args.compare_with / "services" / "fraud" / "service.py").exists():
        sys.exit(f"{args.compare_with} has no services/fraud/service.py; pass a source tree of this project.")
    frame = simulate_transactions(config_for_size(args.transactions, seed=5))
    with tempfile.TemporaryDirectory() as tmp, scratch_stack(Path(tmp)) as settings:
        train_fraud(settings, frame, strategies=("class_weight",))
        payloads = payloads_from_frame(frame.tail(20_000))
        reload = reload_under_load(settings, payloads, args.rps, args.segment_seconds)
        print(reload, flush=True)
        from pipelines.platform.registry import set_alias

        # What shadow mode scores with (audited, so the services accept it).
        set_alias(MODEL_NAME, "challenger", "1", "register", "hot-reload benchmark: shadow challenger")
        cpu = cpu_per_request(settings, payloads, args.compare_with)
        check = hot_path(settings, payloads, args.hot_path_seconds, args.rounds, args.compare_with)
    save(
        "hot_reload",
        {
            "transactions": len(frame),
            "hot_reload": reload,
            "cpu_per_request": cpu,
            "hot_path_200rps": check,
            "target": {"failed_requests": 0},
            "note": "2 shared cores, other work running at the same time: compare runs of one file, not across files",
        },
    )


if __name__ == "__main__":
    main()
