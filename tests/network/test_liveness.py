"""Liveness over real processes: a frozen worker (SIGSTOP) is a dropout within the heartbeat timeout,
and once thawed (SIGCONT) it comes back and takes part in a later round.

A frozen process keeps its TCP connection open (the kernel still acknowledges), so neither ZeroMQ nor
``ROUTER_MANDATORY`` notices anything: only the application heartbeat's expiry can find it. That is what
this test measures, from the broker's own log timestamps.

The freeze is not raced against training: the frozen worker is a real ``flworker`` whose local training
stops its own process (SIGSTOP) as it begins round 2, so it is always frozen inside round 2's cohort, with
round 2's TASK received and its update not yet sent, however fast the machine trains.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from support import BIN, Proc, broker_config, free_port

from federated.broker.store import RoundStore

pytestmark = [pytest.mark.network, pytest.mark.slow]

HEARTBEAT_INTERVAL_S = 0.2
HEARTBEAT_TIMEOUT_S = 2.0
#: Scheduling delay allowed on top of the timeout (a loaded 2-core machine running other tests).
SLACK_S = 1.0
#: What the freezing worker prints to stderr, with its clock, just before it stops itself.
FROZEN = "liveness test: freezing at"
#: ``flworker`` whose second local training (round 2) first prints FROZEN and SIGSTOPs its own process; once
#: thawed (SIGCONT) it trains on as usual. Only this test's child process is patched; the product is not.
FREEZING_WORKER = f"""
import os, signal, sys, time
from federated.cli.worker import worker_command
from federated.worker.runner import ModelRunner

fit, calls = ModelRunner.fit, []

def freezing_fit(self, *args, **kwargs):
    calls.append(None)
    if len(calls) == 2:
        print(f"{FROZEN} {{time.time():.6f}}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
    return fit(self, *args, **kwargs)

ModelRunner.fit = freezing_fit
worker_command.main(args=sys.argv[1:], prog_name="flworker")
"""


def _log_time(line: str) -> float:
    """Unix time of a broker log line (``%(asctime)s``: ``2025-01-31 12:34:56,789 ...``)."""
    stamp = " ".join(line.split(" ", 2)[:2])
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_frozen_worker_is_dropped_within_the_timeout_and_rejoins_after_thawing(tmp_path: Path,
                                                                                procs: list[Proc]) -> None:
    port = free_port()
    store_path = tmp_path / "store.db"
    # start_timeout_s is long so that the round after the freeze waits for the thawed worker instead of
    # starting without it (min_clients=2 would allow that); the frozen round itself cannot wait for it.
    config = broker_config(tmp_path, heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
                           heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S, start_timeout_s=30.0, round_timeout_s=60.0)
    broker = Proc([str(BIN / "flbroker"), "--bind", f"tcp://127.0.0.1:{port}", "--config", str(config),
                   "--store", str(store_path), "--events", "-v", "--num-clients", "3", "--clients-per-round", "3",
                   "--min-clients", "2", "--num-rounds", "3", "--local-epochs", "1"])
    procs.append(broker)
    args = ["--server-address", f"127.0.0.1:{port}", "--dataset", "digits", "--num-shards", "3"]
    frozen = Proc([sys.executable, "-c", FREEZING_WORKER, "--client-id", "w0", "--shard", "0", *args])
    workers = [frozen] + [Proc([str(BIN / "flworker"), "--client-id", f"w{i}", "--shard", str(i), *args])
                          for i in (1, 2)]
    procs.extend(workers)

    rounds = []
    stopped_at = seen_drop_at = None
    try:
        for event in broker.events(timeout=120):
            if event["event"] != "round":
                continue
            rounds.append(event)
            if event["round"] == 2:
                # w0 froze itself on starting round 2's training; its line was written before the SIGSTOP.
                seen_drop_at = time.time()
                frozen.wait_stderr(FROZEN, timeout=10)
                (line,) = [ln for ln in frozen.stderr_lines if FROZEN in ln]
                stopped_at = float(line.split(FROZEN, 1)[1])
                os.kill(frozen.popen.pid, signal.SIGCONT)
    finally:
        if frozen.popen.poll() is None:
            os.kill(frozen.popen.pid, signal.SIGCONT)  # never leave a stopped process behind
    assert broker.wait(30) == 0
    for w in workers:
        assert w.wait(30) == 0  # the thawed worker too: it got the final BYE like the others

    assert stopped_at is not None and seen_drop_at is not None
    summary = [(r["round"], r["status"], r["participants"], r["dropped"], r["metrics"]) for r in rounds]
    assert [r["status"] for r in rounds] == ["complete"] * 3, summary
    round1, round2, round3 = rounds
    assert sorted(round1["survivors"]) == ["w0", "w1", "w2"], summary
    # The frozen round: w0 was selected, then dropped for silence; the others carried the round.
    assert sorted(round2["participants"]) == ["w0", "w1", "w2"]
    assert round2["dropped"] == ["w0"] and sorted(round2["survivors"]) == ["w1", "w2"], summary
    assert round2["metrics"].get("dropped_timeout") == 1.0, summary

    # Detection latency, on the broker's clock: from SIGSTOP to its "missed its heartbeats" line. The
    # worker's last heartbeat left at most one interval before the freeze, so the bound is the timeout.
    (line,) = [ln for ln in broker.stderr_lines if "worker w0 missed its heartbeats" in ln]
    detected_s = _log_time(line) - stopped_at
    # (That the timeout found it, not a disconnect, is the record's dropped_timeout above.)
    assert 0.0 < detected_s <= HEARTBEAT_TIMEOUT_S + SLACK_S, f"w0 detected {detected_s:.2f} s after SIGSTOP"
    # And the round record reached us (through the broker's stdout pipe) soon after.
    assert seen_drop_at - stopped_at <= HEARTBEAT_TIMEOUT_S + 10.0

    # Thawed, it reconnected (its broker went silent for longer than the timeout) and joined round 3.
    assert sorted(round3["participants"]) == ["w0", "w1", "w2"]
    assert sorted(round3["survivors"]) == ["w0", "w1", "w2"] and round3["dropped"] == [], summary
    assert any("worker w0 joined" in ln for ln in broker.stderr_lines[broker.stderr_lines.index(line):])

    with RoundStore(store_path, readonly=True) as store:
        recorded = store.list_rounds()
        assert [r.round for r in recorded] == [1, 2, 3]
        assert recorded[1].dropped == ("w0",) and recorded[1].metrics["dropped_timeout"] == 1.0
        assert "w0" in recorded[2].survivors
        counters = {w["worker_id"]: w for w in store.list_workers()}
        assert counters["w0"]["rounds_dropped"] == 1 and counters["w0"]["rounds_completed"] == 2
        assert counters["w1"]["rounds_dropped"] == 0 and counters["w1"]["rounds_completed"] == 3
