"""A broker killed with SIGKILL mid-round and restarted on the same store carries on where it stopped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, Proc, broker_config, free_port

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


def _final(directory: Path) -> tuple[list[tuple[int, str]], dict[str, np.ndarray]]:
    with RoundStore(directory / "store.db", readonly=True) as store:
        return [(r.round, r.status) for r in store.list_rounds()], store.load_checkpoint(ROUNDS)


def test_killed_broker_resumes_after_the_last_complete_round_and_ends_on_the_same_model(
        tmp_path: Path, procs: list[Proc]) -> None:
    # The reference: the same run, never interrupted.
    reference = tmp_path / "reference"
    reference.mkdir()
    port = free_port()
    procs.extend(_workers(port))
    broker = _broker(reference, port)
    procs.append(broker)
    assert broker.wait(180) == 0
    for w in procs[:3]:
        assert w.wait(30) == 0

    # The same run, its broker killed while round 3 is under way (rounds 1 and 2 are complete).
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

    second = _broker(crashed, port)  # same store, same port: the workers find it by themselves
    procs.append(second)
    events = [e for e in second.events(timeout=180) if e["event"] == "round"]
    assert second.wait(30) == 0
    second.wait_stderr("resuming after round 2", timeout=1)
    for w in workers:
        assert w.wait(30) == 0
    assert [e["round"] for e in events] == list(range(3, ROUNDS + 1))  # nothing lost, nothing repeated

    ref_rounds, ref_model = _final(reference)
    rounds, model = _final(crashed)
    assert rounds == ref_rounds == [(n, "complete") for n in range(1, ROUNDS + 1)]
    assert model.keys() == ref_model.keys()
    for name in model:
        assert np.array_equal(model[name], ref_model[name]), name  # bit for bit
