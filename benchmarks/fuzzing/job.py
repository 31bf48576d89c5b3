"""The honest job the fuzz runs against: a real ``fl broker`` process on 127.0.0.1 and one worker process
hosting the honest clients, with the broker's round events and the stderr lines the checks count.

The broker runs ``-v`` so that it logs each join ("joined with") and each refusal ("refused a message",
rate-limited to a line a second that counts the rest); ``BrokerProcess`` adds those up."""

from __future__ import annotations

import argparse
import queue
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flcli import broker_command, simworker_command, write_digits_config
from procs import EventProcess, free_port, wait_or_kill

__all__ = ["WATCH", "BrokerProcess", "Job"]

#: The broker's stderr substrings whose lines ``BrokerProcess.counts`` counts.
WATCH = ("refused a message", "could not send", "Traceback", "joined with")

_MORE_REFUSALS = re.compile(r"and (\d+) more refusals since the last line")


class BrokerProcess(EventProcess):
    """The broker process: round events from stdout; from stderr the ``WATCH`` counts (refusals summed
    over the rate-limited lines), the ids of the workers that joined, in order, and the last 200 lines."""

    def __init__(self, args: Sequence[str], log: Path | None = None) -> None:
        self.joined: list[str] = []  # before the reader threads start
        super().__init__(args, watch=WATCH, log=log)

    def on_stderr_line(self, line: str) -> None:
        """Add a summary line's count of further refusals; note the id of a worker that joined."""
        # The broker logs at most one refusal line a second and counts the rest in it
        # ("... (and N more refusals since the last line)"), with a last count when it stops.
        more = _MORE_REFUSALS.search(line)
        if more:
            self.counts["refused a message"] += int(more.group(1))
        if "joined with" in line:
            self.joined.append(line.split("worker ", 1)[-1].split(" ", 1)[0])


class Job:
    """One honest federated job in ``run_dir``: a broker and one worker process hosting ``args.honest``
    clients (``client_0``, ...), for ``args.rounds`` rounds of the digits MLP. The broker's cohort is the
    honest clients plus ``extra_clients`` (the fuzzer's hello sockets), every one of them selected in each
    round; ``args.timeout`` (seconds) is the round timeout, as the fuzzer holds rounds open. The processes
    start here; ``args.keep`` also writes the broker's stderr to ``run_dir/broker.log``."""

    def __init__(self, run_dir: Path, args: argparse.Namespace, extra_clients: int) -> None:
        self.run_dir = run_dir
        self.store = run_dir / "store.db"
        self.port = free_port()
        self.honest_ids = [f"client_{i}" for i in range(args.honest)]
        cohort = args.honest + extra_clients
        run_dir.mkdir(parents=True, exist_ok=True)
        config = write_digits_config(
            run_dir / "config.yaml", port=self.port, store=self.store, num_clients=cohort,
            clients_per_round=cohort, min_clients=args.honest, num_rounds=args.rounds, seed=args.seed,
            local_epochs=args.local_epochs,
            # Rounds are held open by the fuzzer for as long as its share takes.
            round_timeout_s=float(args.timeout), start_timeout_s=2.0, heartbeat_timeout_s=15.0,
            max_failed_rounds=1)
        self.broker = BrokerProcess(broker_command(config, verbose=True),
                                    log=run_dir / "broker.log" if args.keep else None)
        self.worker = EventProcess(
            simworker_command(self.port, num_shards=args.honest, shards=range(args.honest), seed=args.seed))
        self.rounds: list[dict[str, Any]] = []
        self.done: dict[str, Any] | None = None

    def poll_events(self) -> None:
        """Take the broker's events so far: "round" events into ``rounds``, the "done" event into ``done``."""
        while True:
            try:
                event = self.broker.events.get_nowait()
            except queue.Empty:
                return
            if event.get("event") == "round":
                self.rounds.append(event)
            elif event.get("event") == "done":
                self.done = event

    def wait_joined(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for every honest client to join; raises ``RuntimeError`` (with the
        broker's last stderr lines) if they have not by then, or if either process exits first."""
        deadline = time.monotonic() + timeout
        while not set(self.honest_ids) <= set(self.broker.joined):
            if time.monotonic() > deadline or not self.broker.alive() or not self.worker.alive():
                raise RuntimeError("honest clients did not join:\n" + "\n".join(self.broker.tail[-20:]))
            time.sleep(0.05)

    def finish(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for the broker to exit, and 30 s more for the worker (either is
        killed if it is still running then), then take the last events; returns the broker's exit status
        (None if it had to be killed)."""
        code = wait_or_kill(self.broker.popen, timeout)
        self.broker.stop()
        wait_or_kill(self.worker.popen, 30)
        self.worker.stop()
        time.sleep(0.2)  # let the reader threads take the last lines
        self.poll_events()
        return code
