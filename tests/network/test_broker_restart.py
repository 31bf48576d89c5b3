"""A broker killed with SIGKILL mid-round and restarted on the same store carries on where it stopped,
with the next round id (the interrupted round's id is burnt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from support import BIN, Proc, broker_config, free_port

from federated.broker.store import RoundStore

pytestmark = [pytest.mark.network, pytest.mark.slow]

ROUNDS = 6
# FedAdam keeps moments across rounds: a resume that lost them would end on another model.
RUN = ("--num-clients", "3", "--clients-per-round", "3", "--num-rounds", str(ROUNDS), "--seed", "7",
       "--local-epochs", "30", "--server-optimizer", "fedadam")


def _broker(directory: Path, port: int) -> Proc:
    return Proc([str(BIN / "flbroker"), "--bind", f"tcp://127.0.0.1:{port}", "--config",
                 str(broker_config(directory, start_timeout_s=30.0)), "--store", str(directory / "store.db"),
                 "--events", "-v", *RUN])


def _workers(port: int) -> list[Proc]:
    return [Proc([str(BIN / "flworker"), "--client-id", f"w{i}", "--server-address", f"127.0.0.1:{port}",
                  "--dataset", "digits", "--shard", str(i), "--num-shards", "3", "--seed", "7"]) for i in range(3)]


def test_killed_broker_resumes_after_the_last_complete_round_and_burns_the_interrupted_one(
        tmp_path: Path, procs: list[Proc]) -> None:
    # The run, its broker killed while round 3 is under way (rounds 1 and 2 are complete).
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    port = free_port()
    workers = _workers(port)
    procs.extend(workers)
    first = _broker(crashed, port)
    procs.append(first)
    first.wait_stderr("round 3 started", timeout=120)
    first.kill()
    with RoundStore(crashed / "store.db", readonly=True) as store:
        assert [r.round for r in store.list_rounds()] == [1, 2]
        round_2 = store.load_checkpoint(2)

    second = _broker(crashed, port)  # same store, same port: the workers find it by themselves
    procs.append(second)
    events = [e for e in second.events(timeout=180) if e["event"] == "round"]
    assert second.wait(30) == 0
    second.wait_stderr("resuming after round 2", timeout=1)
    for w in workers:
        assert w.wait(30) == 0
    # Round 3's id is burnt (workers may have contributed to it; they never will again): the resumed
    # broker runs rounds 4..7, so ROUNDS rounds complete in all, none lost, none repeated.
    assert [e["round"] for e in events] == list(range(4, ROUNDS + 2))
    with RoundStore(crashed / "store.db", readonly=True) as store:
        assert [(r.round, r.status) for r in store.list_rounds()] == (
            [(1, "complete"), (2, "complete")] + [(n, "complete") for n in range(4, ROUNDS + 2)])
        kept = store.load_checkpoint(2)
        final = store.load_checkpoint(ROUNDS + 1)
    for name in round_2:
        assert np.array_equal(kept[name], round_2[name]), name  # what was complete is never rewritten
    assert final.keys() == round_2.keys()
    # That the resumed coordinator's state (model, FedAdam moments, RNG, selection) is exactly the
    # stored one is shown without processes in tests/broker/test_resume.py; real workers draw their
    # training randomness from the OS, so two runs never train bit for bit alike.
