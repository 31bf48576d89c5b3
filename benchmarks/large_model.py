"""A 200 MB model (50.1M float32 parameters) completes rounds over CurveZMQ on loopback.

Real processes: ``flbroker --keys-dir`` and two enrolled ``flworker --keys`` processes, with application
and ZMTP heartbeats on (1 s interval, 5 s timeout). Each TASK and UPDATE carries the whole model in 8 MiB
chunks. Prints one JSON line: per round its duration, the bytes moved (both directions, counted at the
broker) and the throughput in MB/s over the round's overhead (its wall time minus the slowest worker's
training: transport, CURVE, aggregation, evaluation and the checkpoint), plus the exit codes. Usage (repository root):

    uv run python benchmarks/large_model.py [--rounds 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from federated.broker.store import RoundStore
from federated.keys import create_broker_keys, create_worker_keys, enrol_worker

BIN = Path(sys.executable).parent
MODEL = "benchmarks.models:huge_mlp"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--logs", action="store_true", help="Print the tails of the processes' logs.")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        create_broker_keys(root / "broker")
        secrets = []
        for i in range(args.workers):
            public, secret = create_worker_keys(root / f"w{i}", f"w{i}")
            enrol_worker(root / "broker", public)
            secrets.append(secret)
        config = root / "config.yaml"
        config.write_text("broker:\n  heartbeat_interval_s: 1.0\n  heartbeat_timeout_s: 5.0\n"
                          "  round_timeout_s: 600.0\n  start_timeout_s: 600.0\n")
        port = 20000 + os.getpid() % 20000
        store = root / "store.db"
        started = time.perf_counter()
        broker = subprocess.Popen(
            [str(BIN / "flbroker"), "--bind", f"tcp://127.0.0.1:{port}", "--keys-dir", str(root / "broker"),
             "--config", str(config), "--store", str(store), "--model", MODEL, "--num-clients", str(args.workers),
             "--num-rounds", str(args.rounds), "--local-epochs", "1", "--batch-size", "64",
             "--learning-rate", "0.01", "--momentum", "0", "-v"],
            env=env, stdout=subprocess.DEVNULL, stderr=(root / "broker.log").open("wb"))
        workers = [subprocess.Popen(
            [str(BIN / "flworker"), "--client-id", f"w{i}", "--server-address", f"127.0.0.1:{port}",
             # A small shard each (72 samples: two local steps): the figure is about moving the model.
             "--dataset", "digits", "--shard", str(i), "--num-shards", "20", "--model", MODEL,
             "--keys", str(secret), "--broker-key", str(root / "broker" / "broker.key"), "-v"],
            env=env, stdout=subprocess.DEVNULL, stderr=(root / f"w{i}.log").open("wb"))
            for i, secret in enumerate(secrets)]
        try:
            broker_code = broker.wait(timeout=1800)
            worker_codes = [w.wait(timeout=120) for w in workers]
        except subprocess.TimeoutExpired:
            broker_code, worker_codes = broker.poll(), [w.poll() for w in workers]
        finally:
            for p in (broker, *workers):
                if p.poll() is None:
                    p.kill()
        wall = time.perf_counter() - started
        if args.logs:
            for log in sorted(root.glob("*.log")):
                sys.stderr.write(f"--- {log.name}\n" + log.read_text(errors="replace")[-6000:])
        with RoundStore(store, readonly=True) as s:
            rounds = s.list_rounds()
            params = sum(int(v.size) for v in s.load_checkpoint(0).values())
    print(json.dumps({
        "benchmark": "large_model_curve",
        "parameters": params,
        "model_mb": round(params * 4 / 1e6, 1),
        "workers": args.workers,
        "transport": "curve",
        "rounds": [{"round": r.round, "status": r.status, "duration_s": round(r.duration_s, 2),
                    "overhead_s": None if r.overhead_s is None else round(r.overhead_s, 2),
                    "local_s": round(r.metrics.get("max_local_s", 0.0), 2),
                    "bytes": r.bytes_up + r.bytes_down,
                    # Transport and broker work only: the round's wall time minus the slowest local training.
                    "mb_per_s": None if not r.overhead_s else round((r.bytes_up + r.bytes_down) / 1e6 / r.overhead_s, 1)}
                   for r in rounds],
        "completed": sum(r.status == "complete" for r in rounds),
        "broker_exit": broker_code,
        "worker_exits": worker_codes,
        "wall_s": round(wall, 1),
    }))


if __name__ == "__main__":
    main()
