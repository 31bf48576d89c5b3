"""Wall time of every aggregation rule on one round's worth of updates, and of detection.

Aggregates n = 50 random float32 updates of d = 1M parameters with each rule of ``RULES`` (the median
of 3 timed runs after one warm-up) and prints one JSON line:

    {"benchmark": "aggregation_speed", "n": 50, "d": 1000000, "f": 5, "ms": {"mean": ..., ...},
     "cpu_ms": {...}, "budget_ms": 300, "over_budget": [...], "load_average_1min": ..., "cpus": ...}

The budget applies to every rule but the geometric median. ``cpu_ms`` is CPU time summed over threads
(the sorts and BLAS use up to 2); on a shared machine it is the steadier figure. Usage:

    uv run python benchmarks/aggregation_speed.py [--n 50] [--d 1000000] [--f 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np

from federated.aggregation import RULES, Bucketing, detect_byzantine_clients, make_rule

BUDGET_MS = 300.0


def timed_ms(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall time and median CPU time (all threads) of ``repeats`` runs, in ms."""
    run()  # warm-up: page faults of the first large allocations, BLAS thread start
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append((time.perf_counter() - wall) * 1000)
        cpus.append((time.process_time() - cpu) * 1000)
    return round(statistics.median(walls), 1), round(statistics.median(cpus), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50, help="updates per round")
    parser.add_argument("--d", type=int, default=1_000_000, help="parameters per update")
    parser.add_argument("--f", type=int, default=5, help="Byzantine workers each rule tolerates")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per rule (median reported)")
    args = parser.parse_args()
    updates = np.random.default_rng(0).standard_normal((args.n, args.d), dtype=np.float32)
    figures: dict[str, object] = {"benchmark": "aggregation_speed", "n": args.n, "d": args.d, "f": args.f}
    ms: dict[str, float] = {}
    cpu_ms: dict[str, float] = {}
    runs: dict[str, Callable[[], object]] = {
        name: partial(make_rule(name, f=args.f, clip_tau=10.0, norm_bound=10.0), updates) for name in RULES}
    bucketed = Bucketing(make_rule("median", f=args.f), bucket_size=2, rng=np.random.default_rng(0))
    runs["bucketing_median_s2"] = partial(bucketed, updates)
    runs["detection"] = partial(detect_byzantine_clients, updates, [str(i) for i in range(args.n)])
    for name, run in runs.items():
        ms[name], cpu_ms[name] = timed_ms(run, args.repeats)
    figures["ms"] = ms
    figures["cpu_ms"] = cpu_ms
    figures["budget_ms"] = BUDGET_MS
    figures["over_budget"] = [name for name in RULES if name != "geometric_median" and ms[name] > BUDGET_MS]
    # The machine may be shared: a load above the core count means the wall times above are inflated.
    figures["load_average_1min"] = round(os.getloadavg()[0], 2)
    figures["cpus"] = os.cpu_count()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
