"""Fuzz a live broker over TCP while honest rounds run, and check that nothing it holds moved.

A real ``fl broker`` process on 127.0.0.1 runs R rounds with H honest clients (one worker process of
the kind ``fl simulate`` starts), twice with the same seed: first alone (the reference), then while a
fuzzer throws ``--count`` messages at it from several DEALER sockets:

- **raw** sockets never say HELLO. Their messages are refused at decoding or at the door ("unknown
  connection"): random bytes, truncated messages, wrong version, unknown kinds, non-UTF-8 and non-object
  headers, headers over the 64 KiB limit, huge declared tensor sizes, too many frames, bad dtypes,
  frame lengths that do not match shapes, NaN tensors, HELLOs with a bad worker id, bit flips of valid
  messages, and replays of real messages captured from the broker. One of them now and then sends a
  frame over the socket's MAXMSGSIZE, which libzmq answers by closing the connection.
- **hello** sockets say a valid HELLO under their own fresh ids (``fuzz_0``, ...) and so get past the
  connection check to the deeper validation: updates for past rounds (replays with the model's real
  tensor names and shapes), for far-future rounds, for the wrong stage, under an honest client's id;
  for the current round, updates whose tensors have the wrong dtype, shape or names; secure-aggregation
  messages in a plain round; broker-to-worker kinds (a captured TASK) sent back. The broker may select
  them (``clients_per_round`` counts them): each then holds its round open until its share of the fuzz
  is sent, and leaves it with a BYE (a dropout the broker counts as "left") and a new HELLO. So every
  honest round runs under fire, however fast or slow the machine.

**"State unchanged"** (``state_unchanged``) means all of:

1. the broker process is alive when the fuzz ends, and afterwards finishes its rounds and exits 0
   without a traceback on stderr;
2. the store holds exactly rounds 1..R, all complete, each with exactly the honest clients as survivors;
   a fuzz id appears only as a participant that dropped (no fuzz message was accepted as an update);
3. every checkpoint, the initial model and the model after each round, is bit-for-bit the reference
   run's (the job is deterministic for a fixed seed: anything accepted into an aggregate, or a round
   that failed and shifted the round ids, would show);
4. the workers table holds the honest clients and the hello sockets' ids and nothing else (no id out of
   a refused HELLO); every honest client completed every round and was never dropped.

A HELLO with a *valid* new id, or with an honest client's id, is not fuzz but a new worker (or, without
transport security, an impersonation: README's threat model); the fuzzer never sends one, and checks
locally (``skipped_unsafe``) that no mutation turned into one, nor into an update the broker would
rightly accept from a selected hello socket.

Prints one JSON line: ``{"messages", "seconds", "msgs_per_s", "broker_alive", "errors_received",
"errors_expected", "honest_rounds_completed", "state_unchanged", ...}``. ``seconds`` runs from the first
fuzz message to the last ERROR reply. Also: ``refusals_logged`` (the refusals the broker's log counts:
its rate-limited "refused a message" lines plus the "N more refusals" they summarise, which should
equal ``errors_expected``), ``broker_send_queue_full`` (answers the broker could not
queue to a flooding socket, so ``errors_received`` falls short by about that much), the broker's CPU
time per message, its RSS before and after, and counts by category and by ERROR code. Usage::

    uv run python benchmarks/fuzz.py [--count 100000] [--rounds 4] [--honest 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from fuzzing.checks import compare, process_checks, state_unchanged
from fuzzing.driver import fuzz
from fuzzing.job import Job
from procs import unwind_on_sigterm

from federated.broker.store import RoundStore

__all__ = ["main", "run"]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark: a reference run, a fuzzed run, the checks; the JSON line's fields (see above).
    Stores and logs go to a temporary directory, or to ``args.keep``. Raises ``RuntimeError`` if the honest
    clients do not join within 120 s."""
    with tempfile.TemporaryDirectory(prefix="flfuzz-") as tmp_dir:
        tmp = Path(args.keep or tmp_dir)
        ref = Job(tmp / "reference", args, extra_clients=0)
        try:
            ref.wait_joined(120)
            ref_code = ref.finish(args.timeout)
        finally:
            ref.broker.stop()
            ref.worker.stop()
        job = Job(tmp / "fuzzed", args, extra_clients=args.hello_sockets)
        try:
            job.wait_joined(120)
            with RoundStore(job.store, readonly=True) as store:
                model = store.load_checkpoint(0)
            result = fuzz(job, args, model)
            code = job.finish(args.timeout)
        finally:
            job.broker.stop()
            job.worker.stop()
        fuzz_ids = [f"fuzz_{i}" for i in range(args.hello_sockets)]
        checks = {**compare(ref.store, job.store, job.honest_ids, fuzz_ids, args.rounds),
                  **process_checks(code, ref_code, job.broker.counts["Traceback"])}
        unchanged = state_unchanged(checks, result["broker_alive"])
        completed = sum(1 for r in job.rounds if r["status"] == "complete")
        return {
            "benchmark": "fuzz", **{k: result[k] for k in ("messages", "seconds", "msgs_per_s", "broker_alive",
                                                         "errors_received", "errors_expected")},
            "honest_rounds_completed": completed, "honest_rounds_expected": args.rounds,
            "state_unchanged": unchanged,
            **{k: v for k, v in result.items() if k not in ("messages", "seconds", "msgs_per_s", "broker_alive",
                                                            "errors_received", "errors_expected")},
            "broker_send_queue_full": job.broker.counts["could not send"],
            "broker_stderr_mb": round(job.broker.stderr_bytes / 2**20, 2),
            "checks": checks,
            "setup": {"honest": args.honest, "hello_sockets": args.hello_sockets, "raw_sockets": args.raw_sockets,
                      "rounds": args.rounds, "seed": args.seed, "local_epochs": args.local_epochs},
        }


def main() -> None:
    """Parse the command line, run the benchmark and print its one JSON line on stdout."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000, help="fuzz messages to send")
    parser.add_argument("--rounds", type=int, default=4, help="honest rounds (the fuzz is spread over them)")
    parser.add_argument("--honest", type=int, default=3, help="honest clients")
    parser.add_argument("--hello-sockets", type=int, default=2, help="fuzz sockets that say HELLO first")
    parser.add_argument("--raw-sockets", type=int, default=3, help="fuzz sockets that never say HELLO")
    parser.add_argument("--oversize", type=int, default=5, help="frames over MAXMSGSIZE to send (0: none)")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", metavar="DIR", help="keep the stores and the broker logs in DIR")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds before giving up on any phase")
    args = parser.parse_args()
    unwind_on_sigterm()  # so that a timeout's SIGTERM still kills the broker and workers
    print(json.dumps(run(args)), flush=True)


if __name__ == "__main__":
    main()
