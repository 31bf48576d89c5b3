"""A broker and workers started by hand, as a user would on a LAN (loopback here), over real TCP."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from support import BIN, Proc, broker_config, free_port

from federated.broker.store import RoundStore
from federated.cli.main import fl

pytestmark = [pytest.mark.network, pytest.mark.slow]


def _broker(tmp_path: Path, port: int, *flags: str, **broker: object) -> Proc:
    return Proc([str(BIN / "flbroker"), "--bind", f"tcp://127.0.0.1:{port}", "--config",
                 str(broker_config(tmp_path, **broker)), "--store", str(tmp_path / "store.db"),
                 "--events", "-v", *flags])


def _worker(port: int, i: int, n: int = 3) -> Proc:
    return Proc([str(BIN / "flworker"), "--client-id", f"w{i}", "--server-address", f"127.0.0.1:{port}",
                 "--dataset", "digits", "--shard", str(i), "--num-shards", str(n)])


def test_three_workers_complete_three_rounds_and_rounds_cli_reads_live_store(tmp_path: Path, procs: list[Proc]) -> None:
    port = free_port()
    # Workers first, as happens on a LAN: they keep reconnecting until the broker is up.
    workers = [_worker(port, i) for i in range(3)]
    procs.extend(workers)
    broker = _broker(tmp_path, port, "--num-clients", "3", "--clients-per-round", "3", "--num-rounds", "3",
                     "--local-epochs", "40")
    procs.insert(0, broker)
    rounds = []
    live_listing = None
    for event in broker.events(timeout=120):
        if event["event"] == "round":
            rounds.append(event)
            if live_listing is None:
                # The broker is still running: the CLI must read its store (WAL) meanwhile.
                result = CliRunner().invoke(fl, ["rounds", "list", "--store", str(tmp_path / "store.db"), "--json"])
                assert result.exit_code == 0, result.output
                live_listing = result.output.strip().splitlines()[-1]
    assert broker.wait(30) == 0
    for w in procs[1:]:
        assert w.wait(30) == 0  # workers exit cleanly on the broker's BYE
    assert [r["status"] for r in rounds] == ["complete"] * 3
    assert all(sorted(r["survivors"]) == ["w0", "w1", "w2"] for r in rounds)
    assert live_listing is not None and '"round":1' in live_listing.replace(" ", "")
    assert rounds[-1]["accuracy"] > 0.85
    with RoundStore(tmp_path / "store.db", readonly=True) as store:
        assert [r.round for r in store.list_rounds()] == [1, 2, 3]
        assert store.load_checkpoint(3).keys() == store.load_checkpoint(0).keys()
    shown = CliRunner().invoke(fl, ["rounds", "show", "2", "--store", str(tmp_path / "store.db")])
    assert shown.exit_code == 0 and "w1" in shown.output


def test_killed_worker_is_a_dropout_and_the_round_completes(tmp_path: Path, procs: list[Proc]) -> None:
    port = free_port()
    broker = _broker(tmp_path, port, "--num-clients", "3", "--clients-per-round", "3", "--num-rounds", "1",
                     "--min-clients", "2", "--local-epochs", "400")
    procs.append(broker)
    workers = [_worker(port, i) for i in range(3)]
    procs.extend(workers)
    broker.wait_stderr("round 1 started", timeout=60)
    workers[0].kill()  # SIGKILL mid-round: no BYE, the socket just goes away
    events = list(broker.events(timeout=120))
    assert broker.wait(30) == 0
    (round1,) = [e for e in events if e["event"] == "round"]
    assert round1["status"] == "complete"
    assert round1["dropped"] == ["w0"]
    assert sorted(round1["survivors"]) == ["w1", "w2"]


def test_too_few_answers_fail_the_round_cleanly(tmp_path: Path, procs: list[Proc]) -> None:
    port = free_port()
    broker = _broker(tmp_path, port, "--num-clients", "3", "--clients-per-round", "3", "--num-rounds", "2",
                     "--min-clients", "3", "--local-epochs", "400", max_failed_rounds=1)
    procs.append(broker)
    workers = [_worker(port, i) for i in range(3)]
    procs.extend(workers)
    broker.wait_stderr("round 1 started", timeout=60)
    workers[1].kill()
    events = list(broker.events(timeout=120))
    assert broker.wait(30) == 1  # stopped: training failed
    rounds = [e for e in events if e["event"] == "round"]
    assert [r["status"] for r in rounds] == ["failed"]
    assert "min_clients is 3" in rounds[0]["error"] and "model unchanged" in rounds[0]["error"]
    assert any("round 1 failed" in line for line in broker.stderr_lines)
    with RoundStore(tmp_path / "store.db", readonly=True) as store:
        assert store.get_round(1).status == "failed"
        assert store.last_complete_round() is None
        latest = store.latest_weights()
        assert latest is not None and latest[0] == 0  # the model is still the initial one
