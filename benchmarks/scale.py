"""Thousands of clients on one machine (issue 15): ``fl simulate`` with 1,000 and 10,000 virtual clients.

Runs the real ``fl simulate`` (one broker process, ``--processes`` worker processes hosting every virtual
client, each client with its own identity and session; a process's clients share its TCP connection
unless ``-- --connection-per-client`` is given) and, while it runs, reads
every child process's peak resident memory (``VmHWM``) from /proc. Prints one JSON line:

    {"benchmark": "scale", "cases": [{"clients", "cohort", "secure", "rounds_complete", "answered",
      "round_s_median", "round_s_max", "overhead_s_median", "overhead_s_max", "wall_s",
      "broker_peak_rss_mb", "worker_peak_rss_mb": [...], "command": "..."}, ...]}

``answered`` is each round's participant count (every selected client answered when it equals the
cohort). Round times leave out round 1, which includes compiling the training step in every worker
process. The data set is ``synthetic:N`` with N chosen so that every client holds ``--samples`` training
samples (the test split is 20% more). Usage:

    uv run python benchmarks/scale.py                      # 1,000/100 and 10,000/1,000, plain and --secure
    uv run python benchmarks/scale.py --clients 10000 --modes secure
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import procs


def dataset_for(clients: int, samples: int) -> str:
    """A ``synthetic:N`` spec whose training split (80%, stratified by class) gives every client at least
    ``samples`` samples: 5/4 of what the clients need, to a multiple of 10, plus 10 (synthetic:12510 for
    1,000 clients of 10)."""
    return f"synthetic:{-(-clients * samples * 5 // 4) // 10 * 10 + 10}"


def run_case(tmp: Path, clients: int, cohort: int, rounds: int, secure: bool, samples: int,
             extra: list[str]) -> dict[str, Any]:
    """One ``fl simulate`` run, its figures and the peak RSS of the broker and of each worker process."""
    name = f"{clients}-{cohort}-{'secure' if secure else 'plain'}"
    args = ["fl", "simulate", "--json", "--num-clients", str(clients), "--clients-per-round", str(cohort),
            "--num-rounds", str(rounds), "--dataset", dataset_for(clients, samples),
            *(["--secure"] if secure else []), *extra]
    store = tmp / name / "store.db"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "federated.cli.main", *args[1:], "--store", str(store)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks: dict[int, float] = {}
    roles: dict[int, str] = {}
    out: list[str] = []
    err: list[str] = []
    readers = [threading.Thread(target=lambda s, b: b.extend(s), args=(stream, buf), daemon=True)
               for stream, buf in ((proc.stdout, out), (proc.stderr, err))]
    for r in readers:
        r.start()
    while proc.poll() is None:
        for pid in procs.children(proc.pid):
            if pid not in roles:
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
                except OSError:
                    continue
                roles[pid] = "broker" if " broker " in cmdline else "worker"
            peak = procs.peak_rss_mb(pid)
            if peak is not None:
                peaks[pid] = max(peak, peaks.get(pid, 0.0))
        time.sleep(0.2)
    for r in readers:
        r.join(timeout=10)
    wall = time.perf_counter() - started
    if proc.returncode != 0 or not out:
        sys.stderr.write("".join(err[-40:]))
        raise SystemExit(f"{name}: fl simulate exited {proc.returncode}")
    result = json.loads(out[-1])
    timed = result["rounds"][1:] or result["rounds"]
    return {
        "clients": clients,
        "cohort": cohort,
        "secure": secure,
        "rounds_complete": result["num_rounds"],
        "answered": [r["participants"] for r in result["rounds"]],
        "round_s_median": round(statistics.median(r["duration_s"] for r in timed), 3),
        "round_s_max": round(max(r["duration_s"] for r in timed), 3),
        "overhead_s_median": round(statistics.median(r["overhead_s"] for r in timed), 3),
        "overhead_s_max": round(max(r["overhead_s"] for r in timed), 3),
        "wall_s": round(wall, 1),
        "broker_peak_rss_mb": round(max((m for p, m in peaks.items() if roles[p] == "broker"), default=0.0), 1),
        "worker_peak_rss_mb": sorted(round(m, 1) for p, m in peaks.items() if roles[p] == "worker"),
        "final_accuracy": result["final_accuracy"],
        "command": "uv run " + shlex.join(args),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="1000,10000", help="comma-separated federation sizes")
    parser.add_argument("--cohort-fraction", type=float, default=0.1, help="clients per round / clients")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--modes", default="plain,secure", help="plain, secure or both")
    parser.add_argument("--samples", type=int, default=10, help="training samples per client")
    parser.add_argument("extra", nargs="*", help="more fl simulate flags (after --)")
    args = parser.parse_args()
    cases = []
    with tempfile.TemporaryDirectory() as tmpdir:
        for clients in (int(c) for c in args.clients.split(",")):
            for mode in args.modes.split(","):
                cohort = max(1, round(clients * args.cohort_fraction))
                cases.append(run_case(Path(tmpdir), clients, cohort, args.rounds, mode == "secure", args.samples,
                                      args.extra))
                print(json.dumps(cases[-1]), file=sys.stderr)
    print(json.dumps({"benchmark": "scale", "cases": cases}))


if __name__ == "__main__":
    main()
