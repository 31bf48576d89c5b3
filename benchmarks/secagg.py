"""Secure-aggregation costs: one JSON line per case.

State-machine cases (in memory, real cryptography), for n in {10, 100}, d in {100K, 1M} and dropout
{0, 10, 30}% of the cohort after key sharing (so their masks must be rebuilt):
  - ``broker_unmask_s``: the broker closing the unmask stage (Shamir reconstruction + removing masks);
  - ``broker_sum_s``: the broker adding the masked inputs into its running sum as they arrive (all of them);
  - ``worker_mask_s``: one worker computing its masked input (median over workers);
  - ``prg_gb_s``: mask PRG throughput (AES-256-CTR keystream added into a uint32 vector).
Process cases: the secure/plain round-time ratio of ``fl simulate`` with 100 clients and a 1.06M-parameter
model (``--rounds-only``/``--skip-rounds`` select parts): the median round over ``--repeats`` runs per mode
of ``--rounds`` rounds each (the first round of a run, which compiles, left out), at 10 local epochs (the
default) and at 1 (the least local work, where the secure overhead weighs most).
``ratio`` compares like with like: a plain FedAvg round with Byzantine detection off, since a secure round
cannot score individual updates. ``ratio_vs_plain_detect`` is against the plain default, detection on.
Usage:

    uv run python benchmarks/secagg.py [--skip-rounds | --rounds-only] [--repeats N] [--local-epochs E ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from flcli import last_json, simulate_command

from federated.config import SecureConfig
from federated.crypto.graph import degree_for
from federated.crypto.prg import add_mask
from federated.crypto.primitives import generate_identity
from federated.crypto.secagg_broker import SecAggBroker
from federated.crypto.secagg_worker import SecAggWorker


def prg_throughput(d: int = 1_000_000, repeats: int = 20) -> float:
    acc = np.zeros(d, dtype=np.uint32)
    seed = os.urandom(32)
    add_mask(acc, seed, 1)
    started = time.perf_counter()
    for _ in range(repeats):
        add_mask(acc, seed, 1)
    return 4 * d * repeats / (time.perf_counter() - started) / 1e9


def state_machine_case(n: int, d: int, dropout: float) -> dict[str, object]:
    # The default degree is sized for 10% dropout; for higher rates use the degree sized for them.
    params = SecureConfig(enabled=True, neighbors=degree_for(n, max(dropout, 0.1))).round_params(n, vector_length=d)
    ids = [f"w{i:03d}" for i in range(n)]
    keys = {w: generate_identity() for w in ids}
    broker = SecAggBroker(1, ids, params, {w: pub for w, (_, pub) in keys.items()})
    workers = {w: SecAggWorker(w, keys[w][0], 1, params) for w in ids}
    for w in ids:
        broker.receive(w, workers[w].advertise())
    for w, roster in broker.advance():
        broker.receive(w, workers[w].on_roster(roster))
    dropped = set(ids[: round(dropout * n)])
    x = np.arange(d, dtype=np.uint32)
    mask_times = []
    sum_s = 0.0
    for w, shares in broker.advance():
        if w in dropped:
            broker.drop(w, "benchmark")
            continue
        workers[w].on_shares(shares)
        started = time.perf_counter()
        masked = workers[w].masked_input(x)
        mask_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        broker.receive(w, masked)  # the broker adds each masked input to its running sum on arrival
        sum_s += time.perf_counter() - started
    for w, check in broker.advance():
        broker.receive(w, workers[w].on_consistency(check))
    for w, request in broker.advance():
        broker.receive(w, workers[w].on_unmask(request))
    started = time.perf_counter()
    broker.advance()
    unmask = time.perf_counter() - started
    if broker.stage == "done":
        assert broker.result is not None
        expected = (x.astype(np.uint64) * (n - len(dropped)) % (1 << 32)).astype(np.uint32)
        assert np.array_equal(broker.result.total, expected), "wrong sum"
    return {"case": "state_machine", "outcome": broker.stage, "error": broker.error or None,
            "n": n, "d": d, "dropout": dropout, "degree": params.degree,
            "threshold": params.threshold, "broker_unmask_s": round(unmask, 4),
            "broker_sum_s": round(sum_s, 4),
            "worker_mask_s": round(statistics.median(mask_times), 4)}


def round_times(mode: str, tmp: Path, clients: int, rounds: int, epochs: int) -> list[float]:
    """Round durations (s) of one ``fl simulate`` run, the first round (compiling) left out.

    ``mode``: ``secure``; ``plain`` (FedAvg, detection off: the same aggregation a secure round does);
    ``plain_detect`` (the plain default, which also scores every update for Byzantine detection, work a
    secure round cannot do).
    """
    run_dir = tmp / f"{mode}{clients}e{epochs}"
    run_dir.mkdir(parents=True, exist_ok=True)
    args = simulate_command(run_dir / "store.db", "--num-clients", str(clients), "--num-rounds", str(rounds),
                            "--local-epochs", str(epochs), "--model", "benchmarks.models:wide_mlp")
    if mode == "secure":
        args.append("--secure")
    elif mode == "plain":
        (run_dir / "config.yaml").write_text("aggregation:\n  detect: false\n")
        args += ["--config", str(run_dir / "config.yaml")]
    out = subprocess.run(args, capture_output=True, text=True, check=True, timeout=1800,
                         cwd=Path(__file__).resolve().parents[1])
    result = last_json(out.stdout)
    return [r["duration_s"] for r in result["rounds"][1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-rounds", action="store_true")
    parser.add_argument("--rounds-only", action="store_true")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=1, help="runs per mode, alternating (medians over all)")
    parser.add_argument("--local-epochs", type=int, action="append",
                        help="local epochs per round (repeatable; default: 10, the configuration default, and 1, "
                             "the least local work, where the secure overhead weighs most)")
    args = parser.parse_args()
    if not args.rounds_only:
        print(json.dumps({"case": "prg", "prg_gb_s": round(prg_throughput(), 2)}), flush=True)
        for n in (10, 100):
            for d in (100_000, 1_000_000):
                for dropout in (0.0, 0.1, 0.3):
                    print(json.dumps(state_machine_case(n, d, dropout)), flush=True)
    if not args.skip_rounds:
        for epochs in args.local_epochs or [10, 1]:
            # Runs alternate between the modes, so a slow spell of a shared machine falls on all of them.
            rounds: dict[str, list[float]] = {"plain": [], "plain_detect": [], "secure": []}
            for repeat in range(args.repeats):
                for mode, kept in rounds.items():
                    with tempfile.TemporaryDirectory() as tmpdir:
                        kept += round_times(mode, Path(tmpdir) / str(repeat), args.clients, args.rounds, epochs)
            times = {mode: statistics.median(kept) for mode, kept in rounds.items()}
            print(json.dumps({"case": "round_ratio", "n": args.clients, "d": 1_060_106, "local_epochs": epochs,
                              "runs_per_mode": args.repeats,
                              "plain_round_s": round(times["plain"], 3),
                              "plain_detect_round_s": round(times["plain_detect"], 3),
                              "secure_round_s": round(times["secure"], 3),
                              "ratio": round(times["secure"] / times["plain"], 3),
                              "ratio_vs_plain_detect": round(times["secure"] / times["plain_detect"], 3)}),
                  flush=True)

if __name__ == "__main__":
    main()
