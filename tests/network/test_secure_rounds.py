"""Secure aggregation over real processes on loopback: dropouts at every stage, and a SIGKILL."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import BIN, Proc, broker_config, free_port, simulate_json

from federated.broker.store import RoundStore

pytestmark = [pytest.mark.network, pytest.mark.slow]


@pytest.mark.parametrize("stage", ["task", "roster", "shares", "unmask"])
def test_secure_rounds_survive_dropouts_at_every_stage(stage: str, tmp_path: Path) -> None:
    result = simulate_json("--secure", "--num-clients", "8", "--num-rounds", "3", "--local-epochs", "2",
                           "--dropout", "0.25", "--dropout-stage", stage, "--store", str(tmp_path / "s.db"))
    rounds = result["rounds"]
    assert [r["status"] for r in rounds] == ["complete"] * 3
    # Two of eight vanish each round; before their masked input they are dropped, after it they are
    # survivors whose masks the others' shares remove.
    assert all(r["dropped"] == (0 if stage == "unmask" else 2) for r in rounds)
    assert result["final_accuracy"] > 0.8


def test_worker_killed_during_masked_input_stage(tmp_path: Path, procs: list[Proc]) -> None:
    port = free_port()
    broker = Proc([str(BIN / "flbroker"), "--bind", f"tcp://127.0.0.1:{port}", "--config", str(broker_config(tmp_path)),
                   "--store", str(tmp_path / "store.db"), "--events", "-v", "--secure", "--num-clients", "4",
                   "--num-rounds", "2", "--min-clients", "3", "--local-epochs", "300"])
    procs.append(broker)
    workers = [Proc([str(BIN / "flworker"), "--client-id", f"w{i}", "--server-address", f"127.0.0.1:{port}",
                     "--dataset", "digits", "--shard", str(i), "--num-shards", "4"]) for i in range(4)]
    procs.extend(workers)
    broker.wait_stderr("round 1: secure aggregation at masked_input", timeout=60)
    workers[2].kill()  # it holds shares of everyone and its own mask key was shared: the others rebuild it
    events = list(broker.events(timeout=180))
    assert broker.wait(30) == 0
    rounds = [e for e in events if e["event"] == "round"]
    assert [r["status"] for r in rounds] == ["complete", "complete"]
    assert rounds[0]["dropped"] == ["w2"] and sorted(rounds[0]["survivors"]) == ["w0", "w1", "w3"]
    assert rounds[1]["accuracy"] > 0.8
    with RoundStore(tmp_path / "store.db", readonly=True) as store:
        assert store.last_complete_round() == 2
