"""Soak: many rounds while workers come and go; no hang, and the broker's memory stays flat.

A real ``fl broker`` process on 127.0.0.1 runs ``--rounds`` complete rounds (200 by default) of a small
job (the digits MLP, ``--local-epochs`` 30, so a round takes a few tenths of a second) with 10 clients
and 5 per round:

- 7 stable clients share one worker process (the kind ``fl simulate`` starts). With ``--socket-dropout``
  (0.2 by default) the first client of each cohort, when it lives there, vanishes on its TASK: it closes
  its socket without a word and comes back on a new connection, as a device that lost its network.
- 3 churning clients (30%) run as their own ``flworker`` processes, each killed with SIGKILL after a
  random 2-10 s of life (1-4 s the first time) and restarted after a random 0.5-3 s, for as long as
  the run lasts. A kill can land mid-round, mid-startup, or between rounds.

Checked: **no hang** (a round must be recorded at least every ``round_timeout + start_timeout + 30`` s, and
the whole run must end within ``--timeout``), every round either completes or fails cleanly (failed
rounds do not stop the broker: ``max_failed_rounds`` is set high), and the broker's resident memory
(``VmRSS``) at its last round is within 10% of its value at round 20.

Prints one JSON line: ``{"rounds", "completed", "failed", "churn_events", "rss_round20_mb", "rss_end_mb",
"rss_growth", "wall_s", "hang", ...}``. Usage::

    uv run python benchmarks/soak.py [--rounds 200] [--seed 0] [--timeout 1800]
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from flcli import FL, broker_command, simworker_command, write_digits_config
from procs import EventProcess, free_port, rss_mb, unwind_on_sigterm, wait_or_kill

from federated.broker.store import RoundStore

NUM_CLIENTS = 10
PER_ROUND = 5
CHURNERS = 3  # the last three clients
ROUND_TIMEOUT_S = 20.0
START_TIMEOUT_S = 2.0


class Churner:
    """One client that lives in its own ``flworker`` process and is killed and restarted at random."""

    def __init__(self, index: int, port: int, seed: int, rng: random.Random, log: Path) -> None:
        self.index, self.port, self.seed, self.rng = index, port, seed, rng
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.next_change = 0.0
        self.kills = self.restarts = 0

    def start(self, now: float) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*FL, "worker", "--client-id", f"client_{self.index}",
                 "--server-address", f"127.0.0.1:{self.port}", "--dataset", "digits", "--partition", "iid",
                 "--shard", str(self.index), "--num-shards", str(NUM_CLIENTS), "--seed", str(self.seed)],
                stdout=subprocess.DEVNULL, stderr=out)
        # The first life is shorter, so that even a short run sees churn.
        first = not (self.restarts or self.kills)
        self.next_change = now + (self.rng.uniform(1.0, 4.0) if first else self.rng.uniform(2.0, 10.0))

    def step(self, now: float) -> str | None:
        """Kill or restart when due; returns "kill", "restart" or None."""
        if now < self.next_change:
            return None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            self.proc = None
            self.kills += 1
            self.next_change = now + self.rng.uniform(0.5, 3.0)
            return "kill"
        self.start(now)
        self.restarts += 1
        return "restart"

    def stop(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the process to exit (it got the broker's BYE), then kill it."""
        if self.proc is None:
            return
        wait_or_kill(self.proc, timeout)


def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="flsoak-") as tmp_dir:
        tmp = Path(args.keep or tmp_dir)
        tmp.mkdir(parents=True, exist_ok=True)
        port = free_port()
        store = tmp / "store.db"
        config = write_digits_config(
            tmp / "config.yaml", port=port, store=store, num_clients=NUM_CLIENTS, clients_per_round=PER_ROUND,
            min_clients=2, num_rounds=args.rounds, seed=args.seed, local_epochs=args.local_epochs,
            round_timeout_s=ROUND_TIMEOUT_S, start_timeout_s=START_TIMEOUT_S, heartbeat_timeout_s=3.0,
            max_failed_rounds=10_000)
        started = time.monotonic()
        # The broker's events, and the tail (100 lines) and tracebacks of its stderr.
        broker = EventProcess(broker_command(config), watch=("Traceback",), keep_stderr=100)
        with (tmp / "stable.log").open("ab") as out:
            stable = subprocess.Popen(
                simworker_command(port, num_shards=NUM_CLIENTS, shards=range(NUM_CLIENTS - CHURNERS), seed=args.seed,
                                  extra=("--dropout", str(args.socket_dropout))),
                stdout=subprocess.DEVNULL, stderr=out)
        churners = [Churner(i, port, args.seed, random.Random(rng.getrandbits(32)), tmp / f"churner{i}.log")
                    for i in range(NUM_CLIENTS - CHURNERS, NUM_CLIENTS)]
        now = time.monotonic()
        for c in churners:
            c.start(now)

        rounds: list[dict[str, Any]] = []
        rss: dict[int, float] = {}
        churn: Counter[str] = Counter()
        done: dict[str, Any] | None = None
        hang = False
        stall_limit = ROUND_TIMEOUT_S + START_TIMEOUT_S + 30.0
        last_progress = time.monotonic()
        deadline = started + args.timeout
        try:
            while not broker.finished():
                try:
                    event = broker.events.get(timeout=0.05)
                except queue.Empty:
                    event = None
                now = time.monotonic()
                if event is not None and event.get("event") == "round":
                    value = rss_mb(broker.popen.pid)  # read first: the broker exits soon after its last round
                    if value is not None:
                        rss[event["round"]] = value
                    rounds.append(event)
                    last_progress = now
                    if args.verbose:
                        print(f"round {event['round']} {event['status']} {event['duration_s']:.2f}s "
                              f"dropped={event['dropped']} rss={value}", file=sys.stderr)
                elif event is not None and event.get("event") == "done":
                    done = event
                if done is None:
                    for c in churners:
                        change = c.step(now)
                        if change:
                            churn[change] += 1
                if now - last_progress > stall_limit or now > deadline:
                    hang = True
                    break
                if stable.poll() is not None and done is None:
                    break  # the stable worker process died: not a broker hang, but the run cannot go on
        finally:
            wall = time.monotonic() - started  # to the broker's exit (or the hang), not the cleanup
            try:
                broker.stop()
                code: int | None = broker.popen.returncode
            except subprocess.TimeoutExpired:
                code = None
            for c in churners:
                c.stop(3.0)  # one that was starting when the broker left never gets its BYE
            wait_or_kill(stable, 15)

        with RoundStore(store, readonly=True) as st:
            recorded = st.list_rounds()
        statuses = Counter(r.status for r in recorded)
        contiguous = [r.round for r in recorded] == list(range(1, len(recorded) + 1))
        reasons: Counter[str] = Counter()
        for r in rounds:
            for key, value in r.get("metrics", {}).items():
                if key.startswith("dropped_"):
                    reasons[key.removeprefix("dropped_")] += int(value)
        ref_round = min(20, args.rounds)
        complete_ids = sorted(r["round"] for r in rounds if r["status"] == "complete")
        ref_id = complete_ids[ref_round - 1] if len(complete_ids) >= ref_round else None
        rss_ref = rss.get(ref_id) if ref_id is not None else None
        rss_end = rss[max(rss)] if rss else None
        growth = None if rss_ref is None or rss_end is None else (rss_end - rss_ref) / rss_ref
        durations = [r["duration_s"] for r in rounds]
        churning = {f"client_{i}" for i in range(NUM_CLIENTS - CHURNERS, NUM_CLIENTS)}
        return {
            "benchmark": "soak",
            "rounds": args.rounds,
            "completed": statuses["complete"],
            "failed": statuses["failed"],
            "churn_events": churn["kill"] + churn["restart"],
            "rss_round20_mb": None if rss_ref is None else round(rss_ref, 2),
            "rss_end_mb": None if rss_end is None else round(rss_end, 2),
            "rss_growth": None if growth is None else round(growth, 4),
            "wall_s": round(wall, 1),
            "hang": hang,
            "rss_within_10pct": growth is not None and abs(growth) <= 0.10,
            "rss_reference_round": ref_id,
            "broker_exit_code": code,
            "broker_tracebacks": broker.counts["Traceback"],
            "rounds_recorded_contiguous": contiguous,
            "kills": churn["kill"],
            "restarts": churn["restart"],
            "churner_selections": sum(len(churning & set(r["participants"])) for r in rounds),
            "churner_survivals": sum(len(churning & set(r["survivors"])) for r in rounds),
            "dropped_total": sum(reasons.values()),
            "dropped_by_reason": dict(sorted(reasons.items())),
            "round_s_median": round(statistics.median(durations), 3) if durations else None,
            "round_s_max": round(max(durations), 3) if durations else None,
            "final_accuracy": next((r["accuracy"] for r in reversed(rounds) if r["status"] == "complete"), None),
            "setup": {"clients": NUM_CLIENTS, "per_round": PER_ROUND, "churning": CHURNERS,
                      "socket_dropout": args.socket_dropout, "local_epochs": args.local_epochs, "seed": args.seed},
            **({"broker_stderr_tail": broker.tail[-10:]} if hang or code not in (0, None) else {}),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200, help="complete rounds to run")
    parser.add_argument("--socket-dropout", type=float, default=0.2,
                        help="cohort share of the stable process's clients that drop their connection on a TASK")
    parser.add_argument("--local-epochs", type=int, default=30,
                        help="local epochs per round (sets how long a round takes, so churn can hit rounds)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up (and report a hang) after this")
    parser.add_argument("--keep", metavar="DIR", help="keep the store and the worker logs in DIR")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per round on stderr")
    args = parser.parse_args()
    unwind_on_sigterm()  # so that a timeout's SIGTERM still kills the broker and workers
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
