"""Orchestration overhead per round (DESIGN §3) and the wall time of a small simulation.

Runs the real ``fl simulate`` (broker and worker processes over loopback TCP) and prints one JSON line:

    {"overhead_ms_median_10": ..., "overhead_ms_median_100": ..., "wall_s_10x5": ..., ...}

``overhead_s`` of a round = its wall time - the slowest participant's local time (compute, plus the time
a virtual client queued for a CPU shared with other clients of its process). Usage:

    uv run python benchmarks/overhead.py [--rounds 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from flcli import last_json, simulate_command


def simulate(tmp: Path, name: str, *flags: str) -> dict[str, Any]:
    args = simulate_command(tmp / name / "store.db", *flags)
    started = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=600)
    result = last_json(out.stdout)
    result["outer_wall_s"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="rounds per overhead run")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the 10x5 wall-time case")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        figures: dict[str, Any] = {"benchmark": "overhead"}
        for n in (10, 100):
            run = simulate(tmp, f"o{n}", "--num-clients", str(n), "--clients-per-round", str(n),
                           "--num-rounds", str(args.rounds), "--local-epochs", "1")
            # The first round includes compiling the training step in every worker: report it apart.
            overheads = [r["overhead_s"] * 1000 for r in run["rounds"][1:]]
            figures[f"overhead_ms_median_{n}"] = round(statistics.median(overheads), 2)
            figures[f"overhead_ms_max_{n}"] = round(max(overheads), 2)
            figures[f"round_ms_median_{n}"] = round(statistics.median(r["duration_s"] * 1000 for r in run["rounds"][1:]), 2)
        walls = []
        for i in range(args.repeats):
            run = simulate(tmp, f"w{i}", "--num-clients", "10", "--num-rounds", "5")
            walls.append(run["outer_wall_s"])
        figures["wall_s_10x5_median"] = round(statistics.median(walls), 3)
        figures["wall_s_10x5_all"] = [round(w, 3) for w in walls]
        figures["final_accuracy_10x5"] = run["final_accuracy"]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
