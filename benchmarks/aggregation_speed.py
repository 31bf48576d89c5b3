"""Wall time of every aggregation rule on one round's worth of updates, and of detection.

Aggregates n = 50 random float32 updates of d = 1M parameters with each rule of ``RULES`` (the median
of 3 timed runs after one warm-up) and prints one JSON line:

    {"benchmark": "aggregation_speed", "n": 50, "d": 1000000, "f": 5, "ms": {"mean": ..., ...},
     "budget_ms": 300, "over_budget": [...]}

The budget applies to every rule but the geometric median. Usage:

    uv run python benchmarks/aggregation_speed.py [--n 50] [--d 1000000] [--f 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np

from federated.aggregation import RULES, Bucketing, detect_byzantine_clients, make_rule

BUDGET_MS = 300.0


def timed_ms(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: page faults of the first large allocations, BLAS thread start
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 1)


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
    for name in RULES:
        rule = make_rule(name, f=args.f, clip_tau=10.0, norm_bound=10.0)
        ms[name] = timed_ms(lambda: rule(updates), args.repeats)
    bucketed = Bucketing(make_rule("median", f=args.f), bucket_size=2, rng=np.random.default_rng(0))
    ms["bucketing_median_s2"] = timed_ms(lambda: bucketed(updates), args.repeats)
    ids = [str(i) for i in range(args.n)]
    ms["detection"] = timed_ms(lambda: detect_byzantine_clients(updates, ids), args.repeats)
    figures["ms"] = ms
    figures["budget_ms"] = BUDGET_MS
    figures["over_budget"] = [name for name in RULES if name != "geometric_median" and ms[name] > BUDGET_MS]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
